"""The source registry: one YAML file that says which log sources exist and how to read them.

Every entry becomes a partition of the ``log_source`` partitions. An entry::

    - name: synth_hdfs          # the partition key: letters, digits, ``_ . -``
      origin: synthetic          # synthetic | loghub | files | sequences
      kind: hdfs                 # synthetic only: hdfs | openstack | bgl | javaapp
      lines: 20000               # synthetic only
      seed: 7                    # synthetic only
      system: HDFS               # loghub only: one of the 16 Loghub systems (release 2k)
                                 # or a full data set such as HDFS_v1, BGL (release full)
      release: 2k                # loghub only: 2k (the samples) | full (Zenodo, downloaded)
      path: /var/log/app/*.log   # files and sequences: a file or a glob, or a list of them;
                                 # loghub full: globs under the unpacked data set
      layout: ait                # sequences only: ait | deeplog | csv (see core/sequences.py)
      templates: templates.csv   # sequences only, optional: the text of each event id
      labels: {"*abnormal*": anomalous, "*normal*": normal}   # sequences: file-name rules
      format: HDFS               # a Loghub system, generic, or '<Date> <Time> ... <Content>'
      multiline: false           # non-matching lines continue the previous record
      session: {by: block_id}    # block_id | instance_id | regex | window | time_window
                                 # (sequences: always 'sequence', one session per file line)
      ground_truth: {provider: synthetic}   # synthetic | hdfs_blocks | alert_field
                                             # | instance_list | sequence_labels | none
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logfit_dagster.core.errors import RegistryError
from logfit_dagster.core.formats import GENERIC_FORMAT, get_line_format
from logfit_dagster.core.loghub import LOGHUB_DATASETS, LOGHUB_SYSTEMS
from logfit_dagster.core.synthetic import FORMAT_OF_KIND, SYNTHETIC_KINDS

ORIGINS = ("synthetic", "loghub", "files", "sequences")
SESSION_KINDS = ("block_id", "instance_id", "regex", "window", "time_window", "sequence")
GROUND_TRUTH_PROVIDERS = (
    "synthetic",
    "hdfs_blocks",
    "alert_field",
    "instance_list",
    "sequence_labels",
    "none",
)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Where a Loghub system's lines fall into sessions and where its ground truth comes from.
_LOGHUB_SESSIONS = {"HDFS": {"by": "block_id"}, "OpenStack": {"by": "instance_id"}}
_LOGHUB_GROUND_TRUTH = {
    "BGL": {"provider": "alert_field"},
    "Thunderbird": {"provider": "alert_field"},
}
# The same for the full data sets; a ground-truth path is read under the unpacked folder.
_FULL_SESSIONS = {
    "HDFS_v1": {"by": "block_id"},
    "HDFS_v2": {"by": "block_id"},
    "OpenStack": {"by": "instance_id"},
}
_FULL_GROUND_TRUTH = {
    "HDFS_v1": {"provider": "hdfs_blocks", "path": "preprocessed/anomaly_label.csv"},
    "BGL": {"provider": "alert_field"},
    "Thunderbird": {"provider": "alert_field"},
}
RELEASES = ("2k", "full")


def check_source_name(name: str) -> str:
    """Return ``name`` if it is a safe file name, else raise ``RegistryError``.

    Source names become partition keys and folder names under data/, so ``../x`` and the like
    are refused.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise RegistryError(
            f"source name {name!r} is not a safe file name: use letters, digits, '_', '.' and "
            "'-', starting with a letter or digit, without '..'"
        )
    return name


@dataclass(frozen=True)
class SessionSpec:
    """How lines group into sessions."""

    by: str = "window"
    size: int = 100
    seconds: int = 300
    pattern: str = ""


@dataclass(frozen=True)
class GroundTruthSpec:
    """Where a source's anomaly labels come from."""

    provider: str = "none"
    path: str = ""
    unlisted: str = "unknown"
    field: str = "label"
    normal_value: str = "-"


@dataclass(frozen=True)
class SourceSpec:
    """One registered log source."""

    name: str
    origin: str
    format: str = GENERIC_FORMAT
    multiline: bool = False
    session: SessionSpec = field(default_factory=SessionSpec)
    ground_truth: GroundTruthSpec = field(default_factory=GroundTruthSpec)
    kind: str = ""
    lines: int = 0
    seed: int = 0
    system: str = ""
    release: str = "2k"
    path: str = ""
    patterns: tuple[str, ...] = ()
    layout: str = ""
    templates: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def has_ground_truth(self) -> bool:
        return self.ground_truth.provider != "none"

    @property
    def is_sequences(self) -> bool:
        """Its rows are events of pre-parsed sessions, not log lines (nothing to label)."""
        return self.origin == "sequences"


_ENTRY_KEYS = {
    "name",
    "origin",
    "format",
    "multiline",
    "session",
    "ground_truth",
    "kind",
    "lines",
    "seed",
    "system",
    "release",
    "path",
    "layout",
    "templates",
    "labels",
    "description",
}


def parse_source(entry: Any, where: str) -> SourceSpec:
    """Validate one registry entry; ``where`` names it in errors (file and index)."""
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise RegistryError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}"
        )
    if "name" not in entry:
        raise RegistryError(f"{where}: missing field 'name'")
    name = entry["name"]
    try:
        check_source_name(name)
    except RegistryError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    where = f"{where} ({name})"
    origin = entry.get("origin")
    if origin not in ORIGINS:
        raise RegistryError(f"{where}: field 'origin' must be one of {ORIGINS}, got {origin!r}")

    raw_path = entry.get("path") or ""
    if isinstance(raw_path, list) and raw_path and all(isinstance(p, str) for p in raw_path):
        patterns = tuple(raw_path)
    elif isinstance(raw_path, str):
        patterns = (raw_path,) if raw_path else ()
    else:
        raise RegistryError(f"{where}: field 'path' must be a file or glob, or a list of them")
    kind, system, path = (
        str(entry.get("kind", "")),
        str(entry.get("system", "")),
        ", ".join(patterns),
    )
    release = entry.get("release", "2k")
    if "release" in entry and origin != "loghub":
        raise RegistryError(f"{where}: field 'release' is for origin loghub only")
    if release not in RELEASES:
        raise RegistryError(f"{where}: field 'release' must be one of {RELEASES}, got {release!r}")
    session_default: dict[str, Any] = {"by": "window", "size": 100}
    truth_default: dict[str, Any] = {"provider": "none"}
    fmt = entry.get("format")
    if origin == "synthetic":
        if kind not in SYNTHETIC_KINDS:
            raise RegistryError(
                f"{where}: field 'kind' must be one of {SYNTHETIC_KINDS}, got {kind!r}"
            )
        fmt = fmt or FORMAT_OF_KIND[kind]
        truth_default = {"provider": "synthetic"}
        session_default = {
            "hdfs": {"by": "block_id"},
            "openstack": {"by": "instance_id"},
            "bgl": {"by": "time_window", "seconds": 300},
            "javaapp": {"by": "window", "size": 50},
        }[kind]
    elif origin == "loghub" and release == "full":
        if system not in LOGHUB_DATASETS:
            raise RegistryError(
                f"{where}: field 'system' of release 'full' must be one of "
                f"{tuple(sorted(LOGHUB_DATASETS))}, got {system!r}"
            )
        fmt = fmt or LOGHUB_DATASETS[system].format
        session_default = _FULL_SESSIONS.get(system, session_default)
        truth_default = _FULL_GROUND_TRUTH.get(system, truth_default)
    elif origin == "loghub":
        if patterns:
            raise RegistryError(f"{where}: field 'path' is for release 'full' of origin loghub")
        if system not in LOGHUB_SYSTEMS:
            raise RegistryError(
                f"{where}: field 'system' must be one of {LOGHUB_SYSTEMS}, got {system!r}"
            )
        fmt = fmt or system
        session_default = _LOGHUB_SESSIONS.get(system, session_default)
        truth_default = _LOGHUB_GROUND_TRUTH.get(system, truth_default)
    else:
        if not path:
            raise RegistryError(f"{where}: origin {origin!r} needs field 'path' (a file or a glob)")
        fmt = fmt or GENERIC_FORMAT
    layout, labels = _sequence_fields(entry, origin, where)
    if origin == "sequences":
        session_default = {"by": "sequence"}
        truth_default = {"provider": "sequence_labels"}
    multiline = _strict(
        entry.get("multiline", kind == "javaapp"), bool, f"{where}: field 'multiline'"
    )
    for key in ("session", "ground_truth"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise RegistryError(
                f"{where}: field {key!r} must be a mapping such as "
                + ("{by: block_id}" if key == "session" else "{provider: none}")
                + f", got {entry[key]!r}"
            )
    try:
        get_line_format(str(fmt), multiline)
    except ValueError as exc:
        raise RegistryError(f"{where}: field 'format': {exc}") from None

    session = _sub_spec(
        SessionSpec, {**session_default, **(entry.get("session") or {})}, f"{where}.session"
    )
    if session.by not in SESSION_KINDS:
        raise RegistryError(
            f"{where}: session.by must be one of {SESSION_KINDS}, got {session.by!r}"
        )
    if session.by == "regex":
        try:
            if re.compile(session.pattern).groups > 1:
                raise RegistryError(f"{where}: session.pattern may have at most one group")
        except re.error as exc:
            raise RegistryError(f"{where}: session.pattern is not a valid regex: {exc}") from None
        if not session.pattern:
            raise RegistryError(f"{where}: session.by 'regex' needs session.pattern")
    if (session.by == "sequence") != (origin == "sequences"):
        raise RegistryError(
            f"{where}: session.by 'sequence' is the one and only session kind of origin 'sequences'"
        )
    if session.by == "window" and session.size < 1:
        raise RegistryError(f"{where}: session.size must be at least 1")
    if session.by == "time_window" and session.seconds < 1:
        raise RegistryError(f"{where}: session.seconds must be at least 1")
    truth = _sub_spec(
        GroundTruthSpec,
        {**truth_default, **(entry.get("ground_truth") or {})},
        f"{where}.ground_truth",
    )
    if truth.provider not in GROUND_TRUTH_PROVIDERS:
        raise RegistryError(
            f"{where}: ground_truth.provider must be one of {GROUND_TRUTH_PROVIDERS}, got {truth.provider!r}"
        )
    if truth.provider in ("hdfs_blocks", "instance_list") and not truth.path:
        raise RegistryError(
            f"{where}: ground_truth provider {truth.provider!r} needs ground_truth.path"
        )
    if truth.provider == "sequence_labels" and origin != "sequences":
        raise RegistryError(
            f"{where}: ground_truth provider 'sequence_labels' is only for origin 'sequences' "
            "(its labels come from the sequence files)"
        )
    if origin == "sequences" and truth.provider not in ("sequence_labels", "hdfs_blocks", "none"):
        raise RegistryError(
            f"{where}: origin 'sequences' takes ground_truth provider 'sequence_labels', "
            f"'hdfs_blocks' or 'none', got {truth.provider!r}"
        )
    if truth.provider == "synthetic" and origin != "synthetic":
        raise RegistryError(
            f"{where}: ground_truth provider 'synthetic' is only for synthetic sources"
        )
    lines = _strict(
        entry.get("lines", 20000 if origin == "synthetic" else 0), int, f"{where}: field 'lines'"
    )
    seed = _strict(entry.get("seed", 0), int, f"{where}: field 'seed'")
    if origin == "synthetic" and lines < 1:
        raise RegistryError(f"{where}: field 'lines' must be at least 1")
    return SourceSpec(
        name=name,
        origin=origin,
        format=str(fmt),
        multiline=multiline,
        session=session,
        ground_truth=truth,
        kind=kind,
        lines=lines,
        seed=seed,
        system=system,
        release=release,
        path=path,
        patterns=patterns,
        layout=layout,
        templates=str(entry.get("templates") or ""),
        labels=labels,
    )


def _sequence_fields(entry: dict, origin: str, where: str) -> tuple[str, tuple]:
    """Check the fields of origin 'sequences': ``layout``, ``templates`` and ``labels``."""
    from logfit_dagster.core.sequences import LABEL_WORDS, LAYOUTS

    given = [k for k in ("layout", "templates", "labels") if entry.get(k)]
    if origin != "sequences":
        if given:
            raise RegistryError(f"{where}: field(s) {given} are only for origin 'sequences'")
        return "", ()
    layout = str(entry.get("layout", ""))
    if layout not in LAYOUTS:
        raise RegistryError(f"{where}: field 'layout' must be one of {LAYOUTS}, got {layout!r}")
    rules = entry.get("labels") or {}
    if not isinstance(rules, dict):
        raise RegistryError(
            f"{where}: field 'labels' maps file-name patterns to 'normal' or 'anomalous'"
        )
    for pattern, word in rules.items():
        if str(word).lower() not in LABEL_WORDS:
            raise RegistryError(
                f"{where}: labels[{pattern!r}] must be 'normal' or 'anomalous', got {word!r}"
            )
    return layout, tuple((str(k), str(v).lower()) for k, v in rules.items())


def _sub_spec(cls, values: dict, where: str):
    allowed = set(cls.__dataclass_fields__)
    unknown = set(values) - allowed
    if unknown:
        raise RegistryError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    converted = {
        key: _strict(value, type(getattr(cls(), key)), f"{where}.{key}")
        if value is not None
        else getattr(cls(), key)
        for key, value in values.items()
    }
    return cls(**converted)


def _strict(value, kind: type, where: str):
    """``value`` as ``kind`` when it is one, never by a lossy cast: ``2.9`` is not an integer,
    the string ``'no'`` is not a boolean (write ``false``), a list is not a string."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise RegistryError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise RegistryError(f"{where} must be a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise RegistryError(f"{where} must be a whole number, got {value!r}")
    if kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise RegistryError(f"{where} must be a string, got {value!r}")
    return kind(value)


def load_registry(path: Path) -> dict[str, SourceSpec]:
    """Read and validate the registry file.

    Raises:
        RegistryError: naming the file and the entry for any malformed entry or duplicate name.
    """
    sources, problems = read_registry(path)
    if problems:
        raise RegistryError(next(iter(problems.values())))
    return sources


def read_registry(path: Path) -> tuple[dict[str, SourceSpec], dict[str, str]]:
    """Read the registry file, keeping the valid entries when some are not.

    Returns:
        The valid sources by name, and for each invalid entry its error (keyed by the entry's
        name where it has a usable one, else ``sources[i]``): one bad entry never hides the
        others.

    Raises:
        RegistryError: when the file itself is missing or is not a registry at all.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"source registry not found: {path}")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    entries = document.get("sources") if isinstance(document, dict) else None
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise RegistryError(f"{path}: 'sources' must be a list of entries")
    sources: dict[str, SourceSpec] = {}
    problems: dict[str, str] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        key = name if isinstance(name, str) and _SAFE_NAME.match(name) else f"sources[{index}]"
        try:
            spec = parse_source(entry, f"{path}: sources[{index}]")
        except RegistryError as exc:
            problems[key] = str(exc)
            continue
        if spec.name in sources or spec.name in problems:
            problems[spec.name] = (
                f"{path}: sources[{index}]: source name {spec.name!r} appears twice"
            )
            sources.pop(spec.name, None)
            continue
        sources[spec.name] = spec
    return sources, problems


def loghub_entry(system: str, full: bool = False) -> str:
    """The registry line that enables one Loghub system (its 2k sample, or its full data set)."""
    if full:
        return (
            f"  - {{name: loghub_full_{system}, origin: loghub, system: {system}, release: full}}\n"
        )
    return f"  - {{name: loghub_{system}, origin: loghub, system: {system}}}\n"


def add_loghub_entries(path: Path, systems: list[str], full: bool = False) -> list[str]:
    """Append entries for Loghub systems not yet registered; returns the names added."""
    path = Path(path)
    existing = load_registry(path) if path.exists() else {}
    known = tuple(sorted(LOGHUB_DATASETS)) if full else LOGHUB_SYSTEMS
    unknown = [s for s in systems if s not in known]
    if unknown:
        raise RegistryError(
            f"unknown Loghub {'data set' if full else 'system'}(s) {unknown}; "
            f"known: {', '.join(known)}"
        )
    prefix = "loghub_full_" if full else "loghub_"
    added = [s for s in systems if f"{prefix}{s}" not in existing]
    if added:
        text = path.read_text(encoding="utf-8") if path.exists() else "sources:\n"
        if not text.endswith("\n"):
            text += "\n"
        text += "".join(loghub_entry(s, full) for s in added)
        path.write_text(text, encoding="utf-8")
        load_registry(path)
    return [f"{prefix}{s}" for s in added]

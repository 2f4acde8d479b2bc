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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from logfit_dagster.core.errors import RegistryError
from logfit_dagster.core.formats import GENERIC_FORMAT, get_line_format
from logfit_dagster.core.loghub import LOGHUB_DATASETS, LOGHUB_SYSTEMS
from logfit_dagster.core.sequences import LABEL_WORDS
from logfit_dagster.core.sequences import LAYOUTS as SEQUENCE_LAYOUTS
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
SEQUENCE_LABELS = tuple(LABEL_WORDS)


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
    # another source whose Drain3 template state this one starts from (mined sources only), so
    # that the same messages get the same templates: what a template model pretrained there
    # needs to carry over
    templates_from: str = ""

    @property
    def has_ground_truth(self) -> bool:
        return self.ground_truth.provider != "none"

    @property
    def is_sequences(self) -> bool:
        """Its rows are events of pre-parsed sessions, not log lines (nothing to label)."""
        return self.origin == "sequences"


# Each origin's fields as a pydantic model: types are strict where a cast would lose meaning (a
# boolean is true or false, a whole number is never 2.9 nor true), unknown fields are refused, and
# the union is keyed on ``origin``. Defaults that depend on the origin, the synthetic kind or the
# Loghub system are filled in afterwards by ``_spec_of``.


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]
Patterns = Annotated[str | list[str], Field(union_mode="left_to_right")]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SessionFields(_Fields):
    by: Literal[SESSION_KINDS] | None = None
    size: Annotated[WholeNumber, Field(ge=1)] | None = None
    seconds: Annotated[WholeNumber, Field(ge=1)] | None = None
    pattern: str | None = None


class _TruthFields(_Fields):
    provider: Literal[GROUND_TRUTH_PROVIDERS] | None = None
    path: str | None = None
    unlisted: str | None = None
    field: str | None = None
    normal_value: str | None = None


class _Entry(_Fields):
    name: str
    description: str | None = None
    format: str | None = None
    multiline: StrictBool | None = None
    session: _SessionFields | None = None
    ground_truth: _TruthFields | None = None


class _MinedEntry(_Entry):
    templates_from: str | None = None


class _SyntheticEntry(_MinedEntry):
    origin: Literal["synthetic"]
    kind: Literal[SYNTHETIC_KINDS]
    lines: Annotated[WholeNumber, Field(ge=1)] = 20000
    seed: WholeNumber = 0


class _LoghubEntry(_MinedEntry):
    origin: Literal["loghub"]
    system: str
    release: Literal[RELEASES] = "2k"
    path: Patterns | None = None

    @model_validator(mode="after")
    def _known_system(self) -> _LoghubEntry:
        if self.release == "full" and self.system not in LOGHUB_DATASETS:
            raise ValueError(
                f"field 'system' of release 'full' must be one of "
                f"{tuple(sorted(LOGHUB_DATASETS))}, got {self.system!r}",
            )
        if self.release == "2k" and self.system not in LOGHUB_SYSTEMS:
            raise ValueError(f"field 'system' must be one of {LOGHUB_SYSTEMS}, got {self.system!r}")
        if self.release == "2k" and self.path:
            raise ValueError("field 'path' is for release 'full' of origin loghub")
        return self


class _FilesEntry(_MinedEntry):
    origin: Literal["files"]
    path: Patterns


class _SequencesEntry(_Entry):
    origin: Literal["sequences"]
    path: Patterns
    layout: Literal[SEQUENCE_LAYOUTS]
    templates: str | None = None
    labels: dict[str, Annotated[Literal[SEQUENCE_LABELS], BeforeValidator(_lower)]] = {}


_MODEL_OF_ORIGIN = {
    "synthetic": _SyntheticEntry,
    "loghub": _LoghubEntry,
    "files": _FilesEntry,
    "sequences": _SequencesEntry,
}
_ENTRY = TypeAdapter(
    Annotated[
        _SyntheticEntry | _LoghubEntry | _FilesEntry | _SequencesEntry,
        Field(discriminator="origin"),
    ]
)
# Fields that belong to some origins only, named in the error when given to another.
_ONLY_FOR = {
    "release": "origin loghub",
    "system": "origin loghub",
    "kind": "origin synthetic",
    "lines": "origin synthetic",
    "seed": "origin synthetic",
    "layout": "origin 'sequences'",
    "templates": "origin 'sequences'",
    "labels": "origin 'sequences'",
    "templates_from": "mined sources (origins synthetic, loghub and files)",
}
_MAPPING_EXAMPLE = {"session": "{by: block_id}", "ground_truth": "{provider: none}"}


def _registry_error(exc: ValidationError, entry: dict, where: str) -> RegistryError:
    """The first of pydantic's complaints, in the registry's words: ``where: field 'x': ...``."""
    error = exc.errors(include_url=False)[0]
    # The first part of a location is the origin's model; the rest is the field path.
    loc = [str(part) for part in error["loc"][1:]] if error["loc"] else []
    field_name = ".".join(loc)
    kind, given = error["type"], error.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        got = entry.get("origin")
        return RegistryError(f"{where}: field 'origin' must be one of {ORIGINS}, got {got!r}")
    if kind == "extra_forbidden":
        only = _ONLY_FOR.get(field_name)
        if only:
            return RegistryError(f"{where}: field {field_name!r} is for {only} only")
        model = _MODEL_OF_ORIGIN[entry["origin"]]
        for part in loc[:-1]:
            model = model.model_fields[part].annotation.__args__[0]  # X | None: X
        return RegistryError(
            f"{where}: unknown field {field_name!r}; allowed: {sorted(model.model_fields)}"
        )
    if kind == "model_type" and field_name in _MAPPING_EXAMPLE:
        return RegistryError(
            f"{where}: field {field_name!r} must be a mapping such as "
            f"{_MAPPING_EXAMPLE[field_name]}, got {given!r}"
        )
    if kind == "missing":
        return RegistryError(f"{where}: origin {entry['origin']!r} needs field {field_name!r}")
    if loc[:1] == ["path"]:
        return RegistryError(
            f"{where}: field 'path' must be a file or glob, or a list of them, got {given!r}"
        )
    if kind == "value_error":  # our own validators' words
        text = str(error["ctx"]["error"])
        if not field_name:
            return RegistryError(f"{where}: {text}")
        return RegistryError(f"{where}: field {field_name!r} {text}, got {given!r}")
    message = error["msg"].replace("Input should be", "must be")
    message += f" ({given!r})" if ", got" in message else f", got {given!r}"
    return RegistryError(f"{where}: field {field_name!r} {message}")


def parse_source(entry: Any, where: str) -> SourceSpec:
    """Validate one registry entry; ``where`` names it in errors (file and index)."""
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(entry).__name__}")
    if "name" not in entry:
        raise RegistryError(f"{where}: missing field 'name'")
    name = entry["name"]
    try:
        check_source_name(name)
    except RegistryError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    where = f"{where} ({name})"
    try:
        fields = _ENTRY.validate_python(entry)
    except ValidationError as exc:
        raise _registry_error(exc, entry, where) from None
    spec = _spec_of(fields)
    _check_consistent(spec, where)
    return spec


def _spec_of(fields: _Entry) -> SourceSpec:
    """The source with every default filled in from its origin, kind or system."""
    session_default: dict[str, Any] = {"by": "window", "size": 100}
    truth_default: dict[str, Any] = {"provider": "none"}
    fmt, multiline_default = GENERIC_FORMAT, False
    extra: dict[str, Any] = {}
    if isinstance(fields, _SyntheticEntry):
        fmt, multiline_default = FORMAT_OF_KIND[fields.kind], fields.kind == "javaapp"
        truth_default = {"provider": "synthetic"}
        session_default = {
            "hdfs": {"by": "block_id"},
            "openstack": {"by": "instance_id"},
            "bgl": {"by": "time_window", "seconds": 300},
            "javaapp": {"by": "window", "size": 50},
        }[fields.kind]
        extra = {"kind": fields.kind, "lines": fields.lines, "seed": fields.seed}
    elif isinstance(fields, _LoghubEntry) and fields.release == "full":
        fmt = LOGHUB_DATASETS[fields.system].format
        session_default = _FULL_SESSIONS.get(fields.system, session_default)
        truth_default = _FULL_GROUND_TRUTH.get(fields.system, truth_default)
    elif isinstance(fields, _LoghubEntry):
        fmt = fields.system
        session_default = _LOGHUB_SESSIONS.get(fields.system, session_default)
        truth_default = _LOGHUB_GROUND_TRUTH.get(fields.system, truth_default)
    elif isinstance(fields, _SequencesEntry):
        session_default, truth_default = {"by": "sequence"}, {"provider": "sequence_labels"}
        extra = {
            "layout": fields.layout,
            "templates": fields.templates or "",
            "labels": tuple(fields.labels.items()),
        }
    if isinstance(fields, _LoghubEntry):
        extra.update(system=fields.system, release=fields.release)
    if isinstance(fields, _MinedEntry) and fields.templates_from:
        extra["templates_from"] = fields.templates_from
    raw_path = getattr(fields, "path", None) or ()
    patterns = (raw_path,) if isinstance(raw_path, str) else tuple(raw_path)

    def given(sub: _Fields | None) -> dict[str, Any]:
        return sub.model_dump(exclude_none=True) if sub is not None else {}

    return SourceSpec(
        name=fields.name,
        origin=fields.origin,
        format=fields.format or fmt,
        multiline=multiline_default if fields.multiline is None else fields.multiline,
        session=SessionSpec(**{**session_default, **given(fields.session)}),
        ground_truth=GroundTruthSpec(**{**truth_default, **given(fields.ground_truth)}),
        path=", ".join(patterns),
        patterns=patterns,
        **extra,
    )


def _check_consistent(spec: SourceSpec, where: str) -> None:
    """The rules that tie one field to another: the format compiles, the session kind fits
    the origin, and the ground-truth provider has what it needs."""
    if spec.origin in ("files", "sequences") and not spec.patterns:
        raise RegistryError(
            f"{where}: origin {spec.origin!r} needs field 'path' (a file or a glob)"
        )
    try:
        get_line_format(spec.format, spec.multiline)
    except ValueError as exc:
        raise RegistryError(f"{where}: field 'format': {exc}") from None
    session, truth = spec.session, spec.ground_truth
    if session.by == "regex":
        if not session.pattern:
            raise RegistryError(f"{where}: session.by 'regex' needs session.pattern")
        try:
            groups = re.compile(session.pattern).groups
        except re.error as exc:
            raise RegistryError(f"{where}: session.pattern is not a valid regex: {exc}") from None
        if groups > 1:
            raise RegistryError(f"{where}: session.pattern may have at most one group")
    if (session.by == "sequence") != spec.is_sequences:
        raise RegistryError(
            f"{where}: session.by 'sequence' is the one and only session kind of origin 'sequences'"
        )
    if truth.provider in ("hdfs_blocks", "instance_list") and not truth.path:
        raise RegistryError(
            f"{where}: ground_truth provider {truth.provider!r} needs ground_truth.path"
        )
    if truth.provider == "sequence_labels" and not spec.is_sequences:
        raise RegistryError(
            f"{where}: ground_truth provider 'sequence_labels' is only for origin 'sequences' "
            "(its labels come from the sequence files)"
        )
    if spec.is_sequences and truth.provider not in ("sequence_labels", "hdfs_blocks", "none"):
        raise RegistryError(
            f"{where}: origin 'sequences' takes ground_truth provider 'sequence_labels', "
            f"'hdfs_blocks' or 'none', got {truth.provider!r}"
        )
    if spec.templates_from == spec.name:
        raise RegistryError(f"{where}: field 'templates_from' names the source itself")
    if truth.provider == "synthetic" and spec.origin != "synthetic":
        raise RegistryError(
            f"{where}: ground_truth provider 'synthetic' is only for synthetic sources"
        )


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
    from logfit_dagster.core.yaml_files import load_yaml

    path = Path(path)
    if not path.exists():
        raise RegistryError(f"source registry not found: {path}")
    document = load_yaml(path)
    if document is None:
        raise RegistryError(
            f"{path}: the registry is empty; it holds 'sources:' with a list of entries "
            "(see sources.yaml in the project for examples)"
        )
    if not isinstance(document, dict):
        raise RegistryError(
            f"{path}: the registry must be a mapping with key 'sources' (a list of entries), "
            f"not a {type(document).__name__}"
        )
    unknown = sorted(str(k) for k in document if k != "sources")
    if unknown:
        raise RegistryError(f"{path}: unknown top-level key(s) {unknown}; the registry has 'sources'")
    if "sources" not in document:
        raise RegistryError(f"{path}: no 'sources' key (a list of entries)")
    entries = document["sources"]
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
    for name, spec in list(sources.items()):
        seed = spec.templates_from
        if seed and (seed not in sources or sources[seed].is_sequences):
            what = "a sequences source (its templates are not mined)" if seed in sources else (
                "not a registered source"
            )
            problems[name] = (
                f"{path}: source {name!r}: field 'templates_from' names {seed!r}, {what}"
            )
            sources.pop(name)
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
    empty = not path.exists() or not path.read_text(encoding="utf-8").strip()
    existing = {} if empty else load_registry(path)
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
        text = "sources:\n" if empty else path.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        text += "".join(loghub_entry(s, full) for s in added)
        path.write_text(text, encoding="utf-8")
        load_registry(path)
    return [f"{prefix}{s}" for s in added]

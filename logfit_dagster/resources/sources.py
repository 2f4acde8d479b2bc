"""The log sources: the registry file, and the files behind each source's origin."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict
from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.core.errors import LogInputError, RegistryError
from logfit_dagster.core.ingest import source_fingerprint, write_synthetic_chunks
from logfit_dagster.core.loghub import (
    DEFAULT_LOGHUB_BASE_URL,
    DEFAULT_ZENODO_URL,
    fetch_loghub_dataset,
    fetch_loghub_sample,
    loghub_dataset_files,
)
from logfit_dagster.core.registry import (
    SourceSpec,
    check_source_name,
    parse_source,
    read_registry,
)
from logfit_dagster.core.synthetic import generate_chunks
from logfit_dagster.paths import data_dir, registry_path

INCOMING = "incoming"


#: bytes a generated line takes, about (HDFS-style lines run 110 to 150)
SYNTHETIC_BYTES_PER_LINE = 130
#: a full Loghub data set, without downloading it to see: the smallest is over 100 MB
FULL_LOGHUB_BYTES = 1 << 30


class LogSources(dg.ConfigurableResource):
    """Resolves a log source's name to its description and its files on disk.

    Sources come from the registry file; a folder ``data/incoming/<name>/`` that is not in the
    registry is a source too, read with the generic format (or the entry in its own
    ``source.yaml``).
    """

    registry: str = Field(
        default="", description="Registry file; empty means $LOGFIT_SOURCES or ./sources.yaml."
    )
    data_dir: str = Field(
        default="", description="Data folder; empty means $LOGFIT_DATA_DIR or ./data."
    )
    loghub_base_url: str = Field(
        default="",
        description="Base URL of the Loghub repository (a mirror); empty means $LOGFIT_LOGHUB_URL "
        "or the public Loghub repository.",
    )

    zenodo_url: str = Field(
        default="",
        description="Where Loghub's full data sets are downloaded from (a mirror serving "
        "Zenodo's REST API); empty means $LOGFIT_ZENODO_URL or https://zenodo.org.",
    )

    def root(self) -> Path:
        return Path(self.data_dir).resolve() if self.data_dir else data_dir()

    def registry_file(self) -> Path:
        return Path(self.registry).resolve() if self.registry else registry_path()

    def incoming_dir(self) -> Path:
        return self.root() / INCOMING

    def _read(self) -> tuple[dict[str, SourceSpec], dict[str, str]]:
        """The registry's valid sources and its invalid entries' errors.

        Raises:
            RegistryError: when the file is not a registry, or is missing though named
                (``registry`` or ``LOGFIT_SOURCES``); a missing default ``./sources.yaml``
                leaves only the drop folders.
        """
        path = self.registry_file()
        if not path.exists() and not (self.registry or os.environ.get("LOGFIT_SOURCES")):
            return {}, {}
        return read_registry(path)

    def registered(self) -> dict[str, SourceSpec]:
        """The valid sources of the registry file (an invalid entry never hides the others:
        see :meth:`problems`)."""
        return self._read()[0]

    def problems(self) -> dict[str, str]:
        """The invalid registry entries and drop folders, by name (or ``sources[i]``), each
        with its error."""
        registered, problems = self._read()
        dropped = {n: e for n, e in self._incoming()[1].items() if n not in registered}
        return {**dropped, **problems}

    def incoming_sources(self) -> dict[str, SourceSpec]:
        """Sources dropped as folders under data/incoming/ (a folder whose source.yaml is
        invalid is left out: see :meth:`problems`)."""
        return self._incoming()[0]

    def _incoming(self) -> tuple[dict[str, SourceSpec], dict[str, str]]:
        from logfit_dagster.core.yaml_files import load_yaml

        found: dict[str, SourceSpec] = {}
        problems: dict[str, str] = {}
        incoming = self.incoming_dir()
        if not incoming.is_dir():
            return found, problems
        for folder in sorted(p for p in incoming.iterdir() if p.is_dir()):
            try:
                check_source_name(folder.name)
            except RegistryError:
                continue
            entry = {"name": folder.name, "origin": "files", "path": str(folder / "*")}
            own = folder / "source.yaml"
            try:
                if own.exists():
                    document = load_yaml(own)
                    if document is not None and not isinstance(document, dict):
                        raise RegistryError(
                            f"{own}: a drop folder's source.yaml is a mapping of the entry's "
                            f"fields (format, session, ...), not a {type(document).__name__}"
                        )
                    entry.update(document or {})
                    entry["name"], entry["origin"] = folder.name, "files"
                    entry["path"] = str(folder / str(entry.get("path", "*")))
                found[folder.name] = parse_source(entry, str(own if own.exists() else folder))
            except RegistryError as exc:
                # one bad drop folder fails alone; the registry and the other folders run
                problems[folder.name] = str(exc)
        return found, problems

    def all_sources(self) -> dict[str, SourceSpec]:
        """Registry sources, then incoming folders not named in the registry."""
        return self._all(self.registered())

    def _all(self, registered: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        sources = dict(registered)
        for name, spec in self.incoming_sources().items():
            sources.setdefault(name, spec)
        return sources

    def get(self, name: str) -> SourceSpec:
        """The source behind a partition key.

        Raises:
            RegistryError: when the name is unsafe or the source was removed from the registry;
                its partition and history stay, but new runs are refused.
        """
        check_source_name(name)
        registered, problems = self._read()  # the registry read once
        sources = self._all(registered)
        if name not in registered:
            problems = {**self._incoming()[1], **problems}
        if name not in sources and name in problems:
            raise RegistryError(problems[name])
        if name not in sources:
            raise RegistryError(
                f"log source {name!r} is not in the registry {self.registry_file()} nor under "
                f"{self.incoming_dir()}: add it to the registry (or drop its files in a folder "
                "of that name there), or check the name "
                f"({', '.join(sorted(sources)) or 'no source is registered'}); a source removed "
                "from the registry keeps its past materializations but cannot run until it is "
                "registered again"
            )
        return sources[name]

    def source_dir(self, name: str) -> Path:
        return self.root() / "sources" / check_source_name(name)

    def miner_state_path(self, name: str) -> Path:
        return self.source_dir(name) / "drain_state.json"

    def seeded_miner_state(self, spec: SourceSpec) -> Path:
        """The source's Drain3 state file; a source with ``templates_from`` and no state of its
        own yet starts from a copy of that source's, so the same messages get the same
        templates. The copy is written whole or not at all (the other source's is never
        changed).

        Raises:
            LogInputError: when the source named has no template state yet.
        """
        import shutil
        import tempfile

        own = self.miner_state_path(spec.name)
        if not spec.templates_from or own.exists():
            return own
        seed = self.miner_state_path(spec.templates_from)
        if not seed.is_file():
            raise LogInputError(
                f"source {spec.name!r}: templates_from {spec.templates_from!r} has no template "
                f"state yet ({seed}): materialize parsed_logs of {spec.templates_from} first"
            )
        own.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=own.parent, delete=False, suffix=".tmp") as tmp:
            shutil.copyfile(seed, tmp.name)
        os.replace(tmp.name, own)
        return own

    def synthetic_labels_path(self, name: str) -> Path:
        return self.source_dir(name) / f"{name}.labels.parquet"

    def fingerprint(self, spec: SourceSpec, files: list[Path]) -> str:
        """The data version of a source's raw lines: its registry entry and its files' bytes."""
        return source_fingerprint(json.dumps(asdict(spec), sort_keys=True, default=str), files)

    def resolve(self, path: str) -> Path:
        """A path from the registry: ``~`` expanded, relative ones from the registry's folder."""
        expanded = Path(os.path.expanduser(path))
        return expanded if expanded.is_absolute() else self.registry_file().parent / expanded

    def templates_file(self, spec: SourceSpec) -> Path | None:
        """The templates file of a sequence source, when it names one."""
        return self.resolve(spec.templates) if spec.templates else None

    def loghub_dataset(self, spec: SourceSpec, progress=None) -> Path:
        """The unpacked folder of a ``release: full`` Loghub source, downloaded if needed."""
        base = self.zenodo_url or os.environ.get("LOGFIT_ZENODO_URL") or DEFAULT_ZENODO_URL
        return fetch_loghub_dataset(
            spec.system, self.root() / "loghub-full", base, progress=progress
        )

    def ground_truth_dir(self, spec: SourceSpec) -> Path:
        """Where a source's relative ``ground_truth.path`` is read from: the unpacked data set
        for a full Loghub source, the registry's folder otherwise."""
        if spec.origin == "loghub" and spec.release == "full":
            return self.loghub_dataset(spec)
        return self.registry_file().parent

    def files(self, spec: SourceSpec, progress=None) -> list[Path]:
        """The files that hold a source's lines, generating or downloading them if needed.

        ``progress(stage, done, total)`` hears a full Loghub data set's download and unpack.
        """
        if spec.origin == "synthetic":
            return [self._ensure_synthetic(spec)]
        if spec.origin == "loghub" and spec.release == "full":
            folder = self.loghub_dataset(spec, progress)
            return loghub_dataset_files(spec.system, folder, spec.patterns)
        if spec.origin == "loghub":
            base = (
                self.loghub_base_url
                or os.environ.get("LOGFIT_LOGHUB_URL")
                or DEFAULT_LOGHUB_BASE_URL
            )
            return [fetch_loghub_sample(spec.system, self.root() / "loghub", base)]
        found: list[Path] = []
        for pattern in [str(self.resolve(p)) for p in spec.patterns or (spec.path,)]:
            matches = sorted(
                Path(p)
                for p in glob.glob(pattern)
                if Path(p).is_file()
                and Path(p).name != "source.yaml"
                and not Path(p).name.startswith(".")
            )
            if not matches:
                raise LogInputError(f"source {spec.name!r}: no file matches {pattern}")
            found += [m for m in matches if m not in found]
        return found

    def estimated_bytes(self, spec: SourceSpec) -> int:
        """About how many bytes of log a source holds, without generating, downloading or
        reading anything (what ``logfit materialize`` sizes its executor by)."""
        if spec.origin == "synthetic":
            return spec.lines * SYNTHETIC_BYTES_PER_LINE
        if spec.origin == "loghub":
            return FULL_LOGHUB_BYTES if spec.release == "full" else 0
        total = 0
        for pattern in [str(self.resolve(p)) for p in spec.patterns or (spec.path,)]:
            for path in glob.glob(pattern):
                try:
                    total += Path(path).stat().st_size
                except OSError:
                    continue  # gone meanwhile, or unreadable: the ingest says which
        return total

    def _ensure_synthetic(self, spec: SourceSpec) -> Path:
        folder = self.source_dir(spec.name)
        log_path = folder / f"{spec.name}.log"
        stamp_path = folder / "generator.json"
        stamp = {"kind": spec.kind, "lines": spec.lines, "seed": spec.seed}
        labels = self.synthetic_labels_path(spec.name)
        if log_path.exists() and labels.exists() and stamp_path.exists():
            if json.loads(stamp_path.read_text()) == stamp:
                return log_path
        # generated and written a chunk at a time: a source of any length in flat memory
        write_synthetic_chunks(generate_chunks(spec.kind, spec.lines, spec.seed), log_path, labels)
        stamp_path.write_text(json.dumps(stamp))
        return log_path

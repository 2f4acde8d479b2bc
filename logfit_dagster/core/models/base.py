"""The contract every model family keeps: train into an artifact folder, load it back to score.

A family is a module of ``core/models`` with:

- ``FAMILY`` (its name) and ``FORMAT_VERSION`` (bumped when its files change meaning);
- ``train(data, params, folder, progress=None) -> TrainResult``: fits on plain data, writes every
  file the model needs into ``folder`` plus ``manifest.json`` (see :class:`Manifest`), and
  returns the folder and its metrics;
- ``load(folder, manifest) -> scorer``: the folder back as an object with a ``score(...)``
  method (what it scores depends on the family: lines, sessions).

:func:`load` reads the manifest, checks the family, format and feature versions and the files'
digests, and hands the folder to the family: a missing, corrupt or outdated artifact fails with
its path named, before any weights are read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from logfit_dagster.core.errors import ModelFileError

MANIFEST = "manifest.json"
#: subfolders of an artifact folder that hold training state, not the model: checkpoints, the
#: best weights so far, the spec and data of a training process. Never digested, copied or logged.
TRAINING_STATE = ("checkpoints", "best", "spec")
#: the file that marks a line model folder adapted to one system (``core/line_adaptation.py``)
ADAPTATION_FILE = "adaptation.json"

#: family name -> module. A family that needs torch is imported only when used.
FAMILIES = {
    "line_tfidf": "logfit_dagster.core.models.line_tfidf",
    "line_transformer": "logfit_dagster.core.models.line_transformer",
    "session_counts": "logfit_dagster.core.models.session_counts",
    "template_lm": "logfit_dagster.core.models.template_lm",
    "llm_lora": "logfit_dagster.core.models.llm_lora",
}

#: families that train and score with torch: their processes set torch's threads (threads.py)
TORCH_FAMILIES = ("line_transformer", "template_lm", "llm_lora")

#: families that score lines (``logfit classify``, ``scored_lines``)
LINE_FAMILIES = ("line_tfidf", "line_transformer")

#: progress(step, total, **metrics): called by training loops, never required
Progress = Callable[..., None]


def no_progress(step: int, total: int, **metrics) -> None:
    return None


def params_from_dict(cls, values: dict, family: str, error: type[Exception] = ValueError):
    """A family's params dataclass from a dict; unknown names are refused, never ignored."""
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise error(f"unknown {family} params {sorted(unknown)}")
    return cls(**values)


@dataclass
class Manifest:
    """What an artifact folder holds and how it was made."""

    family: str
    format_version: int
    feature_version: str  # the features or tokenizer the model reads: a scorer refuses others
    params: dict
    metrics: dict
    data: dict  # what it was trained on: sources, rows, lines, split
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=_plain)


@dataclass
class TrainResult:
    folder: Path
    manifest: Manifest

    @property
    def metrics(self) -> dict:
        return self.manifest.metrics


@dataclass(frozen=True)
class ModelArtifact:
    """A trained model as a value that flows between assets: its folder and manifest.

    An asset that trains or chooses a model returns one; the model store writes the folder
    where the asset's models live and hands the stored one to the assets that name it as an
    input, which score through :meth:`scorer` and never open its files.
    """

    folder: Path
    manifest: Manifest

    @classmethod
    def read(cls, folder: Path) -> ModelArtifact:
        """The artifact of a finished folder (its files checked against the manifest)."""
        return cls(Path(folder), read_manifest(folder))

    @property
    def family(self) -> str:
        return self.manifest.family

    @property
    def metrics(self) -> dict:
        return self.manifest.metrics

    def scorer(self, families: tuple[str, ...] | None = None):
        """The model, loaded to score (see :func:`load`)."""
        return load(self.folder, families)


def _plain(value):
    """JSON for numpy scalars and paths in params and metrics."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record the digest of every model file in ``folder`` (not :data:`TRAINING_STATE`) and
    write ``manifest.json`` last, atomically: a folder without a manifest is not a finished
    model."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == MANIFEST or rel.split("/")[0] in TRAINING_STATE:
            continue
        files[rel] = digest(path)
    manifest.files = files
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path, verify: bool = True) -> Manifest:
    """The manifest of an artifact folder, its files checked against their digests.

    Raises:
        ModelFileError: naming the folder or file that is missing, corrupt or outdated.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.exists():
        raise ModelFileError(f"model folder not found: {folder}")
    if not path.is_file():
        raise ModelFileError(f"{folder}: no {MANIFEST}: not a finished logfit model")
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise ModelFileError(f"{path}: manifest is corrupt ({exc})") from None
    if manifest.family not in FAMILIES:
        raise ModelFileError(f"{path}: unknown model family {manifest.family!r}")
    if verify:
        for rel, expected in manifest.files.items():
            file = folder / rel
            if not file.is_file():
                raise ModelFileError(f"{file}: missing from the model folder")
            if digest(file) != expected:
                raise ModelFileError(f"{file}: corrupt (its digest differs from the manifest's)")
    return manifest


# What a session family hands the session champion: its test sessions scored, one candidate per
# model (or scoring method), each with its dev figures (``candidates`` of the family's module
# turns the family asset's value into these; the rule is in ``core/session_champion.py``). The
# chosen model's files come from the model registry, never from the family's folder.
SESSION_CANDIDATE_COLUMNS = [
    "family",
    "model",
    "session_id",
    "label",
    "score",
    "threshold",
    "flagged",
    "dev_average_precision",
    "dev_f1",
]


@runtime_checkable
class ModelFamily(Protocol):
    """The contract a family's module keeps (the module docstring says what each part does):
    a family is its core module, its asset module and one line in :data:`FAMILIES`."""

    FAMILY: str
    FORMAT_VERSION: int

    def train(
        self, data, params: dict, folder: Path, progress: Progress | None = None
    ) -> TrainResult: ...

    def load(self, folder: Path, manifest: Manifest): ...

    def feature_version(self, manifest: Manifest) -> str: ...


def family_module(name: str) -> ModelFamily:
    """The module of a registered family, checked against the contract.

    Raises:
        ValueError: for an unknown family, or a module that does not keep the contract.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    module = importlib.import_module(FAMILIES[name])
    if not isinstance(module, ModelFamily) or module.FAMILY != name:
        missing = [
            a
            for a in ("FAMILY", "FORMAT_VERSION", "train", "load", "feature_version")
            if not hasattr(module, a)
        ]
        raise ValueError(
            f"{FAMILIES[name]} does not keep the model-family contract (missing {missing} or "
            f"FAMILY is not {name!r})"
        )
    return module


def load(folder: Path, families: tuple[str, ...] | None = None, **options):
    """The scorer of an artifact folder, whichever family made it.

    Args:
        folder: the artifact folder.
        families: the families the caller can use (e.g. :data:`LINE_FAMILIES`); others fail.
        options: what the family's ``load`` takes beside the folder (``kind``: which session-count
            model of a folder scores).
    """
    manifest = read_manifest(folder)
    if families is not None and manifest.family not in families:
        raise ModelFileError(
            f"{folder}: a {manifest.family} model, expected one of {', '.join(families)}"
        )
    module = family_module(manifest.family)
    if manifest.format_version != module.FORMAT_VERSION:
        raise ModelFileError(
            f"{folder}: {manifest.family} format {manifest.format_version}, this logfit reads "
            f"format {module.FORMAT_VERSION}: retrain it"
        )
    if manifest.family in TORCH_FAMILIES:
        from logfit_dagster.core.models.threads import configure_torch_threads

        configure_torch_threads()
    current = module.feature_version(manifest)
    if manifest.feature_version != current:
        raise ModelFileError(
            f"{folder}: made for features {manifest.feature_version!r}, this logfit computes "
            f"{current!r}: retrain it"
        )
    return module.load(Path(folder), manifest, **options)


def train(
    family: str,
    data,
    params: dict,
    folder: Path,
    progress: Progress | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train ``family`` on ``data`` into ``folder`` (see the module docstring).

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) reaches the families that
    train on one (those that list ``device`` in their ``RUNTIME_PARAMS``).
    """
    module = family_module(family)
    params = dict(params)
    if device and "device" in getattr(module, "RUNTIME_PARAMS", ()):
        params["device"] = device
    threads = None
    if family in TORCH_FAMILIES:
        from logfit_dagster.core.models.threads import configure_torch_threads

        threads = configure_torch_threads()
    result = module.train(data, params, Path(folder), progress or no_progress)
    if threads is not None and result.manifest.extra.get("torch_threads") != threads:
        # what the training ran with, in the manifest (digests are of the model files only)
        result.manifest.extra["torch_threads"] = threads
        (Path(folder) / MANIFEST).write_text(result.manifest.to_json())
    return result


def format_progress(step: int, total: int, **metrics) -> str:
    """One line a person can follow: ``step 120/400 (30%) loss 0.213 rows/s 41.0 eta 1m05s``."""
    parts = [f"step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if total else "")]
    for key, value in metrics.items():
        if key == "eta_s":
            if isinstance(value, int | float) and value == value and value != float("inf"):
                minutes, seconds = divmod(int(round(value)), 60)
                parts.append(f"eta {minutes}m{seconds:02d}s")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " ".join(parts)


def _training_state(root: Path):
    """A ``copytree`` ignore function that leaves out the training-state subfolders of root."""
    root = Path(root).resolve()

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory).resolve() == root and n in TRAINING_STATE]

    return ignore


def copy_model_files(folder: Path, target: Path) -> None:
    """Copy an artifact folder's model files (not its training state) to ``target``."""
    shutil.copytree(folder, target, ignore=_training_state(folder))


def publish(folder: Path, target: Path) -> Path:
    """Copy a finished artifact folder to ``target``, replacing what was there only once the
    copy is whole (the previous model stays until then)."""
    read_manifest(folder)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        copy = staging / "model"
        shutil.copytree(folder, copy, ignore=_training_state(folder))
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old.{time.time_ns()}"
            os.replace(target, old)
        os.replace(copy, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class Throttle:
    """Calls ``progress`` at most every ``seconds`` (and always on the last step)."""

    def __init__(self, progress: Progress, seconds: float = 2.0):
        self.progress, self.seconds, self.last = progress, seconds, 0.0

    def __call__(self, step: int, total: int, **metrics) -> None:
        now = time.monotonic()
        if step >= total or now - self.last >= self.seconds:
            self.last = now
            self.progress(step, total, **metrics)


def finished_model(folder: Path, params: dict, ignore: tuple[str, ...] = ()) -> TrainResult | None:
    """The finished model of ``folder`` if it was trained with ``params`` (``ignore``d keys
    aside) and nothing is left to resume: a retried run returns it instead of training again."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() or (folder / "checkpoints").exists():
        return None
    try:
        manifest = read_manifest(folder)
    except ModelFileError:
        return None

    def kept(values: dict) -> dict:
        return {k: v for k, v in values.items() if k not in ignore}

    return TrainResult(folder, manifest) if kept(manifest.params) == kept(params) else None

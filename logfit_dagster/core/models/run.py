"""Train a model family from a spec file, in a process of its own, with only torch,
transformers and numpy installed (a bare GPU machine):

    python -m logfit_dagster.core.models.run SPEC.json

The spec (written by :func:`write_spec`) names the family, its params, the artifact folder, the
device and the data files. Progress goes to stderr and the outcome to stdout as JSON. Killed and
started again with the same spec, a family that checkpoints continues where it stopped. Data
that cannot train a model (one class, too few sessions) ends the process with code 3 and
``training_error.json`` in the output folder, saying why. The ``trainer`` resource launches the
same training through Dagster Pipes with :mod:`logfit_dagster.training_process`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.models.base import Throttle, format_progress, train

#: written into the output folder when the data cannot train a model: what and why
ERROR_FILE = "training_error.json"


def _write_part(value, path: Path) -> dict:
    """One piece of training data as a file: frames as parquet, plain data as JSON."""
    if hasattr(value, "to_parquet"):
        value.to_parquet(path.with_suffix(".parquet"))
        return {"parquet": path.with_suffix(".parquet").name}
    path.with_suffix(".json").write_text(json.dumps(value))
    return {"json": path.with_suffix(".json").name}


def _read_part(stored: dict, folder: Path):
    if "parquet" in stored:
        import pandas as pd

        return pd.read_parquet(folder / stored["parquet"])
    return json.loads((folder / stored["json"]).read_text())


def write_spec(
    folder: Path, family: str, data, params: dict, output: Path, device: str = "auto"
) -> Path:
    """Write ``data`` and the spec into ``folder``; returns the spec's path.

    ``data`` is a frame, a tuple of frames, or plain JSON-able data (a dict of lists).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, tuple):
        parts = {"tuple": [_write_part(v, folder / f"data_{i}") for i, v in enumerate(data)]}
    else:
        parts = _write_part(data, folder / "data")
    spec = {
        "family": family,
        "params": params,
        "output": str(output),
        "device": device,
        "data": parts,
    }
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def read_spec(path: Path) -> tuple[dict, object]:
    path = Path(path)
    spec = json.loads(path.read_text())
    stored = spec["data"]
    if "tuple" in stored:
        data = tuple(_read_part(part, path.parent) for part in stored["tuple"])
    else:
        data = _read_part(stored, path.parent)
    return spec, data


def run_spec(path: Path, report=None, log=None, every: float = 5.0) -> dict:
    """Train what the spec says; ``log(line)`` gets progress (at most every ``every`` seconds),
    ``report(dict)`` the result."""
    spec, data = read_spec(path)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()

    def progress(step: int, total: int, **metrics) -> None:
        log(f"{spec['family']}: {format_progress(step, total, **metrics)}")

    error = Path(spec["output"]) / ERROR_FILE
    error.unlink(missing_ok=True)
    try:
        result = train(
            spec["family"],
            data,
            spec["params"],
            Path(spec["output"]),
            Throttle(progress, seconds=every),
            device=spec.get("device"),
        )
    except LogfitError as exc:  # bad data: said in a file the launcher reads, then raised
        error.parent.mkdir(parents=True, exist_ok=True)
        error.write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise
    outcome = {
        "family": spec["family"],
        "folder": str(result.folder),
        "metrics": result.metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if report is not None:
        report(outcome)
    return outcome


def _terminal_line(line: str) -> None:
    width = shutil.get_terminal_size((120, 20)).columns - 1
    sys.stderr.write("\r" + line[:width].ljust(width))
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m logfit_dagster.core.models.run SPEC.json", file=sys.stderr)
        return 2
    # progress on stderr: one line rewritten in place on a terminal, plain lines otherwise
    terminal = sys.stderr.isatty()
    try:
        outcome = run_spec(
            Path(argv[0]), log=_terminal_line if terminal else None, every=0.5 if terminal else 5.0
        )
    except LogfitError as exc:
        print(f"not trained: {exc}", file=sys.stderr)
        return 3
    if terminal:
        sys.stderr.write("\n")
    print(json.dumps(outcome, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

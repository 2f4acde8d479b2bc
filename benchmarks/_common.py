"""Helpers for benchmarks: where the shared data is, where results go."""

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def shared_data() -> Path:
    path = Path(os.environ.get("LOGFIT_SHARED_DATA") or ROOT.parent / "shared" / "data")
    if not path.is_dir():
        raise SystemExit(f"shared data not found at {path}; set LOGFIT_SHARED_DATA")
    return path


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def recorded_labels():
    """The recorded Claude labels of ../shared/data/llm-labels as one frame:
    ``source``, ``raw``, ``label``, ``reason``."""
    import pandas as pd

    records = []
    for path in sorted((shared_data() / "llm-labels").glob("*.jsonl")):
        records += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return pd.DataFrame(
        {
            "source": [r["system"] for r in records],
            "raw": [r["raw_line"] for r in records],
            "label": [r["label"] for r in records],
            "reason": [r.get("reason", "") for r in records],
        }
    )

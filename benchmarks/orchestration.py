"""Wall time of the whole default lineage (the README's main command) by executor, and of a
no-op re-run when nothing changed.

Each full run starts from an empty data folder with the project's own ``sources.yaml`` (the
embedded synthetic default) and its own Dagster instance, and runs ``logfit materialize`` in a
fresh process, as a user would. The no-op re-run repeats the command on the same folder; its
wall time includes starting Python and importing Dagster, which the command's own ``total``
(also reported) does not.

    python benchmarks/orchestration.py -> benchmarks/results/orchestration.{json,md}
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_results  # noqa: E402

NOOP_REPEATS = 3


def materialize(workdir: Path, *extra: str, start_method: str = "forkserver") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "LOGFIT_"))}
    env["LOGFIT_LABELER"] = "rule"
    env["LOGFIT_START_METHOD"] = start_method
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", *extra],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"logfit materialize {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    total = float(re.search(r"total: ([\d.]+)s", done.stdout).group(1))
    skipped = re.search(r"up to date, not run: (.*) \(--force", done.stdout)
    return {
        "wall_seconds": round(wall, 2),
        "command_total_seconds": total,
        "not_run": skipped.group(1).split(", ") if skipped else [],
    }


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = [
            ("in_process", "forkserver", "in-process"),
            ("multiprocess", "forkserver", "multiprocess (forkserver, code preloaded; default)"),
            ("multiprocess", "spawn", "multiprocess (spawn: a fresh interpreter per step)"),
        ]
        for executor, start_method, label in variants:
            workdir = Path(tmp) / f"{executor}-{start_method}"
            workdir.mkdir()
            shutil.copy(ROOT / "sources.yaml", workdir / "sources.yaml")
            full = materialize(workdir, "--executor", executor, start_method=start_method)
            rows.append({"run": f"full lineage, {label}", **full})
            if executor == "in_process":
                for i in range(NOOP_REPEATS):
                    noop = materialize(workdir)
                    rows.append({"run": f"no-op re-run {i + 1}", **noop})
    sources = len(yaml.safe_load((ROOT / "sources.yaml").read_text())["sources"])
    table = ["| run | wall s | command total s | not run |", "|---|---|---|---|"]
    for row in rows:
        table.append(
            f"| {row['run']} | {row['wall_seconds']} | {row['command_total_seconds']} | "
            f"{len(row['not_run'])} jobs/partitions |"
        )
    markdown = (
        f"# Orchestration wall time ({os.cpu_count()} cores)\n\n"
        f"`logfit materialize` on the embedded default ({sources} synthetic sources): per source "
        "the lineage job, then the line classifier, then scoring per source.\n\n"
        + "\n".join(table)
        + "\n"
    )
    write_results("orchestration", {"runs": rows}, markdown)


if __name__ == "__main__":
    main()

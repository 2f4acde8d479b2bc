"""Wall and CPU time of the README's main command (`logfit materialize` on the embedded default),
where the time goes step by step, and a no-op re-run; optionally beside another revision.

Each full run starts from an empty data folder with the project's own ``sources.yaml`` (the
embedded synthetic default) and its own Dagster instance, and runs ``logfit materialize`` in a
fresh process with its defaults, as a user would. CPU is the user and system time of the command
and every process it waited for (its workers). The steps' start and end come from the run's own
Dagster instance. The no-op re-run repeats the command on the same folder; its wall time
includes starting Python and importing Dagster, which the command's own ``total`` does not.

``--against REV`` also runs the same command with the code of another revision (a git worktree
of it, first on ``PYTHONPATH``, so the same installed libraries), alternating with this one
(``--pairs`` times each, this version first): on a machine whose speed drifts, only runs side by
side compare.

    python benchmarks/orchestration.py [--against REV] [--pairs N]
        -> benchmarks/results/orchestration.{json,md}
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_results  # noqa: E402

NOOP_REPEATS = 3


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def materialize(workdir: Path, code: Path | None = None) -> dict:
    """One ``logfit materialize`` in ``workdir``, with ``code``'s package first when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "LOGFIT_"))}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"logfit materialize failed in {workdir}:\n{done.stderr[-3000:]}")
    total = float(re.search(r"total: ([\d.]+)s", done.stdout).group(1))
    skipped = re.search(r"up to date, not run: (.*) \(--force", done.stdout)
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "command_total_seconds": total,
        "not_run": skipped.group(1).split(", ") if skipped else [],
    }


def steps(workdir: Path) -> list[dict]:
    """Every step of the runs in ``workdir``'s instance: its start after the first one, and its
    seconds."""
    code = (
        "import json, dagster as dg\n"
        "instance = dg.DagsterInstance.get()\n"
        "rows = []\n"
        "for run in instance.get_runs():\n"
        "    part = run.tags.get('dagster/partition', '')\n"
        "    for s in instance.get_run_step_stats(run.run_id):\n"
        "        if s.start_time and s.end_time:\n"
        "            rows.append([s.step_key, part, s.start_time, s.end_time])\n"
        "print(json.dumps(rows))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DAGSTER_HOME": str(workdir / "data" / "dagster_home")},
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout)
    first = min(r[2] for r in rows)
    return sorted(
        (
            {
                "step": step,
                "source": part or "(all sources)",
                "start": round(start - first, 1),
                "seconds": round(end - start, 1),
            }
            for step, part, start, end in rows
        ),
        key=lambda r: r["start"],
    )


def full_run(tmp: Path, name: str, code: Path | None) -> tuple[dict, Path]:
    workdir = tmp / name
    workdir.mkdir()
    shutil.copy((code or ROOT) / "sources.yaml", workdir / "sources.yaml")
    return materialize(workdir, code), workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another git revision, run side by side with this one")
    parser.add_argument("--pairs", type=int, default=1, help="runs of each version (default 1)")
    args = parser.parse_args()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    rows, timeline = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        other = None
        if args.against:
            other = tmp / "against"
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(other), args.against],
                cwd=ROOT,
                check=True,
            )
        try:
            for i in range(args.pairs):
                run, workdir = full_run(tmp, f"this-{i}", None)
                rows.append({"run": f"full lineage, {head} (this version)", **run})
                if i == 0:
                    timeline = steps(workdir)
                    for j in range(NOOP_REPEATS):
                        rows.append({"run": f"no-op re-run {j + 1}", **materialize(workdir)})
                if other is not None:
                    run, _ = full_run(tmp, f"against-{i}", other)
                    rows.append({"run": f"full lineage, {args.against}", **run})
        finally:
            if other is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT)
    table = [
        "| run | wall s | CPU s | command total s | not run |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        table.append(
            f"| {row['run']} | {row['wall_seconds']} | {row['cpu_seconds']} | "
            f"{row['command_total_seconds']} | {len(row['not_run'])} runs |"
        )
    step_table = ["| start s | seconds | source | step |", "|---:|---:|---|---|"]
    step_table += [
        f"| {s['start']} | {s['seconds']} | {s['source']} | {s['step']} |" for s in timeline
    ]
    markdown = (
        f"# The README's main command: wall and CPU time ({os.cpu_count()} cores)\n\n"
        "`logfit materialize` on the embedded default from an empty data folder, its defaults "
        "(every run in a worker process, one per core), in a fresh process; CPU: the command and "
        "its workers. Runs of two versions alternate, one after the other.\n\n"
        + "\n".join(table)
        + f"\n\nThe steps of the first run of {head} (start after the first step, seconds; two "
        "workers, so two steps at a time):\n\n" + "\n".join(step_table) + "\n"
    )
    write_results("orchestration", {"runs": rows, "steps": timeline}, markdown)


if __name__ == "__main__":
    main()

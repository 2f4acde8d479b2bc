"""The whole default lineage on big sources: peak memory and seconds of every step.

For each size given (default 1M and 4M lines) a registry of two sources: ``big``, a `files`
source of synthetic HDFS lines (sessions by block id, every block labelled as HDFS_v1's
``anomaly_label.csv`` labels them; the files are written before the clock starts), and
``synth_bgl`` (the default's 10,000 BGL lines), so that the line model has two sources to learn
and hold out. Then ``logfit materialize`` as a user runs it: rule labels, every model family of
the default selection with the default budgets, both cores, the multiprocess executor (one
process per step).

While it runs, every process under the command is sampled four times a second: its peak RSS
(``VmHWM``, exact however short the peak) is kept by process id, and each step's process id is
read back from Dagster's own event log (every event a step's process wrote). The table gives, per
step, its peak RSS over the runs that executed it and its seconds on ``big``'s partition. Then
the same command with ``--executor in_process`` (every step in the command's own
process), whose peak is the whole lineage's in one process.

    python benchmarks/lineage_memory.py [--sizes 1000000 4000000]
        ->  benchmarks/results/lineage_memory.{json,md}
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from benchmarks.ingest_throughput import write_big_hdfs  # noqa: E402


def _hwm_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return None


class _Sampler(threading.Thread):
    """The peak RSS of every process under ``root``, by process id."""

    def __init__(self, root: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peaks: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                pids = [self.root] + [p.pid for p in psutil.Process(self.root).children(True)]
            except psutil.NoSuchProcess:
                return
            for pid in pids:
                peak = _hwm_mb(pid)
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))
            time.sleep(self.every)


def _steps(home: Path) -> list[dict]:
    """Every step of every run: its run's partition, its key, process id and seconds."""
    import dagster as dg

    rows = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            # a step's events come from its own process (the orchestrator's own events, such
            # as STEP_START, from the run's): every process id a step's events name
            pids: dict[str, set] = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is not None and event.step_key and event.pid is not None:
                    pids.setdefault(event.step_key, set()).add(event.pid)
            for stats in instance.get_run_step_stats(run.run_id):
                rows.append(
                    {
                        "partition": run.tags.get("dagster/partition", ""),
                        "step": stats.step_key,
                        "pids": pids.get(stats.step_key, set()),
                        "seconds": (stats.end_time or 0) - (stats.start_time or 0),
                        "status": stats.status.value if stats.status else "",
                    }
                )
    return rows


def run_size(size: int, work: Path, executor: str = "multiprocess") -> dict:
    log = work / f"big_{size}.log"
    labels = write_big_hdfs(log, size)
    run_dir = work / f"run_{size}"
    run_dir.mkdir()
    registry = run_dir / "sources.yaml"
    registry.write_text(
        "sources:\n"
        f"  - {{name: big, origin: files, path: {log}, format: HDFS, session: {{by: block_id}},"
        f" ground_truth: {{provider: hdfs_blocks, path: {labels}}}}}\n"
        "  - {name: synth_bgl, origin: synthetic, kind: bgl, lines: 10000, seed: 3}\n"
    )
    env = {
        **os.environ,
        "LOGFIT_DATA_DIR": str(run_dir / "data"),
        "LOGFIT_SOURCES": str(registry),
        "LOGFIT_EXECUTOR": "multiprocess",
    }
    logfit = str(Path(sys.executable).parent / "logfit")
    start = time.perf_counter()
    with open(run_dir / "materialize.log", "w") as out:
        process = subprocess.Popen(
            [logfit, "materialize", "--executor", executor], env=env, stdout=out, stderr=out
        )
        sampler = _Sampler(process.pid)
        sampler.start()
        code = process.wait()
        sampler.done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    tail = (run_dir / "materialize.log").read_text()[-3000:]
    steps = _steps(run_dir / "data" / "dagster_home")
    per_step: dict[str, dict] = {}
    for row in steps:
        entry = per_step.setdefault(
            row["step"], {"peak RSS MB": 0.0, "big s": None, "status": set()}
        )
        peak = max((sampler.peaks.get(p, 0.0) for p in row["pids"] - {process.pid}), default=0.0)
        entry["peak RSS MB"] = max(entry["peak RSS MB"], peak)
        entry["status"].add(row["status"])
        if row["partition"] in ("big", ""):
            entry["big s"] = round(row["seconds"], 1)
    step_pids = {p for row in steps for p in row["pids"]}
    driver = sampler.peaks.get(process.pid, 0.0)
    others = max(
        (v for p, v in sampler.peaks.items() if p not in step_pids | {process.pid}), default=0.0
    )
    result = {
        "lines": size,
        "executor": executor,
        "exit": code,
        "seconds": round(seconds, 1),
        "peak RSS MB (any process)": round(max(sampler.peaks.values(), default=0.0)),
        "driver peak RSS MB": round(driver),
        "other processes peak RSS MB": round(others),
        "steps": {
            step: {
                "peak RSS MB": round(v["peak RSS MB"]),
                "big s": v["big s"],
                "status": ",".join(sorted(v["status"])),
            }
            for step, v in sorted(per_step.items(), key=lambda kv: -kv[1]["peak RSS MB"])
        },
        "summary_tail": tail,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "summary_tail"}, indent=1))
    log.unlink()
    labels.unlink()
    shutil.rmtree(run_dir)
    return result


def main() -> None:
    import pandas as pd

    sizes = [1_000_000, 4_000_000]
    if "--sizes" in sys.argv:
        sizes = [int(a) for a in sys.argv[sys.argv.index("--sizes") + 1 :]]
    work = Path(tempfile.mkdtemp(prefix="logfit-lineage-"))
    try:
        results = [run_size(size, work) for size in sizes]
        # every step in the command's one process (the default for a small source; ``auto``
        # gives these sizes a process per step), which then holds the peak
        whole = [run_size(size, work, "in_process") for size in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = sorted({s for r in results for s in r["steps"]})
    table = pd.DataFrame(
        [
            {
                "step": step,
                **{
                    f"{r['lines']:,} lines: {what}": r["steps"].get(step, {}).get(key)
                    for r in results
                    for what, key in (("peak MB", "peak RSS MB"), ("s", "big s"))
                },
            }
            for step in steps
        ]
    ).sort_values(f"{results[-1]['lines']:,} lines: peak MB", ascending=False)
    totals = pd.DataFrame(
        [
            {
                "lines": f"{r['lines']:,}",
                "executor": r["executor"],
                "exit": r["exit"],
                "seconds": r["seconds"],
                "peak RSS MB, any process": r["peak RSS MB (any process)"],
            }
            for r in results + whole
        ]
    )
    markdown = (
        "# The whole default lineage on big sources: peak RSS and seconds per step\n\n"
        "`logfit materialize` over a registry of `big` (a `files` source of synthetic HDFS "
        "lines, sessions by block id, every block labelled) and `synth_bgl` (10,000 lines): "
        "rule labels, every model family of the default selection with its default budget, "
        "the multiprocess executor (one process per step), both cores. Peak RSS is each step "
        "process's VmHWM sampled four times a second, matched to its step by the process ids of its "
        "events; seconds are those of `big`'s run (or the unpartitioned one). The default "
        "executor (`auto`) runs sources this big so; `--executor in_process` (every step in the "
        "command's one process, the default for a smaller source) gives the peak of the whole "
        "lineage in one process.\n\n"
        + totals.to_markdown(index=False)
        + "\n\n"
        + table.to_markdown(index=False)
        + "\n"
    )
    write_results("lineage_memory", {"results": results, "in_process": whole}, markdown)


if __name__ == "__main__":
    main()

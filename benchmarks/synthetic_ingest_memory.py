"""Peak memory of a big `synthetic` source's ingest: generated and written a chunk at a time.

``logfit materialize big --job ingest_job`` on a registry of one synthetic HDFS source of each
size given (default 2M lines), in its own data folder, with the default executor (``auto``: a
source this big runs a process per step): wall time, the peak RSS of the largest of the
command's processes (its own included: it generates the source before its first run), and the
seconds of each step; beside it, a ``files`` source of the same lines, so that what the
generation adds is visible.

    python benchmarks/synthetic_ingest_memory.py [--sizes 2000000]
        ->  benchmarks/results/synthetic_ingest_memory.{json,md}
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402


def _run(entry: str, work: Path) -> dict:
    """``logfit materialize big --job ingest_job`` in a child process of its own; its wall
    time and peak RSS (the grandchildren's peak, read in that child)."""
    probe = (
        "import json, os, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'peak_rss_mb': "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    registry = work / "sources.yaml"
    registry.write_text(f"sources:\n  - {entry}\n")
    env = {**os.environ, "LOGFIT_DATA_DIR": str(work / "data"), "LOGFIT_SOURCES": str(registry)}
    logfit = str(Path(sys.executable).parent / "logfit")
    out = subprocess.run(
        [sys.executable, "-c", probe, logfit, "materialize", "big", "--job", "ingest_job"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    import dagster as dg

    with dg.DagsterInstance.from_config(str(work / "data" / "dagster_home")) as instance:
        run = instance.get_runs(limit=1)[0]
        steps = {
            s.step_key: round(s.end_time - s.start_time, 1)
            for s in instance.get_run_step_stats(run.run_id)
        }
    return {
        "seconds": round(result["seconds"], 1),
        "peak RSS MB": round(result["peak_rss_mb"]),
        **{f"{k} s": v for k, v in steps.items()},
    }


def main() -> None:
    import pandas as pd

    sizes = [2_000_000]
    if "--sizes" in sys.argv:
        sizes = [int(a) for a in sys.argv[sys.argv.index("--sizes") + 1 :]]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="logfit-synth-"))
    try:
        for size in sizes:
            synthetic = work / f"synthetic_{size}"
            synthetic.mkdir()
            row = _run(
                f"{{name: big, origin: synthetic, kind: hdfs, lines: {size}, seed: 1}}", synthetic
            )
            rows.append({"source": "synthetic (generated in the run)", "lines": size, **row})
            generated = next((synthetic / "data").rglob("big.log"))
            files = work / f"files_{size}"
            files.mkdir()
            log = files / "big.log"
            shutil.copy(generated, log)
            shutil.rmtree(synthetic)
            row = _run(
                f"{{name: big, origin: files, path: {log}, format: HDFS,"
                " session: {by: block_id}}",
                files,
            )
            rows.append({"source": "files (the same lines)", "lines": size, **row})
            shutil.rmtree(files)
            print(rows[-2:], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows).assign(lines=lambda d: d["lines"].map("{:,}".format))
    markdown = (
        "# A big synthetic source's ingest: peak memory\n\n"
        "`logfit materialize big --job ingest_job` with the default executor (`auto`: a source "
        "this big runs a process per step), a synthetic HDFS source generated and written "
        "250,000 lines at a time (by the command, before its first run), beside a `files` "
        "source of the same lines. Peak RSS: the largest of the command's processes, its own "
        "included.\n\n" + table.to_markdown(index=False) + "\n"
    )
    write_results("synthetic_ingest_memory", {"rows": rows}, markdown)


if __name__ == "__main__":
    main()

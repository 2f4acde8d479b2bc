"""Ingest throughput: read, header parse, mask, mine templates, write parquet, on one core.

Measured on the real HDFS_20000.log and on a 1M-line synthetic HDFS source, beside the bare
drain3 ``TemplateMiner.add_log_message`` loop over the same lines' content. Each measurement runs
in its own process so that its peak memory (max RSS) is its own.

Then the path a Dagster run takes: ``logfit materialize <source> --job ingest_job`` (raw_logs,
parsed_logs, log_templates, sessions, ground_truth_labels, dataset_splits) on synthetic HDFS
sources of each size given (default 1M, 4M and 11M lines, HDFS_v1's size; the files are written
before the clock starts), both cores, with the wall time, the peak RSS of the command's
processes and the seconds of each step.

    python benchmarks/ingest_throughput.py [--sizes 1000000 4000000 11000000]
        ->  benchmarks/results/ingest_throughput.{json,md}
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402


def _ours(path: str) -> dict:
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    import drain3.drain  # noqa: F401  (imported before the clock starts, as the bare loop's is)

    from logfit_dagster.core.formats import get_line_format
    from logfit_dagster.core.ingest import ingest_file_streaming
    from logfit_dagster.core.templates import TemplateMiner, profile_for

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        miner = TemplateMiner(profile_for("HDFS"))
        stats = ingest_file_streaming(
            Path(path), get_line_format("HDFS"), miner, Path(tmp) / "parsed.parquet"
        )
        elapsed = time.perf_counter() - start
    return {
        "lines": stats.lines,
        "seconds": elapsed,
        "templates": stats.templates,
        "distinct_forms_per_batch_sum": stats.distinct_forms,
    }


def _bare(path: str) -> dict:
    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    from logfit_dagster.core.masking import DEFAULT_MASKS

    config = TemplateMinerConfig()
    config.masking_instructions = [
        MaskingInstruction(r.pattern, r.token.strip("<>")) for r in DEFAULT_MASKS
    ]
    config.drain_sim_th, config.drain_depth = 0.5, 4
    miner = TemplateMiner(config=config)
    start = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            content = line.rstrip("\n").split(": ", 1)[-1]
            miner.add_log_message(content)
            n += 1
    elapsed = time.perf_counter() - start
    return {"lines": n, "seconds": elapsed, "templates": len(miner.drain.clusters)}


def _child(kind: str, path: str) -> None:
    result = (_ours if kind == "ours" else _bare)(path)
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across exec.
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    result["peak_rss_mb"] = hwm_kb / 1024
    print(json.dumps(result))


def _measure(kind: str, path: Path) -> dict:
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, __file__, "--child", kind, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["lines_per_s"] = round(result["lines"] / result["seconds"])
    return result


def _assets_child(log: str, work: str, labels: str) -> None:
    """Run the ingest job of a files source over ``log``, its blocks labelled by ``labels``;
    print wall time and peak RSS."""
    import resource

    work_dir = Path(work)
    registry = work_dir / "sources.yaml"
    registry.write_text(
        f"sources:\n  - {{name: big, origin: files, path: {log}, format: HDFS,"
        f" session: {{by: block_id}}, ground_truth: {{provider: hdfs_blocks, path: {labels}}}}}\n"
    )
    env = {
        **__import__("os").environ,
        "LOGFIT_DATA_DIR": str(work_dir / "data"),
        "LOGFIT_SOURCES": str(registry),
    }
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "logfit"), "materialize", "big", "--job", "ingest_job"],
        env=env,
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


def write_big_hdfs(path: Path, size: int, chunk: int = 1_000_000) -> Path:
    """A synthetic HDFS log of ``size`` lines, generated a million lines at a time (each with its
    own seed, so the blocks of one chunk are not those of another) and appended to ``path``;
    beside it, HDFS_v1's ``anomaly_label.csv`` layout with a label for every block (a block is
    anomalous when one of its lines is). Returns the label file."""
    import re

    from logfit_dagster.core.synthetic import generate

    labels = path.with_name(path.stem + "_anomaly_label.csv")
    block = re.compile(r"blk_-?\d+")
    with open(path, "w", encoding="utf-8") as log, open(labels, "w", encoding="utf-8") as out:
        out.write("BlockId,Label\n")
        for seed, start in enumerate(range(0, size, chunk), start=1):
            part = generate("hdfs", min(chunk, size - start), seed)
            log.write("\n".join(part.lines) + "\n")
            anomalous: dict[str, bool] = {}
            for line, label in zip(part.lines, part.line_labels, strict=True):
                for found in block.findall(line):
                    anomalous[found] = anomalous.get(found, False) or label == 1
            out.writelines(
                f"{b},{'Anomaly' if bad else 'Normal'}\n" for b, bad in anomalous.items()
            )
    return labels


def _step_seconds(home: Path) -> dict:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        return {
            s.step_key: round(s.end_time - s.start_time, 1)
            for s in instance.get_run_step_stats(run.run_id)
        }


def through_assets(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for size in sizes:
        log = work / f"synth_{size}.log"
        labels = write_big_hdfs(log, size)
        run_dir = work / f"run_{size}"
        run_dir.mkdir()
        out = subprocess.run(
            [sys.executable, __file__, "--assets-child", str(log), str(run_dir), str(labels)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        steps = _step_seconds(run_dir / "data" / "dagster_home")
        rows.append(
            {
                "lines": size,
                "seconds": round(result["seconds"], 1),
                "lines/s": round(size / result["seconds"]),
                "peak RSS MB": round(result["peak_rss_mb"]),
                **{f"{step} s": seconds for step, seconds in steps.items()},
            }
        )
        print(rows[-1], flush=True)
        rows[-1]["blocks"] = sum(1 for _ in open(labels)) - 1
        log.unlink()
        labels.unlink()
        shutil.rmtree(run_dir)
    return rows


def main() -> None:
    from logfit_dagster.core.ingest import write_synthetic
    from logfit_dagster.core.synthetic import generate

    sizes = [1_000_000, 4_000_000, 11_000_000]
    if "--sizes" in sys.argv:
        sizes = [int(a) for a in sys.argv[sys.argv.index("--sizes") + 1 :]]

    data = shared_data()
    work = Path(tempfile.mkdtemp(prefix="logfit-bench-"))
    synthetic = work / "synth_1m.log"
    write_synthetic(generate("hdfs", 1_000_000, 1), synthetic, work / "labels.parquet")
    inputs = {
        "HDFS_20000.log (real)": data / "hdfs" / "raw" / "HDFS_20000.log",
        "synthetic HDFS, 1M lines": synthetic,
    }
    rows = []
    for name, path in inputs.items():
        ours = _measure("ours", path)
        bare = _measure("bare", path)
        rows.append(
            {
                "input": name,
                "lines": ours["lines"],
                "logfit lines/s": ours["lines_per_s"],
                "logfit peak RSS MB": round(ours["peak_rss_mb"]),
                "bare drain3 lines/s": bare["lines_per_s"],
                "bare peak RSS MB": round(bare["peak_rss_mb"]),
                "speed-up": round(ours["lines_per_s"] / bare["lines_per_s"], 1),
                "templates (logfit / bare)": f"{ours['templates']} / {bare['templates']}",
            }
        )
    import pandas as pd

    assets = through_assets(sizes, work)
    markdown = (
        "# Ingest throughput, one core (taskset -c 0)\n\n"
        "logfit: read + header parse + mask + Drain3 on distinct forms + parquet write, "
        "streamed in 8 MB batches, in two passes (template ids, then each line's final "
        "template). bare: drain3 TemplateMiner.add_log_message per line "
        "(masking included, no parsing or writing).\n\n"
        + pd.DataFrame(rows).to_markdown(index=False)
        + "\n\n## Through the assets: `logfit materialize big --job ingest_job`, both cores\n\n"
        "A `files` source of synthetic HDFS lines, sessions by block id, every block labelled "
        "in an `anomaly_label.csv` (ground truth `hdfs_blocks`, as HDFS_v1); wall time of the "
        "command, the peak RSS of its largest process, and each step's seconds. The assets "
        "stream: raw_logs, parsed_logs, sessions and ground_truth_labels are written row group "
        "by row group, and sessions are grouped in hash buckets merged in order.\n\n"
        + pd.DataFrame(assets)
        .assign(lines=lambda d: d["lines"].map("{:,}".format))
        .to_markdown(index=False)
        + "\n"
    )
    write_results("ingest_throughput", {"rows": rows, "through_assets": assets}, markdown)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--assets-child":
        _assets_child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()

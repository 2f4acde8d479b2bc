"""How fast a full Loghub data set is fetched, verified and unpacked, apart from the link.

A synthetic archive laid out like HDFS_v1.zip (HDFS.log of HDFS-like lines, deflated as Loghub's
archives are, and preprocessed/anomaly_label.csv) is served by a local server that speaks
Zenodo's REST API (tests/test_loghub_full.py), once straight through and once with the
connection dropped half-way. Measured: download + MD5 verification MB/s over loopback (what
the machine costs on top of the link), unpack MB/s of log written, and peak memory.

    python benchmarks/download_throughput.py [MB of log, default 400]
        -> benchmarks/results/download_throughput.{json,md}
"""

import io
import random
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from logfit_dagster.core.download import download, unpack, zenodo_record  # noqa: E402
from tests.test_loghub_full import RECORD, FakeZenodo  # noqa: E402


def synthetic_hdfs_zip(megabytes: int) -> tuple[bytes, int]:
    rng = random.Random(1)
    lines, size = [], 0
    while size < megabytes * 2**20:
        block = rng.randrange(-(10**18), 10**18)
        line = (
            f"0811{rng.randrange(10, 12)} {rng.randrange(200000, 235959)} {rng.randrange(1, 999)} "
            f"INFO dfs.DataNode$PacketResponder: Received block blk_{block} of size "
            f"{rng.randrange(1, 67108864)} from /10.250.{rng.randrange(255)}.{rng.randrange(255)}"
        )
        lines.append(line)
        size += len(line) + 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as bundle:
        bundle.writestr("HDFS.log", "\n".join(lines) + "\n")
        bundle.writestr("preprocessed/anomaly_label.csv", "BlockId,Label\n")
    return buffer.getvalue(), size


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    archive, log_bytes = synthetic_hdfs_zip(megabytes)
    rows = []
    with FakeZenodo() as zenodo, tempfile.TemporaryDirectory() as tmp:
        zenodo.files["HDFS_v1.zip"] = archive
        remote = zenodo_record(zenodo.url, RECORD)["HDFS_v1.zip"]
        for case in ("straight", "dropped half-way"):
            target = Path(tmp) / case.replace(" ", "_") / "HDFS_v1.zip"
            if case != "straight":
                zenodo.drop_after["HDFS_v1.zip"] = len(archive) // 2
            asked = len(zenodo.downloads("HDFS_v1.zip"))
            started = time.perf_counter()
            download(remote, target, backoff_s=0)
            fetched = time.perf_counter() - started
            started = time.perf_counter()
            unpack(target, target.parent / "HDFS_v1")
            unpacked = time.perf_counter() - started
            rows.append(
                {
                    "case": case,
                    "archive_mb": round(len(archive) / 2**20, 1),
                    "log_mb": round(log_bytes / 2**20, 1),
                    "requests": len(zenodo.downloads("HDFS_v1.zip")) - asked,
                    "download_verify_s": round(fetched, 2),
                    "download_verify_mb_s": round(len(archive) / 2**20 / fetched, 1),
                    "unpack_s": round(unpacked, 2),
                    "unpack_log_mb_s": round(log_bytes / 2**20 / unpacked, 1),
                }
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = pd.DataFrame(rows)
    hdfs_v1 = 1.47 * 1024 / table["unpack_log_mb_s"].iloc[0]
    markdown = (
        "# Full data sets: download, verification and unpacking over loopback\n\n"
        + table.to_markdown(index=False)
        + f"\n\nPeak memory of the process (the archive is built in memory first): {peak:,.0f} MB."
        f"\nAt this unpack speed HDFS_v1's 1.47 GiB log unpacks in about {hdfs_v1:.0f} s; the "
        "download itself takes archive size / link speed (186 MB at 10 MB/s: about 19 s).\n"
    )
    write_results(
        "download_throughput",
        {"rows": rows, "peak_rss_mb": round(peak), "hdfs_v1_unpack_s_est": round(hdfs_v1)},
        markdown,
    )


if __name__ == "__main__":
    main()

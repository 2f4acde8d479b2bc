"""Scoring throughput of ``logfit classify``: real files and a 1M-line synthetic source.

A model is trained on the recorded Claude labels (the asset's default parameters), exported to
JSON, and loaded as ``logfit classify`` loads it. Each file is scored end to end as the command
does (read, shape column-wise, score each distinct shape once, count LOOK), writing LOOK lines to
/dev/null; the best of three runs is reported, with a fresh scorer per run (nothing cached).

    python benchmarks/classify_throughput.py -> benchmarks/results/classify_throughput.{json,md}
"""

import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, shared_data, write_results  # noqa: E402
from logfit_dagster.core.classify import classify_file  # noqa: E402
from logfit_dagster.core.line_model import (  # noqa: E402
    LineModelParams,
    LineScorer,
    export_model,
    fit,
    training_rows,
)
from logfit_dagster.core.synthetic import generate  # noqa: E402


def main() -> None:
    data = shared_data()
    lines = recorded_labels()
    spec = export_model(fit(training_rows(lines), LineModelParams(C=1.0)))
    files = sorted((data / "loghub-2k").glob("*/*_2k.log"))
    files += [
        data / "hdfs" / "raw" / "HDFS_20000.log",
        data / "hdfs" / "raw" / "HDFS_5k_sampled_blocks.log",
    ]
    files += sorted((data / "llm-labels").glob("*_2k.log"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synth_hdfs_1m.log"
        log = generate("hdfs", 1_000_000, seed=7)
        synthetic.write_text("\n".join(log.lines) + "\n")
        for path in [*files, synthetic]:
            best = None
            for _ in range(3):
                with open(os.devnull, "w") as sink:
                    stats = classify_file(path, LineScorer(spec), look_out=sink)
                best = stats if best is None or stats.seconds < best.seconds else best
            rows.append(
                {
                    "file": path.name,
                    "lines": best.lines,
                    "distinct_shapes": best.distinct_shapes,
                    "look": best.look,
                    "seconds": round(best.seconds, 4),
                    "lines_per_second": round(best.lines_per_second),
                }
            )
    table = pd.DataFrame(rows)
    real = table[table["file"] != "synth_hdfs_1m.log"]
    summary = {
        "real_files": len(real),
        "real_lines": int(real["lines"].sum()),
        "real_lines_per_second": round(real["lines"].sum() / real["seconds"].sum()),
        "synthetic_1m_lines_per_second": int(table.iloc[-1]["lines_per_second"]),
    }
    markdown = (
        "# logfit classify throughput (best of 3, one process, this machine)\n\n"
        + table.to_markdown(index=False)
        + "\n\n"
        + "\n".join(f"- {k}: {v:,}" for k, v in summary.items())
        + "\n\nReference system's Rust scorer: 1.3 million lines/s.\n"
    )
    write_results("classify_throughput", {"files": rows, "summary": summary}, markdown)


if __name__ == "__main__":
    main()

"""Model selection time of the line classifier against the number of distinct training rows, in
one process and in a worker process per core (the default from ``PARALLEL_FROM_ROWS`` rows).

The asset's default grid (C 1 and 4, balanced classes, 50k word and 100k char n-grams, rows
weighted by the square root of their lines) by GroupKFold over sources, 5 folds, on 1k, 3k,
10k and 30k distinct rows. The recorded Claude labels of 20 sources give about 3,300 distinct
(source, shape, label) rows; the bigger sets add copies of them each given a random word (a
host name), so they are distinct rows of the same sources and labels. Also reported: the
out-of-fold LOOK F1 at each size (the sizes above 3k are copies: their F1 says little). The
workers cost seconds to start (each imports scikit-learn and the line model), which is why a
small selection stays in one process.

    python benchmarks/line_model_selection.py [sizes...]
        -> benchmarks/results/line_model_selection.{json,md}
"""

import os
import random
import string
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, write_results  # noqa: E402
from logfit_dagster.core.line_model import (  # noqa: E402
    PARALLEL_FROM_ROWS,
    LineModelParams,
    select_model,
    training_rows,
)

GRID = [LineModelParams(C=c) for c in (1.0, 4.0)]


def rows_of_size(lines: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """``size`` distinct rows: the recorded ones, sampled down or grown with host-name copies."""
    rng = random.Random(seed)
    base = training_rows(lines)
    if size <= len(base):
        return base.sample(n=size, random_state=seed).reset_index(drop=True)
    extra = []
    while len(base) + len(extra) < size:
        row = lines.iloc[rng.randrange(len(lines))]
        host = "".join(rng.choice(string.ascii_lowercase) for _ in range(7))
        extra.append(
            {"source": row["source"], "raw": f"{row['raw']} host={host}", "label": row["label"]}
        )
    grown = pd.concat([lines, pd.DataFrame(extra)], ignore_index=True)
    return training_rows(grown)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1_000, 3_000, 10_000, 30_000]
    lines = recorded_labels()
    workers = os.cpu_count() or 1
    results = []
    for size in sizes:
        rows = rows_of_size(lines, size)
        seconds = {}
        for n_jobs in (1, workers):
            started = time.perf_counter()
            selection = select_model(rows, GRID, max_folds=5, n_jobs=n_jobs)
            seconds[n_jobs] = time.perf_counter() - started
        results.append(
            {
                "distinct_rows": len(rows),
                "grid": len(GRID),
                "folds": selection.folds,
                "seconds_one_process": round(seconds[1], 2),
                f"seconds_{workers}_workers": round(seconds[workers], 2),
                "default": "workers" if len(rows) >= PARALLEL_FROM_ROWS else "one process",
                "best_C": selection.best.C,
                "cv_look_f1": round(selection.cv["f1"], 4),
            }
        )
        print(results[-1], flush=True)
    table = pd.DataFrame(results)
    markdown = (
        "# Line classifier model selection time vs distinct rows (2 C values x 5 folds)\n\n"
        f"{workers} CPUs; `default`: what `select_model` uses unasked (workers from "
        f"{PARALLEL_FROM_ROWS:,} distinct rows).\n\n" + table.to_markdown(index=False) + "\n"
    )
    write_results("line_model_selection", {"rows": results}, markdown)


if __name__ == "__main__":
    main()

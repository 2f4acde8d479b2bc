"""LOOK/SKIP line classifier quality on held-out sources, against the recorded Claude labels.

The 30,811 labels of 20 sources in ../shared/data/llm-labels; the model never sees a line of a
source it is scored on. Fixed parameters (the asset's defaults: C=1, balanced class weights,
50k word and 100k char n-grams, rows weighted by the square root of their lines), so no choice is tuned on the held-out sources. Two schemes:
GroupKFold with 5 folds (4 sources held out at a time) and leave-one-source-out (20 folds).
LOOK F1 is pooled over every held-out line; per-source F1 is listed too.

    python benchmarks/line_model_quality.py -> benchmarks/results/line_model_quality.{json,md}
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, write_results  # noqa: E402
from logfit_dagster.core.line_model import (  # noqa: E402
    LineModelParams,
    select_model,
    training_rows,
)

PARAMS = LineModelParams(C=1.0, class_weight="balanced")


def main() -> None:
    lines = recorded_labels()
    rows = training_rows(lines)
    results, per_source = {}, {}
    for scheme, folds in (("group_5_fold", 5), ("leave_one_source_out", 20)):
        started = time.perf_counter()
        selection = select_model(rows, [PARAMS], max_folds=folds)
        cv = selection.cv
        results[scheme] = {
            "folds": selection.folds,
            "f1": round(cv["f1"], 4),
            "precision": round(cv["precision"], 4),
            "recall": round(cv["recall"], 4),
            "average_precision": round(cv["average_precision"], 4),
            "macro_f1_over_sources": round(
                float(np.mean([m["f1"] for m in selection.per_source.values()])), 4
            ),
            "seconds": round(time.perf_counter() - started, 1),
        }
        per_source[scheme] = {s: round(m["f1"], 4) for s, m in selection.per_source.items()}
    table = pd.DataFrame(per_source).rename_axis("source").reset_index()
    markdown = (
        "# LOOK/SKIP line classifier on held-out sources (recorded Claude labels as truth)\n\n"
        f"{len(lines)} lines, {lines['source'].nunique()} sources, {len(rows)} distinct "
        "(source, shape, label) rows.\n\n"
        + pd.DataFrame(results).T.rename_axis("scheme").reset_index().to_markdown(index=False)
        + "\n\nPer held-out source, LOOK F1:\n\n"
        + table.to_markdown(index=False)
        + "\n\nReference system: 0.46 for this model family, 0.89 for a fine-tuned BERT-mini. "
        "The transformer and the cascade: line_transformer_quality.md.\n"
    )
    write_results("line_model_quality", {"results": results, "per_source": per_source}, markdown)


if __name__ == "__main__":
    main()

"""Is labelling each distinct line shape once safe? Measured on the recorded Claude labels.

For each of the 20 sources of ../shared/data/llm-labels (30,811 LOOK/SKIP labels that Claude
wrote in 50-line windows), lines are grouped by shape (``core/line_features.shape_column``, the
normalisation the line classifier uses). The recorded labeler plays the LLM of a ``distinct``
plan: it answers for one representative line per shape (the first occurrence), and every other
line of the shape takes that label. Reported per source and pooled:

- shapes, and the share of shapes (and of lines) whose recorded labels disagree within a shape;
- agreement of the propagated labels with the recorded ones: LOOK precision, recall, F1;
- requests a ``distinct`` plan needs at 50 representative lines a window, against ``windows``.

    python benchmarks/shape_label_agreement.py -> benchmarks/results/shape_label_agreement.{json,md}
"""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, write_results  # noqa: E402
from logfit_dagster.core.line_features import shape_column  # noqa: E402
from logfit_dagster.core.scores import confusion_counts, rates  # noqa: E402

WINDOW = 50


def per_source(frame: pd.DataFrame) -> dict:
    shapes, index = shape_column(pa.array(frame["raw"].tolist()))
    frame = frame.assign(shape=index)
    look = (frame["label"] == "LOOK").astype(int)
    mixed = frame.assign(look=look).groupby("shape")["look"].agg(["min", "max", "size"])
    mixed_shapes = mixed[mixed["min"] != mixed["max"]]
    representative = frame.groupby("shape", sort=False)["label"].first()
    propagated = (frame["shape"].map(representative) == "LOOK").astype(int)
    tp, fp, fn, tn = confusion_counts(look.to_numpy(), propagated.to_numpy())
    r = rates(tp, fp, fn, tn, empty=math.nan)
    return {
        "lines": len(frame),
        "shapes": len(shapes),
        "look_rate": round(float(look.mean()), 4),
        "shapes_with_mixed_labels": len(mixed_shapes),
        "lines_in_mixed_shapes": int(mixed_shapes["size"].sum()),
        "propagated_accuracy": r["accuracy"],
        "propagated_look_precision": r["precision"],
        "propagated_look_recall": r["recall"],
        "propagated_look_f1": r["f1"],
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "requests_windows": math.ceil(len(frame) / WINDOW),
        "requests_distinct": math.ceil(len(shapes) / WINDOW),
    }


def main() -> None:
    labels = recorded_labels()
    rows = []
    for source, frame in labels.groupby("source", sort=True):
        rows.append({"source": source, **per_source(frame.reset_index(drop=True))})
    table = pd.DataFrame(rows)
    tp, fp, fn = (int(table[c].sum()) for c in ("tp", "fp", "fn"))
    tn = int(table["tn"].sum())
    pooled = rates(tp, fp, fn, tn, empty=math.nan)
    summary = {
        "lines": int(table["lines"].sum()),
        "shapes": int(table["shapes"].sum()),
        "lines_in_mixed_shapes": int(table["lines_in_mixed_shapes"].sum()),
        "pooled_propagated_look_f1": pooled["f1"],
        "pooled_propagated_look_precision": pooled["precision"],
        "pooled_propagated_look_recall": pooled["recall"],
        "requests_windows": int(table["requests_windows"].sum()),
        "requests_distinct": int(table["requests_distinct"].sum()),
        "meets_0.97": bool(pooled["f1"] >= 0.97),
    }
    worst = table.sort_values("propagated_look_f1").head(5)[
        ["source", "propagated_look_f1", "shapes_with_mixed_labels", "lines_in_mixed_shapes"]
    ]
    shown = table.drop(columns=["tp", "fp", "fn", "tn"])
    markdown = (
        "# Labelling one line per shape: agreement with the recorded Claude labels\n\n"
        "The recorded labeler answers for the first line of each shape (the line classifier's "
        "normalisation); every other line of the shape takes its label. Requests at "
        f"{WINDOW} lines (windows) or {WINDOW} representative lines (distinct) a request.\n\n"
        + shown.round(4).to_markdown(index=False)
        + "\n\n"
        + pd.DataFrame([summary]).round(4).to_markdown(index=False)
        + "\n\nLowest propagated LOOK F1:\n\n"
        + worst.round(4).to_markdown(index=False)
        + "\n"
    )
    write_results(
        "shape_label_agreement",
        {"rows": table.replace({np.nan: None}).to_dict("records"), "summary": summary},
        markdown,
    )


if __name__ == "__main__":
    main()

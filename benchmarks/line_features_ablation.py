"""Which parts of the TF-IDF line classifier carry to log sources it was not trained on.

Variants of the features and of the row weights, each scored leave-one-source-out on the 20
recorded Claude label sets (pooled LOOK F1 at 0.5, average precision, macro F1, the worst
sources), and trained on all 20 then scored on BGL_2k against its alert labels: a system none of
the label sets covers (a proxy: an alert is not the same thing as a line worth a look, so read
its average precision more than its F1).

    python benchmarks/line_features_ablation.py -> benchmarks/results/line_features_ablation.{json,md}
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, shared_data, write_results  # noqa: E402
from logfit_dagster.core.line_features import HAND_FEATURES  # noqa: E402
from logfit_dagster.core.line_model import training_rows, weighted_scores  # noqa: E402
from logfit_dagster.core.models.line_transformer import message_of  # noqa: E402


def pipeline(variant: dict):
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    parts = []
    if variant.get("word"):
        parts.append(
            (
                "word",
                TfidfVectorizer(
                    token_pattern=r"(?u)\b\w\w+\b",
                    ngram_range=(1, 3),
                    sublinear_tf=True,
                    max_features=50_000,
                ),
                "normalized",
            )
        )
    if variant.get("char"):
        analyzer, low, high = variant["char"]
        parts.append(
            (
                "char",
                TfidfVectorizer(
                    analyzer=analyzer,
                    ngram_range=(low, high),
                    sublinear_tf=True,
                    max_features=100_000,
                ),
                variant.get("text", "shape"),
            )
        )
    if variant.get("hand"):
        parts.append(("hand", StandardScaler(), list(HAND_FEATURES)))
    return Pipeline(
        [
            ("features", ColumnTransformer(parts)),
            (
                "clf",
                LogisticRegression(
                    C=variant.get("C", 1.0),
                    class_weight="balanced",
                    solver="liblinear",
                    max_iter=2000,
                ),
            ),
        ]
    )


def row_weight(weight: np.ndarray, how: str) -> np.ndarray:
    return {"lines": weight, "sqrt": np.sqrt(weight), "none": np.ones_like(weight)}[how]


VARIANTS = {
    "full: word 1-3 + char 3-6 + 17 hand, rows x lines (the former default)": {
        "word": True,
        "char": ("char", 3, 6),
        "hand": True,
        "weight": "lines",
    },
    "char_wb 3-5 on the shape, rows x lines": {"char": ("char_wb", 3, 5), "weight": "lines"},
    "char_wb 3-5 on the shape, rows x sqrt(lines)": {"char": ("char_wb", 3, 5), "weight": "sqrt"},
    "char_wb 3-5 on the shape, rows x 1": {"char": ("char_wb", 3, 5), "weight": "none"},
    "char_wb 3-5 on the message, rows x lines": {
        "char": ("char_wb", 3, 5),
        "text": "message",
        "weight": "lines",
    },
    "full without the hand features": {"word": True, "char": ("char", 3, 6), "weight": "lines"},
    "full without the word n-grams": {"char": ("char", 3, 6), "hand": True, "weight": "lines"},
    "full, char 3-6 on the message": {
        "word": True,
        "char": ("char", 3, 6),
        "hand": True,
        "text": "message",
        "weight": "lines",
    },
    "full, rows x sqrt(lines) (the default)": {
        "word": True,
        "char": ("char", 3, 6),
        "hand": True,
        "weight": "sqrt",
    },
}


def bgl_rows() -> pd.DataFrame:
    """BGL_2k with its alert field (the first token) cut from the line and used as the label."""
    raw = (shared_data() / "loghub-2k" / "BGL" / "BGL_2k.log").read_text().splitlines()
    lines = pd.DataFrame(
        {
            "source": "BGL",
            "raw": [x.split(" ", 1)[1] for x in raw],
            "label": ["SKIP" if x.split(" ", 1)[0] == "-" else "LOOK" for x in raw],
        }
    )
    return training_rows(lines)


def main() -> None:
    rows = training_rows(recorded_labels())
    rows["message"] = [message_of(s) for s in rows["shape"]]
    bgl = bgl_rows()
    bgl["message"] = [message_of(s) for s in bgl["shape"]]
    y, w = rows["y"].to_numpy(), rows["weight"].to_numpy().astype(float)
    results, per_source = {}, {}
    for name, variant in VARIANTS.items():
        started = time.perf_counter()
        sw = row_weight(w, variant["weight"])
        oof = np.zeros(len(rows))
        for test in rows.groupby("source").indices.values():
            train = np.setdiff1d(np.arange(len(rows)), test)
            model = pipeline(variant).fit(rows.iloc[train], y[train], clf__sample_weight=sw[train])
            oof[test] = model.predict_proba(rows.iloc[test])[:, 1]
        pooled = weighted_scores(y, oof, w)
        per = {
            s: weighted_scores(y[i], oof[i], w[i])["f1"]
            for s, i in rows.groupby("source").indices.items()
        }
        full = pipeline(variant).fit(rows, y, clf__sample_weight=sw)
        unseen = weighted_scores(
            bgl["y"].to_numpy(),
            full.predict_proba(bgl)[:, 1],
            bgl["weight"].to_numpy().astype(float),
        )
        results[name] = {
            "loso_f1": round(pooled["f1"], 4),
            "loso_precision": round(pooled["precision"], 4),
            "loso_recall": round(pooled["recall"], 4),
            "loso_average_precision": round(pooled["average_precision"], 4),
            "loso_macro_f1": round(float(np.mean(list(per.values()))), 4),
            "sources_below_0.5": sum(v < 0.5 for v in per.values()),
            "bgl_alerts_f1": round(unseen["f1"], 4),
            "bgl_alerts_average_precision": round(unseen["average_precision"], 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        per_source[name] = {s: round(v, 4) for s, v in per.items()}
        print(name, results[name], flush=True)
    markdown = (
        "# What carries to unseen sources: TF-IDF line-classifier ablation\n\n"
        f"{len(rows)} distinct rows of {rows['source'].nunique()} recorded label sets, "
        "leave-one-source-out (LOOK F1 at 0.5, pooled over lines); BGL_2k alert labels as a "
        "system no label set covers (trained on all 20; a proxy).\n\n"
        + pd.DataFrame(results).T.rename_axis("variant").reset_index().to_markdown(index=False)
        + "\n\nPer held-out source, LOOK F1:\n\n"
        + pd.DataFrame(per_source).rename_axis("source").reset_index().to_markdown(index=False)
        + "\n"
    )
    write_results(
        "line_features_ablation", {"results": results, "per_source": per_source}, markdown
    )


if __name__ == "__main__":
    main()

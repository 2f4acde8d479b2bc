"""Adapting the line champion to a new system with a few LLM answers.

A new system's lines are grouped into shapes (the classifier's normalisation,
:func:`~logfit_dagster.core.line_features.shape_column`); the champion scores each shape once.
The shapes worth asking about are those it is least sure of, weighted by how many lines they
cover: priority = lines x uncertainty, where uncertainty is 1 at the champion's threshold and
falls linearly to 0 at probability 0 or 1 (a shape scored 0.02 under a 0.3 threshold is sure;
one scored 0.28 is not). At most ``k`` shapes are asked, each once, among its real neighbours
(the ``uncertain`` labeling plan).

The answers adapt the model for that system: an asked shape takes the LLM's answer for every
line of it. Measured on leave-one-family-out (``benchmarks/line_active_adaptation.py``), this
alone lifts pooled LOOK F1 from 0.840 to 0.901, 0.922 and 0.932 at 10, 25 and 50 shapes per
source; refitting the model on the answers as well gains 0.001 at 50 for a refit per system, and
choosing the source's threshold on the answered shapes (:func:`adapt_threshold`, an option) cost
0.005. The shipped champion is never changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from logfit_dagster.core.line_features import MAX_SHAPE_CHARS, shape_column
from logfit_dagster.core.models.base import ADAPTATION_FILE


def shape_table(
    lines: list[str], probability: np.ndarray, max_chars: int = MAX_SHAPE_CHARS
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per shape of ``lines`` (cut at the model's ``max_chars``): ``shape_index``, ``shape``,
    ``lines`` and ``probability`` (the mean over its lines; the champion scores a shape once, so
    they are equal); and each line's shape index."""
    shapes, index = shape_column(pa.array(lines, type=pa.large_string()), max_chars)
    index = np.asarray(index, dtype=np.int64)
    counts = np.bincount(index, minlength=len(shapes))
    sums = np.bincount(index, weights=np.asarray(probability, dtype=float), minlength=len(shapes))
    table = pd.DataFrame(
        {
            "shape_index": np.arange(len(shapes)),
            "shape": shapes.to_pylist(),
            "lines": counts,
            "probability": np.divide(sums, np.maximum(counts, 1)),
        }
    )
    return table[table["lines"] > 0].reset_index(drop=True), index


def uncertainty(probability: np.ndarray, threshold: float) -> np.ndarray:
    """1 at the threshold, 0 at probability 0 or 1, linear in between on each side."""
    p = np.asarray(probability, dtype=float)
    below = 1.0 - (threshold - p) / max(threshold, 1e-12)
    above = 1.0 - (p - threshold) / max(1.0 - threshold, 1e-12)
    return np.clip(np.where(p < threshold, below, above), 0.0, 1.0)


def ask_order(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The shapes most worth asking first: by lines x uncertainty, then by lines, then text."""
    out = table.assign(uncertainty=uncertainty(table["probability"], threshold))
    out["priority"] = out["lines"] * out["uncertainty"]
    return out.sort_values(
        ["priority", "lines", "shape"], ascending=[False, False, True], kind="stable"
    ).reset_index(drop=True)


def apply_answers(predicted: np.ndarray, shape_index: np.ndarray, known: dict) -> np.ndarray:
    """Each line's LOOK call, where its shape was answered, the answer (1 LOOK, 0 SKIP)."""
    out = np.asarray(predicted, dtype=bool).copy()
    if not known:
        return out
    keys = np.fromiter(known.keys(), dtype=np.int64)
    values = np.fromiter((bool(v) for v in known.values()), dtype=bool, count=len(known))
    lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
    hit = np.isin(shape_index, keys)
    out[hit] = [lookup[int(s)] for s in np.asarray(shape_index)[hit]]
    return out


def adapt_threshold(table: pd.DataFrame, known: dict, shipped: float) -> float:
    """The source's threshold from the answered shapes (each weighted by its lines): the
    shipped one unless another candidate has a strictly better weighted LOOK F1 on them, and
    the shipped one whenever the answers hold one class only."""
    asked = table[table["shape_index"].isin(list(known))]
    if asked.empty:
        return shipped
    y = asked["shape_index"].map(known).astype(int).to_numpy()
    if y.min() == y.max():
        return shipped
    p = asked["probability"].to_numpy(dtype=float)
    w = asked["lines"].to_numpy(dtype=float)

    def f1(threshold: float) -> float:
        pred = p >= threshold
        tp = float((w * (pred & (y == 1))).sum())
        fp = float((w * (pred & (y == 0))).sum())
        fn = float((w * (~pred & (y == 1))).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    best, best_f1 = shipped, f1(shipped)
    for candidate in sorted(set(p.tolist())):
        score = f1(candidate)
        if score > best_f1 + 1e-12:
            best, best_f1 = candidate, score
    return float(best)


def write_adaptation(
    champion: Path,
    folder: Path,
    source: str,
    asked: pd.DataFrame,
    threshold: float,
    shipped: float,
    k: int,
) -> Path:
    """An adapted model folder: a copy of the champion's, with ``adaptation.json`` (what it was
    adapted on: the source, the shapes asked with their lines, probability and answer, the
    shipped and the adapted threshold) covered by its manifest. The champion is untouched.

    ``asked``: ``shape``, ``lines``, ``probability``, ``label`` (LOOK/SKIP) and ``reason``.
    """
    import json
    import shutil

    from logfit_dagster.core.models.base import read_manifest, write_manifest

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    manifest = read_manifest(champion)
    shutil.copytree(champion, folder)
    record = {
        "source": source,
        "max_shapes": k,
        "shipped_threshold": shipped,
        "threshold": float(threshold),
        "champion_files": manifest.files,
        "asked": [
            {
                "shape": str(r.shape),
                "lines": int(r.lines),
                "probability": float(r.probability),
                "label": str(r.label),
                "reason": "" if pd.isna(r.reason) else str(r.reason),
            }
            for r in asked.itertuples()
        ],
    }
    (folder / ADAPTATION_FILE).write_text(json.dumps(record, indent=1))
    manifest.extra = {
        **manifest.extra,
        "adaptation": {
            "source": source,
            "answered_shapes": len(record["asked"]),
            "threshold": float(threshold),
            "shipped_threshold": shipped,
        },
    }
    write_manifest(folder, manifest)
    return folder


class AdaptedScorer:
    """A line model adapted to one system: an answered shape scores 1.0 (LOOK) or 0.0 (SKIP),
    every other line the base model's probability, judged at the adapted threshold."""

    def __init__(self, base, answers: dict[str, int], threshold: float, source: str):
        self.base, self.answers, self.threshold, self.source = base, answers, threshold, source

    @classmethod
    def load(cls, folder: Path) -> AdaptedScorer:
        import json

        from logfit_dagster.core.models.base import LINE_FAMILIES, load

        folder = Path(folder)
        record = json.loads((folder / ADAPTATION_FILE).read_text())
        answers = {a["shape"]: int(a["label"] == "LOOK") for a in record["asked"]}
        return cls(load(folder, LINE_FAMILIES), answers, record["threshold"], record["source"])

    def __getattr__(self, name):  # what the base model reports (shapes scored, routing)
        return getattr(self.base, name)

    def score_lines(self, lines) -> np.ndarray:
        """LOOK probability of every line: one pass over the shapes (the base model's cut),
        each shape answered or scored by the base model once."""
        if not isinstance(lines, pa.Array | pa.ChunkedArray):
            lines = pa.array(list(lines), type=pa.large_string())
        shapes, index = shape_column(lines, self.base.max_chars)
        shapes = shapes.to_pylist()
        probability = np.asarray(self.base.score_shapes(shapes), dtype=float).copy()
        for i, shape in enumerate(shapes):
            if shape in self.answers:
                probability[i] = float(self.answers[shape])
        return probability[np.asarray(index, dtype=np.int64)]

    score = score_lines

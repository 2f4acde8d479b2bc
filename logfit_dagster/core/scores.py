"""Confusion counts and the rates of the positive class (LOOK, anomalous), shared by every
report: label agreement, the line classifiers, the session classifiers; F1 and the best
threshold of probabilities weighted by the lines each row stands for."""

from __future__ import annotations

import math

import numpy as np


def confusion_counts(
    y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None
) -> tuple[float, float, float, float]:
    """True positives, false positives, false negatives, true negatives (weighted if given)."""
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    return (
        float(w[(pred == 1) & (y == 1)].sum()),
        float(w[(pred == 1) & (y == 0)].sum()),
        float(w[(pred == 0) & (y == 1)].sum()),
        float(w[(pred == 0) & (y == 0)].sum()),
    )


def rates(tp: float, fp: float, fn: float, tn: float, empty: float = math.nan) -> dict:
    """Precision, recall, F1 of the positive class and accuracy; ``empty`` where undefined."""
    total = tp + fp + fn + tn
    return {
        "precision": tp / (tp + fp) if tp + fp else empty,
        "recall": tp / (tp + fn) if tp + fn else empty,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else empty,
        "accuracy": (tp + tn) / total if total else math.nan,
    }


def weighted_f1(y: np.ndarray, proba: np.ndarray, weight: np.ndarray, threshold: float) -> dict:
    """LOOK precision, recall and F1 at ``threshold``, each row weighted by its lines."""
    tp, fp, fn, tn = confusion_counts(y, (proba >= threshold).astype(int), weight)
    return {
        **rates(tp, fp, fn, tn, empty=0.0),
        "lines": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def best_threshold(
    y: np.ndarray, proba: np.ndarray, weight: np.ndarray | None = None, floor: float = 0.0
) -> tuple[float, float]:
    """The threshold (at least ``floor``) with the best line-weighted F1, and that F1.

    Every distinct probability is a candidate (a line is LOOK when its probability reaches the
    threshold); 0.5 is kept unless another does strictly better, and among equals the lowest
    wins. One sort and cumulative sums: n log n for any number of candidates.
    """
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=float)
    weight = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    best = (0.5, weighted_f1(y, proba, weight, 0.5)["f1"])
    order = np.argsort(-proba, kind="stable")
    p, positive, w = proba[order], (y[order] == 1), weight[order]
    tp = np.cumsum(w * positive)
    fp = np.cumsum(w * ~positive)
    total = float((w * positive).sum())
    f1 = np.where(tp > 0, 2 * tp / np.maximum(tp + fp + total, 1e-300), 0.0)
    # the last row of each run of equal probabilities: every row of the run is predicted LOOK
    last = np.r_[p[1:] != p[:-1], True] & (p >= floor)
    if not last.any():
        return best
    scores = np.where(last, f1, -1.0)
    top = scores.max()
    if top > best[1] + 1e-12:
        # among equal F1s the lowest threshold: the last such position in descending order
        index = int(np.flatnonzero(scores >= top - 1e-12)[-1])
        best = (float(p[index]), float(f1[index]))
    return best

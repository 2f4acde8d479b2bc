"""Confusion counts and the rates of the positive class (LOOK, anomalous), shared by every
report: label agreement, the line classifier, the session classifiers."""

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

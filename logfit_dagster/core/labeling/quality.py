"""Agreement of LOOK/SKIP labels with a reference: ground-truth anomalies or other labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from logfit_dagster.core.scores import confusion_counts, rates


def agreement(predicted: pd.Series, reference: pd.Series) -> dict:
    """Precision, recall, F1 of LOOK (1) against the reference, Cohen's kappa, the confusion matrix.

    Both series hold 1 (LOOK / anomalous), 0 (SKIP / normal) or missing, aligned by index.
    Pairs with a missing side are left out and counted, never guessed.
    """
    both = pd.DataFrame({"p": predicted, "r": reference}).dropna()
    p = both["p"].astype(int).to_numpy()
    r = both["r"].astype(int).to_numpy()
    tp, fp, fn, tn = (int(c) for c in confusion_counts(r, p))
    n = tp + fp + fn + tn
    kappa = math.nan
    if n:
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    return {
        "compared": n,
        "left_out": int(len(predicted) - n),
        **rates(tp, fp, fn, tn),
        "kappa": kappa,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def look_as_int(labels: pd.Series) -> pd.Series:
    """LOOK → 1, SKIP → 0, missing stays missing."""
    return labels.map({"LOOK": 1, "SKIP": 0}).astype("Float64")


def finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value

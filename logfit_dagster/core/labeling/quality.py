"""Agreement of LOOK/SKIP labels with a reference: ground-truth anomalies or other labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from logfit_dagster.core.scores import rates

# (predicted, reference) of tp, fp, fn, tn
_CELLS = ((1, 1), (1, 0), (0, 1), (0, 0))


def agreement(predicted: pd.Series, reference: pd.Series) -> dict:
    """Precision, recall, F1 of LOOK (1) against the reference, Cohen's kappa, the confusion matrix.

    Both series hold 1 (LOOK / anomalous), 0 (SKIP / normal) or missing, aligned by index.
    Pairs with a missing side are left out and counted, never guessed.
    """
    both = pd.DataFrame({"p": predicted, "r": reference}).dropna()
    stats = agreement_of_codes(
        both["p"].astype(np.int8).to_numpy(), both["r"].astype(np.int8).to_numpy()
    )
    stats["left_out"] = int(len(predicted) - stats["compared"])
    return stats


def agreement_of_codes(predicted: np.ndarray, reference: np.ndarray) -> dict:
    """:func:`agreement` of two int8 code arrays: 1, 0, or -1 where missing (a byte a line, for
    sources of millions of lines)."""
    both = (predicted >= 0) & (reference >= 0)
    p, r = predicted[both], reference[both]
    tp, fp, fn, tn = (int(np.count_nonzero((p == a) & (r == b))) for a, b in _CELLS)
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

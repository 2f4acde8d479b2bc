"""PNG plots of model quality: precision-recall curves, confusion matrices, loss curves."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402


def pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> Figure:
    """One precision-recall curve per model: ``{name: (labels, scores)}``."""
    figure, axis = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (y, score) in curves.items():
        if 0 < int(np.sum(y)) < len(y):
            precision, recall, _ = precision_recall_curve(y, score)
            axis.step(recall, precision, where="post", label=name)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower left")
    figure.tight_layout()
    return figure


def confusion(matrix: dict[str, dict[str, int]], title: str) -> Figure:
    """Confusion matrices side by side: ``{name: {"tp", "fp", "fn", "tn"}}``."""
    figure, axes = plt.subplots(
        1, max(1, len(matrix)), figsize=(3.2 * max(1, len(matrix)), 3), dpi=100
    )
    axes = np.atleast_1d(axes)
    for axis, (name, cm) in zip(axes, matrix.items(), strict=False):
        grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
        axis.imshow(grid, cmap="Blues")
        for (i, j), value in np.ndenumerate(grid):
            axis.text(j, i, str(value), ha="center", va="center")
        axis.set_xticks([0, 1], ["normal", "anomalous"])
        axis.set_yticks([0, 1], ["normal", "anomalous"])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(name, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def loss_curve(steps: list[dict], epochs: list[dict], title: str) -> Figure:
    """Training loss per step (and its running mean), dev F1 per epoch on a second axis."""
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    if steps:
        x = np.array([s["step"] for s in steps])
        loss = np.array([s["loss"] for s in steps])
        axis.plot(x, loss, alpha=0.3, color="tab:blue", label="loss")
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        axis.plot(x[window - 1 :], smooth, color="tab:blue", label=f"loss (mean of {window})")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    dev = [e for e in epochs if "dev_f1" in e]
    if dev:
        twin = axis.twinx()
        twin.plot([e["step"] for e in dev], [e["dev_f1"] for e in dev], "o-", color="tab:orange")
        twin.set_ylabel("dev LOOK F1", color="tab:orange")
        twin.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def score_distributions(scores: dict, thresholds: dict, title: str) -> Figure:
    """Per scoring method, the scores of normal and anomalous sessions, the threshold drawn."""
    methods = [m for m in thresholds if m in scores and m not in ("percentile", "unseen_rate")]
    figure, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), dpi=100)
    axes = np.atleast_1d(axes)
    # 1 anomalous, 0 normal; a session without a label (None) is in neither histogram
    label = np.array([np.nan if v is None else v for v in scores["label"]], dtype=float)
    for axis, method in zip(axes, methods, strict=True):
        values = np.asarray(scores[method], dtype=float)
        finite = np.isfinite(values)
        bins = np.histogram_bin_edges(values[finite], bins=30) if finite.any() else 10
        for flag, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
            axis.hist(
                values[finite & (label == flag)], bins=bins, alpha=0.6, label=name, color=color
            )
        axis.axvline(thresholds[method], color="black", linestyle="--", label="threshold")
        axis.set_title(method, fontsize=9)
        axis.set_yscale("log")
    axes[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def loss_by_position(losses: list[float], title: str) -> Figure:
    """Mean next-template NLL by position in the session."""
    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.plot(range(len(losses)), losses, marker=".")
    axis.set_xlabel("position in the session")
    axis.set_ylabel("mean NLL (normal test sessions)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_image(figure: Figure, alt: str) -> str:
    """The figure inlined as a markdown image (the Dagster UI renders data URIs)."""
    encoded = base64.b64encode(png_bytes(figure)).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


def close(*figures: Figure) -> None:
    for figure in figures:
        plt.close(figure)

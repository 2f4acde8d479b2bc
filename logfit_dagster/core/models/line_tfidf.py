"""Family ``line_tfidf``: the TF-IDF LOOK/SKIP line classifier on the model-family contract.

The model itself (features, grid search by GroupKFold over sources, JSON export, the numpy
:class:`LineScorer`) lives in :mod:`logfit_dagster.core.line_model`; this module trains it into
an artifact folder:

- ``model.json``: the portable export (no pickle), what :class:`LineScorer` loads;
- ``grid.json``, ``per_source.json``: the grid's CV scores and the best params' per-source scores;
- ``out_of_fold.parquet``: each training row's out-of-fold probability (for PR curves).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from logfit_dagster.core.errors import TrainingDataError

if TYPE_CHECKING:
    import pandas
from logfit_dagster.core.line_features import FEATURE_VERSION, MAX_SHAPE_CHARS
from logfit_dagster.core.line_scoring import LineScorer, write_binary
from logfit_dagster.core.models.base import Manifest, Progress, TrainResult, write_manifest

# scikit-learn (line_model, line_protocol) is imported where the model trains: loading one to
# score (``logfit classify``) needs only numpy and pyarrow

FAMILY = "line_tfidf"
FORMAT_VERSION = 1
PARITY_TOLERANCE = 1e-6
MODEL_FILE = "model.json"
#: the same export as Arrow arrays (``line_scoring.write_binary``): what loading reads
BINARY_FILE = "model.arrow"


class ParityError(RuntimeError):
    """The exported scorer does not reproduce the fitted model."""


def feature_version(manifest: Manifest) -> str:
    return FEATURE_VERSION


def grid_from_params(params: dict) -> list:
    from logfit_dagster.core.line_model import parameter_grid

    """The grid of a params dict whose values are lists (``class_weight`` 'none' is None)."""
    return parameter_grid(
        list(params.get("C", [1.0, 4.0])),
        [None if w in (None, "none") else w for w in params.get("class_weight", ["balanced"])],
        list(params.get("char_max_features", [100_000])),
        list(params.get("word_max_features", [50_000])),
        list(params.get("row_weight", ["sqrt"])),
    )


def train(
    lines: pandas.DataFrame, params: dict, folder: Path, progress: Progress | None = None
) -> TrainResult:
    """Select by GroupKFold over sources, refit the best on every row, export and check parity.

    Args:
        lines: labelled lines with ``source``, ``raw`` and ``label`` (LOOK/SKIP); or, for
            sources too big to hold, what ``collect_labelled_lines`` makes of them (rows with
            a ``weight``, the raw-line sample marked ``sampled``).
        params: grid lists (``C``, ``class_weight``, ``char_max_features``,
            ``word_max_features``, ``row_weight``), ``max_folds`` and ``max_line_chars`` (a
            line's features come from its first that many characters; kept in the export).
    """
    import pandas

    from logfit_dagster.core.line_model import export_model, fit, select_model, training_rows
    from logfit_dagster.core.line_protocol import family_groups

    progress = progress or (lambda *a, **k: None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    max_chars = int(params.get("max_line_chars", MAX_SHAPE_CHARS))
    if max_chars < 1:
        raise TrainingDataError(f"max_line_chars must be at least 1, got {max_chars}")
    rows = training_rows(lines, max_chars)
    grid = grid_from_params(params)
    progress(0, 2, stage="selection", grid=len(grid))
    selection = select_model(rows, grid, int(params.get("max_folds", 5)))
    progress(1, 2, stage="refit", cv_f1=selection.cv["f1"])
    model = fit(rows, selection.best)
    cv = {k: v for k, v in selection.cv.items() if k != "confusion"}
    at_threshold = {k: v for k, v in selection.cv_at_threshold.items() if k != "confusion"}
    sources = sorted(rows["source"].unique())
    progress(1, 2, stage="baseline", cv_f1=selection.cv["f1"])
    baseline, baseline_per_source = baseline_scores(lines, rows, selection)
    export = export_model(
        model,
        {
            "params": asdict(selection.best),
            "cv": cv,
            "sources": sources,
            "lines": int(rows["weight"].sum()),
            "max_shape_chars": max_chars,
            "threshold": selection.threshold,
            "protocol": selection.protocol,
        },
    )
    check = rows.sample(min(len(rows), 2000), random_state=0)
    parity = float(
        np.abs(
            LineScorer(export).score_shapes(check["shape"].tolist())
            - model.predict_proba(check)[:, 1]
        ).max()
    )
    if parity > PARITY_TOLERANCE:
        raise ParityError(
            f"exported scorer differs from sklearn by {parity:.2e} (> {PARITY_TOLERANCE})"
        )
    (folder / MODEL_FILE).write_text(json.dumps(export))
    write_binary(export, folder / BINARY_FILE)
    twin = float(
        np.abs(
            LineScorer.load(folder / BINARY_FILE).score_shapes(check["shape"].tolist())
            - LineScorer(export).score_shapes(check["shape"].tolist())
        ).max()
    )
    if twin > 0:
        raise ParityError(f"the Arrow twin of the export scores differently (by {twin:.2e})")
    (folder / "grid.json").write_text(json.dumps(selection.grid))
    per_source = [
        {
            "source": s,
            **{k: v for k, v in m.items() if k != "confusion"},
            **m["confusion"],
            **{f"baseline_{k}": v for k, v in baseline_per_source.get(s, {}).items()},
        }
        for s, m in selection.per_source.items()
    ]
    (folder / "per_source.json").write_text(json.dumps(per_source))
    pandas.DataFrame(
        {
            "source": rows["source"].to_numpy(),
            "y": rows["y"].to_numpy(),
            "weight": rows["weight"].to_numpy(),
            "probability": selection.out_of_fold,
        }
    ).to_parquet(folder / "out_of_fold.parquet")
    manifest = Manifest(
        family=FAMILY,
        format_version=FORMAT_VERSION,
        feature_version=FEATURE_VERSION,
        params=asdict(selection.best),
        metrics={
            **{f"cv_{k}": v for k, v in cv.items()},
            **{f"cv_{k}_at_threshold": v for k, v in at_threshold.items()},
            "threshold": selection.threshold,
            **{f"baseline_{k}": v for k, v in baseline.items()},
        },
        data={
            "sources": sources,
            "lines": int(rows["weight"].sum()),
            "look_lines": int(rows.loc[rows["y"] == 1, "weight"].sum()),
            "distinct_rows": len(rows),
            "baseline_lines": int(lines["sampled"].sum()) if "sampled" in lines else len(lines),
            "evaluation": f"{selection.protocol}, {selection.folds} folds (GroupKFold)",
            "families": sorted(set(family_groups(sources))),
        },
        extra={
            "folds": selection.folds,
            "protocol": selection.protocol,
            "export_parity_max_abs_diff": parity,
            "threshold_note": "the LOOK threshold with the best F1 on the out-of-fold "
            "predictions of held-out families; cv_*_at_threshold is measured on the same "
            "predictions, so it is optimistic (benchmarks/line_family_holdout.py nests it)",
        },
    )
    progress(2, 2, stage="done", cv_f1=selection.cv["f1"])
    return TrainResult(folder, write_manifest(folder, manifest))


def baseline_scores(
    lines: pandas.DataFrame, rows: pandas.DataFrame, selection
) -> tuple[dict, dict[str, dict]]:
    """The char n-gram baseline in the model's own folds, on every labelled line (on each
    source's sample of lines where ``lines`` marks one ``sampled``): at 0.5 and at its own
    out-of-fold best threshold (as the model's is chosen), with average precision."""
    from logfit_dagster.core.line_model import weighted_scores
    from logfit_dagster.core.line_protocol import baseline_out_of_fold
    from logfit_dagster.core.scores import best_threshold

    if "sampled" in lines:
        lines = lines[lines["sampled"].astype(bool)].reset_index(drop=True)
    source = rows["source"].to_numpy()
    fold_sources = [set(source[test]) for _, test in selection.splits]
    probability = baseline_out_of_fold(lines, fold_sources)
    y = (lines["label"] == "LOOK").to_numpy().astype(int)
    ones = np.ones(len(y))
    threshold, _ = best_threshold(y, probability, ones)
    at_half = weighted_scores(y, probability, ones)
    at_best = weighted_scores(y, probability, ones, threshold)
    per_source = {}
    for name, idx in lines.groupby("source").indices.items():
        scored = weighted_scores(y[idx], probability[idx], ones[idx], threshold)
        per_source[str(name)] = {k: scored[k] for k in ("f1", "precision", "recall")}
    summary = {
        "cv_f1": at_half["f1"],
        "cv_precision": at_half["precision"],
        "cv_recall": at_half["recall"],
        "cv_average_precision": at_half["average_precision"],
        "cv_f1_at_threshold": at_best["f1"],
        "threshold": threshold,
    }
    return summary, per_source


def load(folder: Path, manifest: Manifest) -> LineScorer:
    """The scorer of a model folder (its files already checked against the manifest): from the
    Arrow twin where the folder has one, else (a folder trained before it) from the JSON."""
    if BINARY_FILE in manifest.files:  # under the manifest's digest: of this very training
        return LineScorer.load(Path(folder) / BINARY_FILE)
    return LineScorer.load(Path(folder) / MODEL_FILE)

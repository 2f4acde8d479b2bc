"""Family ``session_counts``: session classifiers on event-count vectors, on the contract.

The models (logistic regression and a decision tree, an IsolationForest without labels) live in
:mod:`logfit_dagster.core.session_model`; this module trains them into an artifact folder:

- ``models/<kind>.json`` and ``models/<kind>.npz``: each fitted pipeline as JSON and arrays
  (:mod:`logfit_dagster.core.models.sklearn_state`: a fixed list of classes, never unpickled);
- ``results.json``: per model its threshold and dev and test metrics, the best, the note;
- ``test_scores.parquet``: every test session's score under every model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models import sklearn_state
from logfit_dagster.core.models.base import (
    SESSION_CANDIDATE_COLUMNS,
    Manifest,
    Progress,
    TrainResult,
    write_manifest,
)
from logfit_dagster.core.session_model import SessionTraining, scores, train_session_models

FAMILY = "session_counts"
# 2: pipelines as JSON and arrays (1: skops files)
FORMAT_VERSION = 2
FEATURE_VERSION = "template-counts-1"


def feature_version(manifest: Manifest) -> str:
    return FEATURE_VERSION


def train(
    data: tuple[pd.DataFrame, pd.DataFrame],
    params: dict,
    folder: Path,
    progress: Progress | None = None,
) -> TrainResult:
    """Fit on train, threshold on dev, score on test (see ``train_session_models``).

    Args:
        data: ``(sessions, dataset_splits)`` of one source.
        params: ``tfidf`` (bool) and ``seed``.
    """
    sessions, splits = data
    folder = Path(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    training = train_session_models(
        sessions, splits, tfidf=bool(params.get("tfidf", False)), seed=int(params.get("seed", 0))
    )
    for i, result in enumerate(training.results):
        sklearn_state.save(result.pipeline, folder / "models" / f"{result.kind}.json")
        if progress:
            progress(i + 1, len(training.results), model=result.kind)
    results = [
        {"kind": r.kind, "threshold": r.threshold, "dev": r.dev, "test": r.test}
        for r in training.results
    ]
    (folder / "results.json").write_text(
        json.dumps(
            {
                "supervised": training.supervised,
                "best": training.best.kind if training.best else None,
                "note": training.note,
                "results": results,
            },
            default=float,
        )
    )
    pd.concat([r.test_scores for r in training.results], ignore_index=True).to_parquet(
        folder / "test_scores.parquet"
    )
    best = training.best
    manifest = Manifest(
        family=FAMILY,
        format_version=FORMAT_VERSION,
        feature_version=FEATURE_VERSION,
        params=dict(params),
        metrics={f"test_{k}": v for k, v in (best.test if best else {}).items()},
        data={
            "sessions": len(sessions),
            "splits": splits["split"].value_counts().to_dict() if len(splits) else {},
        },
        extra={"best": best.kind if best else None, "supervised": training.supervised},
    )
    return TrainResult(folder, write_manifest(folder, manifest))


def read_training(folder: Path) -> SessionTraining:
    """The :class:`SessionTraining` stored in an artifact folder, pipelines included."""
    from logfit_dagster.core.session_model import SessionModelResult

    folder = Path(folder)
    stored = json.loads((folder / "results.json").read_text())
    scores = pd.read_parquet(folder / "test_scores.parquet")
    training = SessionTraining(supervised=stored["supervised"], note=stored["note"])
    for r in stored["results"]:
        training.results.append(
            SessionModelResult(
                r["kind"],
                sklearn_state.load(folder / "models" / f"{r['kind']}.json"),
                float(r["threshold"]),
                r["dev"],
                r["test"],
                scores[scores["model"] == r["kind"]].reset_index(drop=True),
            )
        )
    return training


class SessionScorer:
    """One session model of a folder (its best by dev F1 unless ``kind`` names another):
    anomaly score per template-id sequence."""

    def __init__(self, folder: Path, manifest: Manifest, kind: str | None = None):
        training = read_training(folder)
        chosen = (
            training.best
            if kind is None
            else next((r for r in training.results if r.kind == kind), None)
        )
        if chosen is None:
            raise ModelFileError(
                f"{folder}: holds no session model" + (f" {kind!r}" if kind else "")
            )
        self.kind, self.threshold = chosen.kind, chosen.threshold
        self._pipeline = chosen.pipeline

    def score(self, sequences: list[list[int]]) -> np.ndarray:
        """Anomaly score of each template-id sequence (higher is more anomalous)."""
        return scores(self._pipeline, pd.Series(sequences))


def evaluation_frame(folder: Path) -> pd.DataFrame:
    """The test sessions of a trained folder, scored by each model (``session_id``, ``label``,
    ``score``, ``predicted``, ``model``, ``threshold``), with each model's dev figures
    (``dev_average_precision``, ``dev_f1``): what the family's asset hands on."""
    folder = Path(folder)
    stored = json.loads((folder / "results.json").read_text())
    dev = {r["kind"]: r["dev"] for r in stored["results"]}
    return _with_dev(pd.read_parquet(folder / "test_scores.parquet"), dev)


def scores_frame(results: list) -> pd.DataFrame:
    """:func:`evaluation_frame` of a training's results in memory (no file read again)."""
    frame = pd.concat([r.test_scores for r in results], ignore_index=True)
    return _with_dev(frame, {r.kind: r.dev for r in results})


def _with_dev(frame: pd.DataFrame, dev: dict[str, dict]) -> pd.DataFrame:
    """Each row's model's dev figures beside its test score."""
    return frame.assign(
        dev_average_precision=frame["model"].map(lambda k: dev[k].get("average_precision", np.nan)),
        dev_f1=frame["model"].map(lambda k: dev[k].get("f1", np.nan)),
    )


def candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """An :func:`evaluation_frame` (the ``session_model`` asset's value) as session-champion
    candidates, one per model (see :mod:`logfit_dagster.core.session_champion`)."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=SESSION_CANDIDATE_COLUMNS)
    return frame.assign(family=FAMILY, flagged=frame["predicted"].astype(bool))[
        SESSION_CANDIDATE_COLUMNS
    ]


def candidate_frame(folder: Path) -> pd.DataFrame:
    """A trained folder's test sessions as session-champion candidates (benchmarks and tests
    that train without the asset graph)."""
    return candidates(evaluation_frame(folder))


def load(folder: Path, manifest: Manifest, kind: str | None = None) -> SessionScorer:
    return SessionScorer(folder, manifest, kind)

"""Models: the LOOK/SKIP line classifier, per-source session classifiers, their champions."""

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from logfit_dagster.assets._common import on_new_data, preview, training_op_tags
from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.reading import atomic_path
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.paths import data_dir
from logfit_dagster.resources.tracking import ExperimentTracker

if TYPE_CHECKING:
    from logfit_dagster.core.line_model import LineScorer

# scikit-learn and matplotlib are imported in the steps that train, score and plot: every step
# process of a multiprocess run imports the code location, and they take a second to import.

LINE_MODEL_NAME = "logfit-look-skip"
TRAINING_POOL = "training"
PARITY_TOLERANCE = 1e-6


def models_dir() -> Path:
    return data_dir() / "models"


def champion_model_path() -> Path:
    """Where the champion LOOK/SKIP model's JSON lives: ``logfit classify``'s default."""
    return models_dir() / "look_skip_champion.json"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload))


def _finite(metrics: dict) -> dict:
    return {
        k: dg.MetadataValue.float(round(float(v), 4))
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _gate(
    new_f1: float, champion: tuple[str, dict] | None, metric: str, margin: float
) -> tuple[bool, dict]:
    """Passes when there is no champion, or the new F1 is not below the champion's by more
    than ``margin``."""
    if champion is None:
        return True, {"champion_version": "none", "new_f1": dg.MetadataValue.float(new_f1)}
    version, metrics = champion
    old = float(metrics.get(metric, float("nan")))
    passed = not math.isfinite(old) or new_f1 >= old - margin
    return passed, {
        "champion_version": version,
        "champion_f1": dg.MetadataValue.float(old),
        "new_f1": dg.MetadataValue.float(new_f1),
        "margin": dg.MetadataValue.float(margin),
    }


# -- the LOOK/SKIP line classifier -------------------------------------------------------------


class LineModelConfig(dg.Config):
    """Grid searched by GroupKFold over sources."""

    C: list[float] = Field(default=[1.0, 4.0], description="Inverse regularization strengths.")
    class_weight: list[str] = Field(default=["balanced"], description="'balanced' and/or 'none'.")
    char_max_features: list[int] = Field(default=[100_000], description="Character n-grams kept.")
    word_max_features: list[int] = Field(default=[50_000], description="Word n-grams kept.")
    max_folds: int = Field(default=5, description="GroupKFold folds (at most one per source).")
    champion_margin: float = Field(
        default=0.02,
        description="The gate blocks a model whose CV F1 is below the champion's by more than this.",
    )


@dg.asset(
    group_name="models",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"sklearn", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
    output_required=False,
    check_specs=[
        dg.AssetCheckSpec(
            "champion_gate",
            asset="look_skip_model",
            blocking=True,
            description="Leave-sources-out LOOK F1 not below the champion's by more than the margin.",
        )
    ],
)
def look_skip_model(
    context: dg.AssetExecutionContext,
    config: LineModelConfig,
    labeled_lines: pd.DataFrame,
    tracker: ExperimentTracker,
):
    """TF-IDF (word 1-3, char 3-6) + 17 handcrafted features, logistic regression; selected by
    GroupKFold over sources, exported to JSON, tracked and registered in MLflow."""
    from logfit_dagster.core import plots
    from logfit_dagster.core.line_model import (
        LineScorer,
        export_model,
        fit,
        parameter_grid,
        select_model,
        training_rows,
    )

    started = time.perf_counter()
    try:
        rows = training_rows(labeled_lines)
        grid = parameter_grid(
            config.C,
            [None if w == "none" else w for w in config.class_weight],
            config.char_max_features,
            config.word_max_features,
        )
        selection = select_model(rows, grid, config.max_folds)
    except TrainingDataError as exc:
        context.log.warning(f"look_skip_model not trained: {exc}")
        yield dg.AssetCheckResult(
            check_name="champion_gate",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": str(exc)},
        )
        return
    model = fit(rows, selection.best)
    cv = selection.cv
    sources = sorted(rows["source"].unique())
    export = export_model(
        model,
        {
            "params": selection.best.__dict__,
            "cv": {k: v for k, v in cv.items() if k != "confusion"},
            "sources": sources,
            "lines": int(rows["weight"].sum()),
            "trained_at": datetime.now(UTC).isoformat(),
        },
    )
    # the exported scorer must give sklearn's probabilities
    check = rows.sample(min(len(rows), 2000), random_state=0)
    parity = float(
        np.abs(
            LineScorer(export).score_shapes(check["shape"].tolist())
            - model.predict_proba(check)[:, 1]
        ).max()
    )
    if parity > PARITY_TOLERANCE:
        raise dg.Failure(
            f"exported scorer differs from sklearn by {parity:.2e} (> {PARITY_TOLERANCE})"
        )
    per_source = pd.DataFrame(
        [
            {"source": s, **{k: v for k, v in m.items() if k != "confusion"}, **m["confusion"]}
            for s, m in selection.per_source.items()
        ]
    )
    oof = selection.out_of_fold
    curve = plots.pr_curves(
        {"look_skip_model (out of fold)": (rows["y"].to_numpy(), oof)}, "LOOK, leave-sources-out"
    )
    record = tracker.log_training(
        run_name="look_skip_model",
        model_name=LINE_MODEL_NAME,
        params={**selection.best.__dict__, "folds": selection.folds, "sources": len(sources)},
        metrics={f"cv_{k}": v for k, v in cv.items() if k != "confusion"},
        sk_model=model,
        figures={"pr_curve": curve},
        json_artifacts={"look_skip_model.json": export, "grid.json": selection.grid},
        tags={"asset": "look_skip_model"},
    )
    plots.close(curve)
    path = models_dir() / "look_skip_model" / f"{record.run_id}.json"
    _write_json(
        path, {**export, "mlflow_run_id": record.run_id, "registered_version": record.version}
    )
    passed, gate = _gate(
        cv["f1"], tracker.champion(LINE_MODEL_NAME), "cv_f1", config.champion_margin
    )
    summary = pd.DataFrame(
        [
            {
                "run_id": record.run_id,
                "model_name": LINE_MODEL_NAME,
                "version": record.version,
                "path": str(path),
                "cv_f1": cv["f1"],
                "cv_precision": cv["precision"],
                "cv_recall": cv["recall"],
            }
        ]
    )
    yield dg.Output(
        {"summary": summary, "grid": pd.DataFrame(selection.grid), "per_source": per_source},
        metadata={
            "sources": len(sources),
            "lines": int(rows["weight"].sum()),
            "distinct_rows": len(rows),
            "folds": selection.folds,
            "best_params": dg.MetadataValue.json(selection.best.__dict__),
            **{f"cv_{k}": v for k, v in _finite(cv).items()},
            "export_parity_max_abs_diff": dg.MetadataValue.float(parity),
            "per_source": preview(
                per_source[["source", "f1", "precision", "recall", "lines"]], rows=30
            ),
            "grid": preview(pd.DataFrame(selection.grid), rows=30),
            "mlflow_run_id": record.run_id,
            "registered_version": str(record.version),
            "model_json": dg.MetadataValue.path(str(path)),
            "train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 2)),
        },
    )
    yield dg.AssetCheckResult(check_name="champion_gate", passed=passed, metadata=gate)


@dg.asset(group_name="models", code_version="1", kinds={"mlflow"})
def look_skip_champion(
    context: dg.AssetExecutionContext,
    look_skip_model: dict[str, pd.DataFrame],
    tracker: ExperimentTracker,
) -> pd.DataFrame:
    """The model that passed the gate: the registry's ``champion`` alias and the JSON that
    ``logfit classify`` and ``scored_lines`` use."""
    summary = look_skip_model["summary"].iloc[0]
    tracker.promote(LINE_MODEL_NAME, str(summary["version"]))
    export = json.loads(Path(summary["path"]).read_text())
    _write_json(champion_model_path(), export)
    context.add_output_metadata(
        {
            "version": str(summary["version"]),
            "cv_f1": dg.MetadataValue.float(float(summary["cv_f1"])),
            "model_json": dg.MetadataValue.path(str(champion_model_path())),
        }
    )
    return look_skip_model["summary"].assign(promoted_at=datetime.now(UTC).isoformat())


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="models",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"parquet"},
    deps=["look_skip_champion"],
    ins={"raw_logs": dg.AssetIn(dagster_type=dg.Any, metadata={"format": "arrow"})},
    # Scoring is cheap and loading the champion is not free: a backfill over every source is
    # one run that loads the model once.
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def scored_lines(context: dg.AssetExecutionContext, raw_logs):
    """Every line of a source with the champion's LOOK probability and label.

    One partition gives one frame; a single-run backfill gives ``raw_logs`` and returns a dict
    of frames by source, and the champion is loaded once for all of them.
    """
    from logfit_dagster.core.line_model import LineScorer

    keys = list(context.partition_keys)
    tables = raw_logs if isinstance(raw_logs, dict) else {keys[0]: raw_logs}
    missing = [key for key in keys if key not in tables]
    if missing:
        raise dg.Failure(
            f"scored_lines: raw_logs is not materialized for {', '.join(missing)}; "
            "materialize raw_logs for these sources first"
        )
    scorer = LineScorer.load(champion_model_path())
    started = time.perf_counter()
    frames = {key: _score_lines(scorer, tables[key]) for key in keys}
    seconds = time.perf_counter() - started
    lines = sum(len(f) for f in frames.values())
    look = {key: frame["label"] == "LOOK" for key, frame in frames.items()}
    look_lines = sum(int(mask.sum()) for mask in look.values())
    metadata = {
        "lines": lines,
        "look_lines": look_lines,
        "look_rate": dg.MetadataValue.float(round(look_lines / lines, 4) if lines else 0.0),
        "lines_per_second": dg.MetadataValue.float(float(round(lines / max(seconds, 1e-9)))),
        "model_cv_f1": dg.MetadataValue.float(
            float(scorer.spec.get("cv", {}).get("f1", float("nan")))
        ),
    }
    if len(keys) == 1:
        key = keys[0]
        frame, raw = frames[key], tables[key].column("raw")
        metadata["top_look"] = preview(
            frame[look[key]]
            .nlargest(8, "probability")
            .assign(raw=lambda f: [raw[i - 1].as_py() for i in f["line_number"]])
        )
        context.add_output_metadata(metadata)
        return frame
    metadata["sources"] = preview(
        pd.DataFrame(
            {
                "source": keys,
                "lines": [len(frames[k]) for k in keys],
                "look_lines": [int(look[k].sum()) for k in keys],
            }
        ),
        rows=len(keys),
    )
    context.add_output_metadata(metadata)
    return frames


def _score_lines(scorer: "LineScorer", raw_logs: pa.Table) -> pd.DataFrame:
    probability = scorer.score_lines(raw_logs.column("raw"))
    return pd.DataFrame(
        {
            "line_number": raw_logs.column("line_number").to_numpy(),
            "probability": probability,
            "label": np.where(probability >= scorer.threshold, "LOOK", "SKIP"),
        }
    )


# -- session classifiers -----------------------------------------------------------------------


# What session_model stores: each model's test scores, its threshold, version, and the best.
SESSION_SCORE_COLUMNS = [
    "session_id",
    "label",
    "score",
    "predicted",
    "model",
    "threshold",
    "version",
    "best",
]


def session_model_name(source: str) -> str:
    return f"logfit-session-{source}"


class SessionModelConfig(dg.Config):
    tfidf: bool = Field(default=False, description="TF-IDF-weight the event-count vectors.")
    seed: int = Field(default=0, description="Seed of the tree and forest models.")
    champion_margin: float = Field(
        default=0.02,
        description="The gate blocks a model whose test F1 is below the champion's by more than this.",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="models",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"sklearn", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
    check_specs=[
        dg.AssetCheckSpec(
            "session_champion_gate",
            asset="session_model",
            blocking=True,
            description="The best session model's test F1 not below the champion's by more than the margin.",
        )
    ],
)
def session_model(
    context: dg.AssetExecutionContext,
    config: SessionModelConfig,
    sessions: pd.DataFrame,
    dataset_splits: pd.DataFrame,
    tracker: ExperimentTracker,
):
    """Event-count vectors per session; logistic regression and a decision tree (IsolationForest
    without labels), trained on train, threshold chosen on dev, scored on test."""
    from logfit_dagster.core import plots
    from logfit_dagster.core.session_model import train_session_models

    source = context.partition_key
    try:
        training = train_session_models(
            sessions, dataset_splits, tfidf=config.tfidf, seed=config.seed
        )
    except TrainingDataError as exc:
        context.log.warning(f"no session model for {source}: {exc}")
        yield dg.Output(
            pd.DataFrame(columns=SESSION_SCORE_COLUMNS),
            metadata={"skipped": str(exc)},
        )
        yield dg.AssetCheckResult(
            check_name="session_champion_gate",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": f"no model trained: {exc}"},
        )
        return
    name = session_model_name(source)
    records = {}
    for result in training.results:
        figure = (
            plots.pr_curves(
                {
                    result.kind: (
                        result.test_scores["label"].to_numpy(dtype=float),
                        result.test_scores["score"].to_numpy(),
                    )
                },
                f"{source} test",
            )
            if training.supervised
            else None
        )
        records[result.kind] = tracker.log_training(
            run_name=f"session_model/{source}/{result.kind}",
            model_name=name,
            params={
                "source": source,
                "model": result.kind,
                "tfidf": config.tfidf,
                "seed": config.seed,
                "threshold": result.threshold,
            },
            metrics={
                **{f"dev_{k}": v for k, v in result.dev.items()},
                **{f"test_{k}": v for k, v in result.test.items()},
            },
            sk_model=result.pipeline,
            figures={"pr_curve": figure} if figure is not None else {},
            tags={"asset": "session_model", "source": source},
        )
        if figure is not None:
            plots.close(figure)
    best = training.best
    frame = pd.concat([r.test_scores for r in training.results], ignore_index=True)
    frame["version"] = frame["model"].map(lambda k: records[k].version)
    frame["best"] = frame["model"] == best.kind
    table = pd.DataFrame(
        [
            {
                "model": r.kind,
                "threshold": r.threshold,
                **{f"test_{k}": v for k, v in r.test.items()},
            }
            for r in training.results
        ]
    )
    metadata = {
        "supervised": training.supervised,
        "best_model": best.kind,
        "registered_model": name,
        "best_version": str(records[best.kind].version),
        "models": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
        **{f"test_{k}": v for k, v in _finite(best.test).items()},
    }
    if training.note:
        metadata["note"] = training.note
    yield dg.Output(frame, metadata=metadata)
    if training.supervised:
        passed, gate = _gate(
            best.test["f1"], tracker.champion(name), "test_f1", config.champion_margin
        )
        yield dg.AssetCheckResult(check_name="session_champion_gate", passed=passed, metadata=gate)
    else:
        yield dg.AssetCheckResult(
            check_name="session_champion_gate",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": "no labels: an unsupervised model is never made champion"},
        )


@dg.asset(
    partitions_def=log_source_partitions, group_name="models", code_version="1", kinds={"mlflow"}
)
def session_champion(
    context: dg.AssetExecutionContext, session_model: pd.DataFrame, tracker: ExperimentTracker
) -> pd.DataFrame:
    """The source's best session model made ``champion`` in the registry, once its gate passed."""
    best = session_model[session_model["best"].astype(bool)]
    if best.empty or not bool(best["label"].notna().any()):
        context.add_output_metadata({"promoted": False, "note": "no supervised model to promote"})
        return pd.DataFrame({"model": [], "version": []})
    kind, version = str(best["model"].iloc[0]), str(best["version"].iloc[0])
    tracker.promote(session_model_name(context.partition_key), version)
    context.add_output_metadata({"promoted": True, "model": kind, "version": version})
    return pd.DataFrame({"model": [kind], "version": [version]})

"""Family ``session_counts``: per-source session classifiers on event-count vectors."""

import dagster as dg
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import (
    SESSION_SEQUENCES,
    columns_of,
    on_new_data,
    training_op_tags,
)
from logfit_dagster.assets.models._shared import (
    TRAINING_DATA_TAG,
    TRAINING_POOL,
    data_key,
    family_folder,
    finite,
    gate,
    not_trained,
)
from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.tracking import ExperimentTracker

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
    # each model's figures on dev sessions (what the session champion chooses by)
    "dev_average_precision",
    "dev_f1",
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
    # 3: pipelines stored as JSON and arrays, registered through MLflow's pyfunc flavour
    code_version="3",
    automation_condition=on_new_data(),
    kinds={"sklearn", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
    ins={"sessions": columns_of(*SESSION_SEQUENCES)},
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
    from logfit_dagster.core.models.base import train
    from logfit_dagster.core.models.session_counts import read_training, scores_frame

    source = context.partition_key
    folder = family_folder("session_counts", f"{source}/{context.run_id}")
    try:
        # seconds on a CPU: trained in the step itself, on the same contract as every family
        train(
            "session_counts",
            (sessions, dataset_splits),
            {"tfidf": config.tfidf, "seed": config.seed},
            folder,
        )
    except TrainingDataError as exc:
        context.log.warning(f"no session model for {source}: {exc}")
        yield dg.Output(
            pd.DataFrame(columns=SESSION_SCORE_COLUMNS),
            metadata={"skipped": str(exc)},
        )
        yield not_trained("session_champion_gate", f"no model trained: {exc}")
        return
    training = read_training(folder)
    name = session_model_name(source)
    split_key = data_key(
        dataset_splits[["session_id", "split", "label"]].astype(str).values.tolist()
    )
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
            artifact_folder=folder,
            model_config={"kind": result.kind},
            figures={"pr_curve": figure} if figure is not None else {},
            tags={
                "asset": "session_model",
                "source": source,
                "family": "session_counts",
                TRAINING_DATA_TAG: split_key,
            },
        )
        if figure is not None:
            plots.close(figure)
    best = training.best
    frame = scores_frame(training.results)
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
        "model_folder": dg.MetadataValue.path(str(folder)),
        "models": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
        **{f"test_{k}": v for k, v in finite(best.test).items()},
        # what the test figures rest on
        "test_sessions": int((frame["model"] == best.kind).sum()),
        "test_anomalous": int(((frame["model"] == best.kind) & (frame["label"] == 1)).sum()),
    }
    if training.note:
        metadata["note"] = training.note
    yield dg.Output(frame, metadata=metadata)
    if training.supervised:
        passed, gate_metadata = gate(
            best.test["f1"],
            tracker.champion(name),
            "test_f1",
            config.champion_margin,
            data=split_key,
            champion_data=tracker.champion_tag(name, TRAINING_DATA_TAG),
        )
        yield dg.AssetCheckResult(
            check_name="session_champion_gate", passed=passed, metadata=gate_metadata
        )
    else:
        yield not_trained(
            "session_champion_gate", "no labels: an unsupervised model is never made champion"
        )

"""Family ``line_tfidf``: the TF-IDF LOOK/SKIP line classifier and its champion."""

import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import (
    on_new_data,
    preview,
    promoted_on_new_data,
    streamed,
    training_op_tags,
)
from logfit_dagster.assets.models._shared import (
    TRAINING_DATA_TAG,
    TRAINING_POOL,
    champion_model_path,
    data_key,
    family_folder,
    finite,
    gate,
    not_trained,
    write_json,
)
from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.resources.tracking import ExperimentTracker

# scikit-learn and matplotlib are imported in the steps that train, score and plot: every step
# process of a multiprocess run imports the code location, and they take a second to import.

LINE_MODEL_NAME = "logfit-look-skip"


class LineModelConfig(dg.Config):
    """Grid searched by GroupKFold over sources."""

    C: list[float] = Field(default=[1.0, 4.0], description="Inverse regularization strengths.")
    class_weight: list[str] = Field(default=["balanced"], description="'balanced' and/or 'none'.")
    char_max_features: list[int] = Field(default=[100_000], description="Character n-grams kept.")
    word_max_features: list[int] = Field(default=[50_000], description="Word n-grams kept.")
    row_weight: list[str] = Field(
        default=["sqrt"],
        description="Weight of a distinct line shape in the fit: 'lines' (its count), 'sqrt' "
        "or 'none'. Scores are weighted by lines either way.",
    )
    max_folds: int = Field(default=5, description="GroupKFold folds (at most one per source).")
    max_line_chars: int = Field(
        default=4096,
        description="A line's features (its shape) come from its first this many characters; "
        "the model keeps the cut, scoring uses it, and the raw line stays whole in outputs.",
    )
    champion_margin: float = Field(
        default=0.02,
        description="The gate blocks a model whose CV F1 is below the champion's by more than this.",
    )


#: what the line families read of ``labeled_lines``
LABELLED_COLUMNS = ["source", "raw", "label"]


@dg.asset(
    group_name="models",
    code_version="2",
    automation_condition=on_new_data(),
    kinds={"sklearn", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
    output_required=False,
    ins={"labeled_lines": streamed()},
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
    labeled_lines: StoredTable,
    tracker: ExperimentTracker,
):
    """TF-IDF (word 1-3, char 3-6) + 17 handcrafted features, logistic regression; selected by
    GroupKFold over sources, exported to JSON, tracked and registered in MLflow."""
    from logfit_dagster.core import plots
    from logfit_dagster.core.line_model import collect_labelled_lines
    from logfit_dagster.core.models.base import format_progress, train

    started = time.perf_counter()
    params = config.model_dump(exclude={"champion_margin"})
    folder = family_folder("line_tfidf", context.run_id)
    # every distinct shape with its line count, and each source's sample of raw lines for the
    # baseline, read batch by batch: memory bounded by shapes, not lines
    labelled = collect_labelled_lines(
        labeled_lines.batches(LABELLED_COLUMNS), config.max_line_chars
    )
    try:
        # seconds on a CPU: trained in the step itself, on the same contract as every family
        result = train(
            "line_tfidf",
            labelled,
            params,
            folder,
            lambda step, total, **m: context.log.info(
                f"look_skip_model: {format_progress(step, total, **m)}"
            ),
        )
    except TrainingDataError as exc:
        context.log.warning(f"look_skip_model not trained: {exc}")
        yield not_trained("champion_gate", str(exc))
        return
    manifest = result.manifest
    metrics = manifest.metrics
    cv = {k.removeprefix("cv_"): v for k, v in metrics.items() if k.startswith("cv_")}
    baseline = {
        k.removeprefix("baseline_"): v for k, v in metrics.items() if k.startswith("baseline_")
    }
    export = json.loads((folder / "model.json").read_text())
    per_source = pd.DataFrame(json.loads((folder / "per_source.json").read_text()))
    grid = pd.DataFrame(json.loads((folder / "grid.json").read_text()))
    oof = pd.read_parquet(folder / "out_of_fold.parquet")
    sources = manifest.data["sources"]
    curve = plots.pr_curves(
        {"look_skip_model (out of fold)": (oof["y"].to_numpy(), oof["probability"].to_numpy())},
        "LOOK, leave-sources-out",
    )
    record = tracker.log_training(
        run_name="look_skip_model",
        model_name=LINE_MODEL_NAME,
        params={**manifest.params, "folds": manifest.extra["folds"], "sources": len(sources)},
        metrics=manifest.metrics,
        artifact_folder=folder,
        figures={"pr_curve": curve},
        json_artifacts={"look_skip_model.json": export, "grid.json": grid.to_dict("records")},
        tags={
            "asset": "look_skip_model",
            "family": "line_tfidf",
            TRAINING_DATA_TAG: data_key(sorted(sources), manifest.extra["protocol"]),
        },
    )
    plots.close(curve)
    passed, gate_metadata = gate(
        cv["f1"],
        tracker.champion(LINE_MODEL_NAME),
        "cv_f1",
        config.champion_margin,
        data=data_key(sorted(sources), manifest.extra["protocol"]),
        champion_data=tracker.champion_tag(LINE_MODEL_NAME, TRAINING_DATA_TAG),
    )
    summary = pd.DataFrame(
        [
            {
                "run_id": record.run_id,
                "model_name": LINE_MODEL_NAME,
                "family": "line_tfidf",
                "version": record.version,
                "params": json.dumps(manifest.params),
                "cv_f1": cv["f1"],
                "cv_precision": cv["precision"],
                "cv_recall": cv["recall"],
            }
        ]
    )
    yield dg.Output(
        {"summary": summary, "grid": grid, "per_source": per_source},
        metadata={
            "sources": len(sources),
            "lines": manifest.data["lines"],
            "distinct_rows": manifest.data["distinct_rows"],
            "folds": manifest.extra["folds"],
            "best_params": dg.MetadataValue.json(manifest.params),
            **{f"cv_{k}": v for k, v in finite(cv).items()},
            "protocol": manifest.extra["protocol"],
            "families": dg.MetadataValue.json(manifest.data["families"]),
            "look_lines": manifest.data["look_lines"],
            "threshold": dg.MetadataValue.float(round(float(metrics["threshold"]), 4)),
            # the plain choice, trained and scored in the same folds
            **{f"baseline_{k}": v for k, v in finite(baseline).items()},
            "export_parity_max_abs_diff": dg.MetadataValue.float(
                manifest.extra["export_parity_max_abs_diff"]
            ),
            "per_source": preview(
                per_source[
                    ["source", "f1", "precision", "recall", "lines"]
                    + [c for c in ("baseline_f1",) if c in per_source]
                ],
                rows=30,
            ),
            "grid": preview(grid, rows=30),
            "mlflow_run_id": record.run_id,
            "registered_version": str(record.version),
            "model_folder": dg.MetadataValue.path(str(folder)),
            "train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 2)),
        },
    )
    yield dg.AssetCheckResult(check_name="champion_gate", passed=passed, metadata=gate_metadata)


@dg.asset(
    group_name="models",
    code_version="2",
    kinds={"mlflow"},
    automation_condition=promoted_on_new_data(),
)
def look_skip_champion(
    context: dg.AssetExecutionContext,
    look_skip_model: dict[str, pd.DataFrame],
    tracker: ExperimentTracker,
) -> pd.DataFrame:
    """The TF-IDF model that passed the gate: the registry's ``champion`` alias of its family
    and the JSON that ``logfit classify --model`` takes (``line_champion`` chooses between
    families)."""
    summary = look_skip_model["summary"].iloc[0]
    tracker.promote(LINE_MODEL_NAME, str(summary["version"]))
    with tempfile.TemporaryDirectory() as tmp:
        # the model as the registry holds it, never look_skip_model's own folder
        folder = tracker.model_files(LINE_MODEL_NAME, str(summary["version"]), Path(tmp))
        export = json.loads((folder / "model.json").read_text())
    write_json(
        champion_model_path(),
        {
            **export,
            "trained_at": datetime.now(UTC).isoformat(),
            "mlflow_run_id": str(summary["run_id"]),
            "registered_version": str(summary["version"]),
        },
    )
    context.add_output_metadata(
        {
            "version": str(summary["version"]),
            "cv_f1": dg.MetadataValue.float(float(summary["cv_f1"])),
            "model_json": dg.MetadataValue.path(str(champion_model_path())),
        }
    )
    return look_skip_model["summary"].assign(promoted_at=datetime.now(UTC).isoformat())

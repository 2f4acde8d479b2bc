"""Family ``line_transformer``: a fine-tuned BERT-style encoder behind the TF-IDF model."""

import hashlib
import json
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import on_new_data, preview, streamed, training_op_tags
from logfit_dagster.assets.models._shared import (
    TRAINING_POOL,
    family_folder,
    finite,
    not_trained,
)
from logfit_dagster.assets.models.line_tfidf import LABELLED_COLUMNS
from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.line_features import MAX_SHAPE_CHARS
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.resources.tracking import ExperimentTracker
from logfit_dagster.resources.trainer import Trainer

TRANSFORMER_MODEL_NAME = "logfit-line-transformer"


class LineTransformerConfig(dg.Config):
    base_model: str = Field(
        default="",
        description="A folder or hub id of a BERT-style encoder; empty: the packaged "
        "all-MiniLM-L6-v2 (the train extra).",
    )
    max_length: int = Field(default=128, description="Word pieces read per line message.")
    max_epochs: int = Field(default=10, description="At most this many epochs.")
    patience: int = Field(default=3, description="Epochs without a dev F1 gain before stopping.")
    learning_rate: float = Field(default=5e-5, description="AdamW peak learning rate.")
    batch_size: int = Field(default=32, description="Rows per training step.")
    warmup: float = Field(default=0.1, description="Share of steps of linear warmup.")
    row_weight: str = Field(
        default="sqrt",
        description="How a row's line count weighs in the loss: lines, sqrt, log or none "
        "(classes are balanced on top).",
    )
    checkpoint_every: int = Field(default=200, description="Steps between checkpoints.")
    max_seconds: float = Field(
        default=900.0,
        description="Training stops after this many seconds (0: no budget) and keeps the best "
        "epoch so far; the manifest says it stopped on the budget. The default run needs well "
        "under a minute; a big source's many shapes would otherwise train for hours on a CPU.",
    )
    cascade_low: float = Field(
        default=0.1,
        description="Shapes whose TF-IDF LOOK probability reaches this go to the transformer "
        "(below it: SKIP without it). 0.1..0.9 matched or beat 0.05..1.0 leave-one-family-out "
        "on the 20 label sets, reading 62% of held-out lines instead of 97% "
        "(benchmarks/cascade_routing.py).",
    )
    cascade_high: float = Field(
        default=0.9,
        description="Shapes whose TF-IDF LOOK probability is above this keep the TF-IDF answer "
        "(LOOK) without the transformer: it reads only what the first stage is unsure of "
        "(1.0: every shape from cascade_low up).",
    )
    cascade_blend: str = Field(
        default="mean",
        description="In the band: the mean of both stages' probabilities, or 'transformer' alone.",
    )
    max_rows: int = Field(default=0, description="Train on a seeded sample of rows (0: all).")
    seed: int = Field(default=0, description="Seed of initialisation, data order and dropout.")
    dev_sources: list[str] = Field(
        default=[], description="Sources that stop training and pick the threshold (empty: auto)."
    )
    test_sources: list[str] = Field(
        default=[], description="Sources scored once, never trained on (empty: auto)."
    )
    champion_margin: float = Field(
        default=0.0,
        description="The cascade passes its gate (and becomes the line champion) only where "
        "its held-out LOOK F1 beats the TF-IDF model's on the same sources by more than this: "
        "a tie keeps the TF-IDF model, as good and faster (negative: accept a cascade up to "
        "that much worse). A cascade whose transformer learned nothing never passes.",
    )

    def params(self) -> dict:
        return self.model_dump(exclude={"dev_sources", "test_sources", "champion_margin"})


@dg.asset(
    group_name="models",
    code_version="2",
    automation_condition=on_new_data(),
    kinds={"pytorch", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
    output_required=False,
    ins={"labeled_lines": streamed()},
    check_specs=[
        # not blocking: line_champion reads the outcome and keeps the TF-IDF model
        dg.AssetCheckSpec(
            "cascade_gate",
            asset="line_transformer_model",
            description="The cascade's LOOK F1 on held-out sources above the TF-IDF model's on "
            "the same sources by more than the margin, its transformer having learned something "
            "(else line_champion is the TF-IDF model).",
        )
    ],
)
def line_transformer_model(
    context: dg.AssetExecutionContext,
    config: LineTransformerConfig,
    labeled_lines: StoredTable,
    look_skip_model: dict[str, pd.DataFrame],
    trainer: Trainer,
    tracker: ExperimentTracker,
):
    """A BERT-style encoder fine-tuned on the LOOK/SKIP labels of the train sources, run as a
    cascade behind a TF-IDF stage, scored on held-out sources against the TF-IDF model alone."""
    from logfit_dagster.core import plots
    from logfit_dagster.core.line_model import collect_labelled_lines
    from logfit_dagster.core.models.line_transformer import cascade_gate, prepare_data

    started = time.perf_counter()
    tfidf_params = json.loads(look_skip_model["summary"].iloc[0]["params"])
    labelled = collect_labelled_lines(labeled_lines.batches(LABELLED_COLUMNS), MAX_SHAPE_CHARS)
    try:
        data = prepare_data(
            labelled,
            tfidf_params,
            config.dev_sources or None,
            config.test_sources or None,
        )
    except TrainingDataError as exc:
        yield from _not_trained(context, exc)
        return
    params = config.params()
    # the same data and params train in the same folder: a retried run resumes there
    key = hashlib.sha256(
        json.dumps([data, params], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    folder = family_folder("line_transformer", key)
    try:
        result = trainer.train(context, "line_transformer", data, params, folder)
    except TrainingDataError as exc:
        yield from _not_trained(context, exc)
        return
    manifest, metrics = result.manifest, result.metrics
    history = json.loads((folder / "history.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())
    loss = plots.loss_curve(history["steps"], history["epochs"], "line_transformer training")
    record = tracker.log_training(
        run_name="line_transformer_model",
        model_name=TRANSFORMER_MODEL_NAME,
        params={**params, **{f"{k}_sources": ",".join(v) for k, v in data["groups"].items()}},
        metrics=metrics,
        artifact_folder=folder,
        figures={"loss_curve": loss},
        json_artifacts={"evaluation.json": evaluation},
        step_metrics=[{"step": s["step"], "train_loss": s["loss"]} for s in history["steps"]]
        + [{"step": e["step"], "dev_f1": e["dev_f1"]} for e in history["epochs"] if "dev_f1" in e],
        tags={"asset": "line_transformer_model", "family": "line_transformer"},
    )
    cascade_f1 = float(metrics["test_cascade_f1"])
    tfidf_f1 = float(metrics.get("test_tfidf_f1", float("nan")))
    passed, why = cascade_gate(metrics, config.champion_margin)
    per_source = pd.DataFrame(
        [
            {
                "source": source,
                **{
                    f"{name}_{k}": scores[name][k]
                    for name in ("cascade", "transformer", "tfidf")
                    if name in scores
                    for k in ("f1", "precision", "recall")
                },
                "routed_share": scores["routed_share"],
                "lines": scores["cascade"]["lines"],
            }
            for source, scores in evaluation["per_source"].items()
        ]
    )
    summary = pd.DataFrame(
        [
            {
                "run_id": record.run_id,
                "model_name": TRANSFORMER_MODEL_NAME,
                "family": "line_transformer",
                "version": record.version,
                "test_cascade_f1": cascade_f1,
                "test_tfidf_f1": tfidf_f1,
                "test_transformer_f1": float(metrics["test_transformer_f1"]),
                "gate_passed": passed,
                "gate_why": why,
            }
        ]
    )
    yield dg.Output(
        {"summary": summary, "per_source": per_source},
        metadata={
            "sources": dg.MetadataValue.json(data["groups"]),
            "evaluation": "fixed held-out source groups (transformer cross-validation is too "
            "costly): test sources are never trained on; dev sources stop training and pick "
            "the threshold",
            **finite(metrics),
            "per_source": preview(per_source.round(4), rows=30),
            "loss_curve": dg.MetadataValue.md(plots.markdown_image(loss, "loss")),
            "device": manifest.extra["device"],
            "precision": manifest.extra["precision"],
            "stopped": manifest.extra["stopped"],
            "resumed_from_step": manifest.extra["resumed_from_step"],
            "base_model": manifest.extra["base_model"],
            "mlflow_run_id": record.run_id,
            "registered_version": str(record.version),
            "model_folder": dg.MetadataValue.path(str(folder)),
            "train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 2)),
        },
    )
    plots.close(loss)
    yield dg.AssetCheckResult(
        check_name="cascade_gate",
        passed=passed,
        metadata={
            "cascade_f1": dg.MetadataValue.float(cascade_f1),
            "tfidf_f1": dg.MetadataValue.float(tfidf_f1),
            "margin": dg.MetadataValue.float(config.champion_margin),
            "why": why,
            "test_sources": ", ".join(data["groups"]["test"]),
        },
    )


def _not_trained(context: dg.AssetExecutionContext, exc: Exception):
    """An empty output that says why (the overview and the champion read it), and a warning."""
    context.log.warning(f"line_transformer_model not trained: {exc}")
    yield dg.Output(
        {"summary": pd.DataFrame(), "per_source": pd.DataFrame()},
        metadata={"skipped": str(exc)},
    )
    yield not_trained("cascade_gate", str(exc))

"""Family ``llm_lora``: a chat model taught to judge a source's sessions with LoRA adapters,
first by SFT (``sft_adapter``), then by GRPO with the shared reward (``grpo_adapter``), on the
``trainer`` resource (a GPU where it runs there, a CPU for short runs)."""

import hashlib
import json
import os
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import training_op_tags
from logfit_dagster.assets.models._shared import TRAINING_POOL, family_folder, finite
from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.llm_sessions import LABELS
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.tracking import ExperimentTracker
from logfit_dagster.resources.trainer import Trainer

LORA_COLUMNS = [
    "source",
    "stage",
    "path",
    "version",
    "test_f1",
    "test_unparseable",
    "test_precision",
    "test_recall",
    "test_accuracy",
    "test_sessions",
]


class LoraConfig(dg.Config):
    """The base model, LoRA and the trainer's settings common to both stages."""

    base_model: str = Field(
        default="",
        description="A local folder of a causal LM with a chat template, or a hub id where the "
        "hub is reachable (e.g. Qwen/Qwen2.5-0.5B-Instruct); empty: $LOGFIT_LLM_BASE_MODEL.",
    )
    lora_r: int = Field(default=16, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA alpha.")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Modules that get adapters (all-linear: attention and MLP layers).",
    )
    max_steps: int = Field(default=60, description="Optimizer steps.")
    max_seconds: float = Field(
        default=0.0,
        description="A time budget (0: none): training stops after the step that passes it "
        "(stopped_by_time in the metrics; the model then depends on the machine's speed).",
    )
    batch_size: int = Field(default=4, description="Sessions per step (SFT).")
    gradient_accumulation: int = Field(default=1, description="Steps per optimizer update.")
    max_length: int = Field(
        default=1024, description="Tokens of prompt and answer; longer prompts are left out."
    )
    save_steps: int = Field(default=20, description="Steps between checkpoints (resume).")
    merge: bool = Field(default=False, description="Also save the merged model.")
    eval_limit: int = Field(default=200, description="Dev and test sessions judged at most.")
    eval_max_new_tokens: int = Field(default=64, description="Tokens an answer may take.")
    curve_every: int = Field(
        default=20,
        description="A learning curve: every this many steps (0: never), dev F1 and average "
        "precision of the label the adapter prefers (two forward passes a session, no "
        "generation), in MLflow and dev_curve.json.",
    )
    curve_limit: int = Field(default=100, description="Dev sessions the curve scores at most.")
    seed: int = Field(default=0, description="Seed of initialisation, data order, sampling.")

    def params(self) -> dict:
        values = self.model_dump()
        values["base_model"] = self.base_model or os.environ.get("LOGFIT_LLM_BASE_MODEL", "")
        values["target_modules"] = (
            "all-linear" if values["target_modules"] == ["all-linear"] else values["target_modules"]
        )
        return values


class SFTConfig(LoraConfig):
    learning_rate: float = Field(default=2e-4, description="AdamW peak learning rate.")
    eval_every: int = Field(default=20, description="Steps between dev-loss evaluations.")
    patience: int = Field(default=2, description="Evaluations without a dev-loss gain.")


class GRPOConfig(LoraConfig):
    learning_rate: float = Field(default=1e-5, description="AdamW peak learning rate.")
    from_sft: bool = Field(default=True, description="Start from the SFT adapter.")
    num_generations: int = Field(default=4, description="Completions per prompt (a group).")
    max_completion_length: int = Field(default=64, description="Tokens a completion may take.")
    beta: float = Field(default=0.04, description="KL weight against the reference model.")
    temperature: float = Field(default=1.0, description="Sampling temperature.")
    reward_workers: int = Field(
        default=2, description="Processes computing rewards (0: in the training process)."
    )
    reward_weights: dict[str, float] = Field(
        default_factory=dict, description="Overrides of the reward's weights."
    )


# both stages: per source, in the training pool, on the trainer resource
adapter_asset = dg.asset(
    partitions_def=log_source_partitions,
    group_name="llm",
    code_version="1",
    kinds={"pytorch", "mlflow"},
    pool=TRAINING_POOL,
    op_tags=training_op_tags(),
)


def _rows(examples: pd.DataFrame, split: str) -> list[dict]:
    part = examples[examples["split"] == split]
    return [
        {
            "session_id": str(r.session_id),
            "messages": json.loads(r.messages),
            "label": LABELS[0] if int(r.label) == 1 else LABELS[1],
            "answer": r.answer,
        }
        for r in part.itertuples(index=False)
    ]


def _train(context, trainer: Trainer, stage: str, examples: pd.DataFrame, params: dict):
    source = context.partition_key
    data = {s: _rows(examples, s) for s in ("train", "dev", "test")}
    data["source"] = source
    key = hashlib.sha256(json.dumps([data, params], sort_keys=True).encode()).hexdigest()[:16]
    folder = family_folder("llm_lora", f"{source}/{stage}/{key}")
    try:
        return folder, trainer.train(context, "llm_lora", data, params, folder)
    except TrainingDataError as exc:
        raise dg.Failure(description=f"{stage} adapter of {source}: {exc}") from None


def _record(context, tracker, stage, folder, result, params, started) -> dg.Output:
    source = context.partition_key
    metrics = result.metrics
    history = json.loads((folder / "history.json").read_text())
    curve_path = folder / "dev_curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    record = tracker.log_training(
        run_name=f"{stage}_adapter/{source}",
        model_name=f"logfit-llm-lora-{stage}-{source}",
        params={**params, "stage": stage, "source": source},
        metrics=metrics,
        artifact_folder=folder,
        step_metrics=[
            {"step": h["step"], **{k: v for k, v in h.items() if isinstance(v, int | float)}}
            for h in history
            if "step" in h
        ]
        + [
            {
                "step": c["step"],
                "dev_label_f1": c["f1"],
                "dev_label_average_precision": c["average_precision"],
            }
            for c in curve
        ],
        tags={"asset": f"{stage}_adapter", "family": "llm_lora", "source": source},
    )
    frame = pd.DataFrame(
        [
            {
                "source": source,
                "stage": stage,
                "path": str(folder),
                "version": str(record.version),
                **{
                    f"test_{k}": metrics.get(f"test_{k}")
                    for k in ("f1", "unparseable", "precision", "recall", "accuracy", "sessions")
                },
            }
        ],
        columns=LORA_COLUMNS,
    )
    return dg.Output(
        frame,
        metadata={
            **finite(metrics),
            "model_folder": dg.MetadataValue.path(str(folder)),
            "registered_version": str(record.version),
            "train_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 2)),
        },
    )


@adapter_asset
def sft_adapter(
    context: dg.AssetExecutionContext,
    config: SFTConfig,
    llm_session_examples: pd.DataFrame,
    trainer: Trainer,
    tracker: ExperimentTracker,
):
    """A LoRA adapter taught the answer format and the labels by SFT (TRL's SFTTrainer, loss on
    the answer alone), early-stopped on dev loss; dev and test sessions judged by greedy
    generation, and by label score at a threshold chosen on dev (``test_thresholded_*``)."""
    started = time.perf_counter()
    params = {**config.params(), "stage": "sft"}
    folder, result = _train(context, trainer, "sft", llm_session_examples, params)
    return _record(context, tracker, "sft", folder, result, params, started)


@adapter_asset
def grpo_adapter(
    context: dg.AssetExecutionContext,
    config: GRPOConfig,
    llm_session_examples: pd.DataFrame,
    sft_adapter: pd.DataFrame,
    trainer: Trainer,
    tracker: ExperimentTracker,
):
    """The adapter reinforced by GRPO (TRL's GRPOTrainer) with the reward every route shares:
    reward mean and spread, the share of groups with no reward variance (no learning signal),
    completion lengths and a sample of completions with their rewards (completions.jsonl)."""
    started = time.perf_counter()
    values = config.params()
    from_sft = values.pop("from_sft")
    params = {
        **values,
        "stage": "grpo",
        "init_adapter": f"{sft_adapter['path'].iloc[0]}/adapter" if from_sft else "",
    }
    folder, result = _train(context, trainer, "grpo", llm_session_examples, params)
    return _record(context, tracker, "grpo", folder, result, params, started)

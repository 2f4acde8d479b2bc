"""LLMs that judge sessions: the examples every fine-tuning and evaluation route reads."""

import dagster as dg
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import on_new_data, preview
from logfit_dagster.core.llm_sessions import (
    PROMPT_VERSION,
    ExampleParams,
    build_examples,
    leaked_test_sessions,
    python_grader,
    write_jsonl,
)
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.paths import data_dir


def examples_folder(source: str, prompt_version: str):
    """Where a source's JSONL files are written, by prompt version."""
    return data_dir() / "llm" / source / prompt_version


class ExamplesConfig(dg.Config):
    """How sessions become chat examples."""

    token_budget: int = Field(
        default=2000,
        description="Estimated tokens of a session's prompt at most; a longer session keeps its "
        "head and tail and says how many lines were left out.",
    )
    normal_per_anomalous: float = Field(
        default=0.0,
        description="Training sets only: at most this many normal sessions per anomalous one "
        "(0 keeps every one). Dev and test sets are never rebalanced.",
    )
    seed: int = Field(default=0, description="Seed of the rebalancing draw.")
    prompt_version: str = Field(
        default=PROMPT_VERSION,
        description="Recorded with every example; change it whenever the prompt text changes.",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="llm",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"parquet", "openai"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_test_session_in_training_files",
            asset="llm_session_examples",
            blocking=True,
            description="No test session is in a training or validation file.",
        )
    ],
)
def llm_session_examples(
    context: dg.AssetExecutionContext,
    config: ExamplesConfig,
    sessions: pd.DataFrame,
    ground_truth_labels: dict[str, pd.DataFrame],
    dataset_splits: pd.DataFrame,
):
    """Each labelled session as chat messages (a system prompt with the task and the answer
    schema, the session's lines as the user turn) with its label and split; written as JSONL in
    the OpenAI fine-tuning layouts (chat SFT, and RFT with the field the grader reads)."""
    params = ExampleParams(
        token_budget=config.token_budget,
        normal_per_anomalous=config.normal_per_anomalous,
        seed=config.seed,
        prompt_version=config.prompt_version,
    )
    examples, stats = build_examples(
        sessions, ground_truth_labels["sessions"], dataset_splits, params
    )
    folder = examples_folder(context.partition_key, params.prompt_version)
    counts = write_jsonl(examples, folder)
    test_ids = set(dataset_splits.loc[dataset_splits["split"] == "test", "session_id"])
    leaked = leaked_test_sessions(folder, test_ids)
    balance = examples.groupby(["split", "label"]).size()
    yield dg.Output(
        examples,
        metadata={
            "prompt_version": params.prompt_version,
            "examples": len(examples),
            **{
                f"{split}/{'anomalous' if label else 'normal'}": int(n)
                for (split, label), n in balance.items()
            },
            **stats,
            "files": dg.MetadataValue.json(counts),
            "folder": dg.MetadataValue.path(str(folder)),
            "est_tokens_total": int(examples["est_tokens"].sum()),
            "est_tokens_mean": dg.MetadataValue.float(
                round(float(examples["est_tokens"].mean()), 1) if len(examples) else 0.0
            ),
            "est_tokens_max": int(examples["est_tokens"].max()) if len(examples) else 0,
            "est_train_tokens": int(examples.loc[examples["split"] == "train", "est_tokens"].sum()),
            "grader": dg.MetadataValue.md(
                "OpenAI python grader (the reward of core/llm_sessions.py):\n\n```python\n"
                + python_grader()["source"]
                + "```"
            ),
            "preview": preview(examples[["session_id", "split", "label", "est_tokens", "lines"]]),
        },
    )
    yield dg.AssetCheckResult(
        check_name="no_test_session_in_training_files",
        passed=not leaked,
        metadata={"leaked": dg.MetadataValue.json(leaked[:20]), "test_sessions": len(test_ids)},
    )

"""LLMs that judge sessions: the examples every fine-tuning and evaluation route reads."""

from typing import Literal

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import Field

from logfit_dagster.assets._common import (
    columns_of,
    on_new_data,
    output_stream,
    parts_of,
    preview,
    streamed,
)
from logfit_dagster.assets.labels import LLM_API_POOL
from logfit_dagster.core.llm_sessions import (
    EXAMPLE_SCHEMA,
    PROMPT_FORMS,
    ExampleParams,
    JsonlFiles,
    common_in_batches,
    example_batches,
    leaked_test_sessions,
    python_grader,
    repeated_test_prompts,
    write_jsonl,
)
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.paths import data_dir
from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
from logfit_dagster.resources.tracking import ExperimentTracker


def examples_folder(source: str, prompt_version: str):
    """Where a source's JSONL files are written, by prompt version."""
    return data_dir() / "llm" / source / prompt_version


#: Sessions made into examples at a time: a session's text and its JSON messages weigh some
#: kilobytes each, so a batch of the tables' 65,536 rows would hold hundreds of megabytes.
SESSION_BATCH = 2048


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
    prompt_form: Literal["lines", "templates"] = Field(
        default="lines",
        description="lines: the session's lines as written. templates: its events in order, a "
        "run of one template as one line with xN, common events as their pattern (numbers as 0, "
        "ids masked), the others (in under rare_share of training sessions, or in none) as "
        "written after [rare]; fewer "
        "tokens for a long session. The metadata gives the tokens of both forms.",
    )
    rare_share: float = Field(
        default=0.01,
        description="templates form: a template in fewer than this share of the training "
        "sessions (or fewer than 3 of them, or none) is rare, and its lines are shown as "
        "written after [rare].",
    )
    prompt_version: str = Field(
        default="",
        description="Recorded with every example; empty: the form's own (lines: "
        f"{PROMPT_FORMS['lines']}, templates: {PROMPT_FORMS['templates']}). Change it whenever "
        "the prompt text changes.",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="llm",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"parquet", "openai"},
    ins={
        "ground_truth_labels": parts_of("sessions"),
        "sessions": streamed(),
        "dataset_splits": columns_of("session_id", "split"),
    },
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
    sessions: StoredTable,
    ground_truth_labels: dict[str, pd.DataFrame],
    dataset_splits: pd.DataFrame,
):
    """Each labelled session as chat messages (a system prompt with the task and the answer
    schema, the session's lines as the user turn) with its label and split; written as JSONL in
    the OpenAI fine-tuning layouts (chat SFT, and RFT with the field the grader reads).

    Sessions are read, turned into examples and written batch by batch: memory stays flat in
    the source's length."""
    params = ExampleParams(
        token_budget=config.token_budget,
        normal_per_anomalous=config.normal_per_anomalous,
        seed=config.seed,
        prompt_version=config.prompt_version,
        form=config.prompt_form,
        rare_share=config.rare_share,
    )
    folder = examples_folder(context.partition_key, params.prompt_version)
    ids = sessions.read(["session_id"]).to_pandas()
    # counted batch by batch: the template ids never become a list per session
    common = common_in_batches(
        sessions.batches(["session_id", "template_ids"]),
        dataset_splits.loc[dataset_splits["split"] == "train", "session_id"].astype(str),
        params.rare_share,
    )
    stats: dict = {}
    seen = {"balance": {}, "tokens": [0, 0, 0], "train_tokens": 0, "head": None}

    def tally(examples: pd.DataFrame) -> None:
        for (split, label), n in examples.groupby(["split", "label"]).size().items():
            key = f"{split}/{'anomalous' if label else 'normal'}"
            seen["balance"][key] = seen["balance"].get(key, 0) + int(n)
        tokens = seen["tokens"]
        tokens[0] += int(examples["est_tokens"].sum())
        tokens[1] += len(examples)
        tokens[2] = max(tokens[2], int(examples["est_tokens"].max()) if len(examples) else 0)
        seen["train_tokens"] += int(examples.loc[examples["split"] == "train", "est_tokens"].sum())
        if seen["head"] is None and len(examples):
            seen["head"] = examples.head(8)[["session_id", "split", "label", "est_tokens", "lines"]]

    files = JsonlFiles(folder)

    def produce():
        with files:
            for examples in example_batches(
                (
                    b.to_pandas()
                    for b in sessions.batches(
                        ["session_id", "text", "n_lines", "template_ids"], rows=SESSION_BATCH
                    )
                ),
                ids["session_id"],
                ground_truth_labels["sessions"],
                dataset_splits,
                params,
                stats,
                common,
            ):
                files.write(examples)
                tally(examples)
                yield pa.Table.from_pandas(examples, schema=EXAMPLE_SCHEMA, preserve_index=False)

    def metadata(head) -> dict:
        total, count, largest = seen["tokens"]
        return {
            "prompt_version": params.prompt_version,
            "prompt_form": params.form,
            "common_templates": len(common),
            "examples": count,
            **seen["balance"],
            **stats,
            "files": dg.MetadataValue.json(files.counts),
            "folder": dg.MetadataValue.path(str(folder)),
            "est_tokens_total": total,
            "est_tokens_mean": dg.MetadataValue.float(round(total / count, 1) if count else 0.0),
            "est_tokens_max": largest,
            # what each form would cost, per example (the chosen one is the one above)
            **{
                f"est_tokens_per_example_{form}_form": dg.MetadataValue.float(
                    round(stats[f"est_tokens_{form}_form"] / count, 1) if count else 0.0
                )
                for form in PROMPT_FORMS
                if f"est_tokens_{form}_form" in stats
            },
            "est_train_tokens": seen["train_tokens"],
            "grader": dg.MetadataValue.md(
                "OpenAI python grader (the reward of core/llm_sessions.py):\n\n```python\n"
                + python_grader()["source"]
                + "```"
            ),
            "preview": preview(
                seen["head"] if seen["head"] is not None else pd.DataFrame(columns=["session_id"])
            ),
        }

    # the stream is written when the output is stored: its files and counts are complete after
    yield dg.Output(output_stream(produce(), metadata, EXAMPLE_SCHEMA))
    test_ids = set(dataset_splits.loc[dataset_splits["split"] == "test", "session_id"])
    leaked = leaked_test_sessions(folder, test_ids)
    repeated = repeated_test_prompts(folder)
    yield dg.AssetCheckResult(
        check_name="no_test_session_in_training_files",
        passed=not leaked,
        metadata={
            "leaked": dg.MetadataValue.json(leaked[:20]),
            "test_sessions": len(test_ids),
            # the same events in two splits: a property of the data, not a leak of a session
            "test_prompts_also_in_training": repeated,
        },
    )


# the assets that call OpenAI's API: per source, in the API pool
api_asset = dg.asset(
    partitions_def=log_source_partitions,
    group_name="llm",
    code_version="1",
    kinds={"openai", "mlflow"},
    pool=LLM_API_POOL,
)


class SessionEvalConfig(dg.Config):
    """What one judging run may cost (which model judges, and where, is the ``judge``
    resource's config)."""

    max_cost_usd: float = Field(
        default=2.0, description="Largest estimated cost of one run; above it nothing is sent."
    )
    prices: dict[str, list[float]] = Field(
        default_factory=dict, description="USD per million input and output tokens, by model."
    )


@api_asset
def llm_session_eval(
    context: dg.AssetExecutionContext,
    config: SessionEvalConfig,
    llm_session_examples: pd.DataFrame,
    judge: SessionJudgeResource,
    tracker: ExperimentTracker,
):
    """A chat model's verdict on every test session, scored against the labels: precision,
    recall, F1, the confusion matrix, unparseable answers (counted, never guessed), tokens and
    cost. Answers are cached by model, prompt version and session: a re-run pays nothing."""
    from logfit_dagster.core.errors import LogfitError
    from logfit_dagster.core.llm_eval import AnswerCache, evaluate_sessions
    from logfit_dagster.resources.labelers import scrub

    source = context.partition_key
    secrets = judge.secrets()
    test = llm_session_examples[llm_session_examples["split"] == "test"].reset_index(drop=True)
    try:
        session_judge = judge.judge()
        model = session_judge.name  # a served model's name says which weights answered
        endpoint = str(session_judge.client.base_url) if judge.serve else judge.endpoint()
        if judge.serve:
            context.log.info(f"judging with {judge.serve} served at {endpoint}")
        try:
            frame, metrics, stats = evaluate_sessions(
                test,
                session_judge,
                AnswerCache(data_dir() / "llm" / "answers.sqlite"),
                max_cost_usd=config.max_cost_usd,
                prices={k: tuple(v) for k, v in config.prices.items()},
                log=context.log.info,
            )
        finally:
            session_judge.close()
    except LogfitError as exc:
        raise dg.Failure(description=scrub(str(exc), secrets), allow_retries=False) from None
    if stats.failed:
        context.log.warning(
            f"{stats.failed} session(s) got no answer (they stay unanswered, never guessed; "
            f"the next run asks again): {scrub('; '.join(stats.problems[:5]), secrets)}"
        )
    cost = stats.cost_usd
    tracker.log_training(
        run_name=f"llm_session_eval/{source}/{model}",
        model_name="",
        params={
            "source": source,
            "model": model,
            "base_url": endpoint or "default",
            "served": judge.serve or "",
            "max_answer_tokens": session_judge.max_tokens or 0,
        },
        metrics={
            **metrics,
            "input_tokens": stats.input_tokens,
            "output_tokens": stats.output_tokens,
        },
        tags={"asset": "llm_session_eval", "family": "llm_judge", "source": source},
    )
    frame["model"] = model
    return dg.Output(
        frame,
        metadata={
            "model": model,
            **{
                k: dg.MetadataValue.float(float(v))
                for k, v in metrics.items()
                if k in ("precision", "recall", "f1", "accuracy")
            },
            **{k: int(metrics[k]) for k in ("tp", "fp", "fn", "tn", "answered", "unanswered")},
            "test_sessions": stats.sessions,
            "test_anomalous": int((test["label"] == 1).sum()),
            "cached_answers": stats.cached,
            "asked": stats.asked,
            "failed": stats.failed,
            "unparseable": stats.unparseable,
            "input_tokens": stats.input_tokens,
            "output_tokens": stats.output_tokens,
            "cost_usd": dg.MetadataValue.float(
                round(cost, 6) if cost is not None else float("nan")
            ),
            "note": "every answer came from the cache: nothing was sent, nothing paid"
            if stats.asked == 0
            else f"{stats.asked} session(s) asked",
        },
    )


class RFTConfig(dg.Config):
    """OpenAI reinforcement fine-tuning of a model that judges sessions."""

    base_model: str = Field(default="o4-mini-2025-04-16", description="The model to fine-tune.")
    n_epochs: str = Field(default="auto", description="Epochs, or 'auto'.")
    batch_size: str = Field(default="auto", description="Examples per batch, or 'auto'.")
    learning_rate_multiplier: str = Field(default="auto", description="A number, or 'auto'.")
    reasoning_effort: str = Field(default="low", description="low, medium, high or default.")
    eval_interval: str = Field(default="auto", description="Steps between evals, or 'auto'.")
    eval_samples: str = Field(default="auto", description="Samples per eval, or 'auto'.")
    grader: str = Field(
        default="python",
        description="'python': the reward function itself; 'multi': its string_check form.",
    )
    max_cost_usd: float = Field(
        default=50.0, description="Refuse to start a job estimated above this."
    )
    usd_per_million_training_tokens: float = Field(
        default=0.0,
        description="For the cost estimate: set it from your price sheet (0: no estimate, "
        "and the cap is not applied).",
    )
    poll_seconds: float = Field(default=10.0, description="First wait between polls (doubles).")
    max_poll_seconds: float = Field(default=300.0, description="Longest wait between polls.")


def rft_folder(source: str, prompt_version: str):
    """The RFT asset's own files: what it uploads, and the journal of the job it started."""
    return examples_folder(source, prompt_version) / "rft"


def _journal(folder, earlier_folder):
    """The job journal; one kept beside the examples by an earlier version is carried over,
    so that a job it started is followed, never started (and paid for) a second time."""
    from logfit_dagster.core.openai_rft import Journal

    journal = Journal(folder / "rft_journal.json")
    earlier = Journal(earlier_folder / "rft_journal.json")
    if not journal.path.is_file() and earlier.path.is_file():
        journal.write(earlier.read())
    return journal


def _number(value: str):
    if value == "auto":
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


@api_asset
def rft_job(
    context: dg.AssetExecutionContext,
    config: RFTConfig,
    llm_session_examples: pd.DataFrame,
    fine_tuning: FineTuningResource,
    tracker: ExperimentTracker,
):
    """The source's sessions judged by a model fine-tuned with OpenAI's reinforcement
    fine-tuning, the grader being the reward every route shares. The job id is journaled before
    anything waits on it: a run that dies is followed up by the next, never started twice.
    Evaluate the model with llm_session_eval (``model``: this asset's ``fine_tuned_model``)."""
    from logfit_dagster.core.errors import LogfitError
    from logfit_dagster.core.llm_sessions import multi_grader
    from logfit_dagster.core.openai_rft import RFTParams, run_rft
    from logfit_dagster.resources.labelers import scrub

    source = context.partition_key
    prompt_version = str(llm_session_examples["prompt_version"].iloc[0])
    # the files to upload are written here from the examples this asset is handed; the same
    # examples give the same bytes, so the journal's key still finds a job already started
    folder = rft_folder(source, prompt_version)
    files = write_jsonl(llm_session_examples, folder, ("rft_train.jsonl", "rft_valid.jsonl"))
    context.log.info(f"RFT files: {files} rows in {folder}")
    client = fine_tuning.client()  # fails clearly without a key
    secrets = fine_tuning.secrets()
    params = RFTParams(
        base_model=config.base_model,
        n_epochs=_number(config.n_epochs),
        batch_size=_number(config.batch_size),
        learning_rate_multiplier=_number(config.learning_rate_multiplier),
        reasoning_effort=config.reasoning_effort,
        eval_interval=_number(config.eval_interval),
        eval_samples=_number(config.eval_samples),
        suffix=f"logfit-{source}"[:40],
    )
    grader = python_grader() if config.grader == "python" else multi_grader()
    step = [0]

    def on_metrics(data: dict) -> None:
        step[0] = int(data.get("step", step[0] + 1))

    try:
        result = run_rft(
            client,
            folder / "rft_train.jsonl",
            folder / "rft_valid.jsonl",
            grader,
            params,
            _journal(folder, examples_folder(source, prompt_version)),
            max_cost_usd=config.max_cost_usd if config.usd_per_million_training_tokens else None,
            usd_per_million_training_tokens=config.usd_per_million_training_tokens or None,
            poll_seconds=config.poll_seconds,
            max_poll_seconds=config.max_poll_seconds,
            log=lambda line: context.log.info(scrub(line, secrets)),
            on_metrics=on_metrics,
        )
    except LogfitError as exc:
        raise dg.Failure(description=scrub(str(exc), secrets), allow_retries=False) from None
    finally:
        client.close()
    history = [
        {"step": int(m.get("step", i + 1)), **{k: v for k, v in m.items() if k != "step"}}
        for i, m in enumerate(result.metrics)
    ]
    final = history[-1] if history else {}
    tracker.log_training(
        run_name=f"rft_job/{source}",
        model_name="",
        params={
            "source": source,
            "grader": config.grader,
            **{k: str(v) for k, v in params.__dict__.items()},
        },
        metrics={k: v for k, v in final.items() if isinstance(v, int | float)},
        step_metrics=[{k: v for k, v in h.items() if isinstance(v, int | float)} for h in history],
        json_artifacts={"rft_job.json": {**result.__dict__}},
        tags={
            "asset": "rft_job",
            "family": "llm_rft",
            "source": source,
            "fine_tuned_model": str(result.fine_tuned_model),
            "job_id": result.job_id,
        },
    )
    frame = pd.DataFrame(
        [
            {
                "source": source,
                "job_id": result.job_id,
                "fine_tuned_model": result.fine_tuned_model,
                "base_model": params.base_model,
                "prompt_version": prompt_version,
            }
        ]
    )
    return dg.Output(
        frame,
        metadata={
            "job_id": result.job_id,
            "fine_tuned_model": str(result.fine_tuned_model),
            "followed_an_earlier_run": result.resumed,
            "checkpoints": dg.MetadataValue.json(result.checkpoints),
            "trained_tokens": int(result.trained_tokens or 0),
            "reward_steps": len(history),
            **{
                f"final_{k}": dg.MetadataValue.float(float(v))
                for k, v in final.items()
                if k != "step" and isinstance(v, int | float)
            },
        },
    )

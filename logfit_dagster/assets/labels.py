"""LOOK/SKIP label sets: per-source labels from an LLM or rules, their quality, the training set."""

import hashlib
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from logfit_dagster.assets._common import (
    bad_input_fails_partition,
    on_new_data,
    output_stream,
    parts_of,
    preview,
    streamed,
)
from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.ground_truth import LineTruth
from logfit_dagster.core.labeling.base import (
    LABEL_SCHEMA,
    ColumnLabeler,
    LabelStats,
    label_batches,
    label_source,
)
from logfit_dagster.core.labeling.prompt import (
    DEFAULT_PROMPT_VERSION,
    DEFAULT_SYSTEM_PROMPT,
    PromptSpec,
)
from logfit_dagster.core.labeling.quality import agreement_of_codes, finite_or_none
from logfit_dagster.core.tables import StoredTable, TableStream
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.labelers import LabelerResource, scrub
from logfit_dagster.resources.sources import LogSources

LLM_API_POOL = "llm_api"
MIN_LABEL_COVERAGE = 0.95


class AskConfig(dg.Config):
    """How the labeler is asked and what a run may spend (every asset that asks it)."""

    context_lines: int = Field(
        default=3, description="distinct plan: lines shown on either side of a line asked."
    )
    window_size: int = Field(default=50, description="Lines per request.")
    model: str = Field(default="", description="Model override; empty means the labeler's own.")
    prompt_version: str = Field(
        default=DEFAULT_PROMPT_VERSION,
        description="Part of the cache key: change it whenever the prompt text changes.",
    )
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, description="The system prompt.")
    max_cost_usd: float = Field(
        default=5.0,
        description="Largest estimated cost of one run; above it the run stops before sending.",
    )
    prices: dict[str, list[float]] = Field(
        default_factory=dict,
        description="USD per million input and output tokens by model, over the built-in table.",
    )
    batch_discount: float = Field(
        default=0.5, description="Price factor of batch APIs (Message Batches are half price)."
    )

    def ask_options(self) -> dict:
        """The keyword arguments of ``label_source`` this config sets."""
        return {
            "prompt": PromptSpec(system=self.system_prompt, version=self.prompt_version),
            "window_size": self.window_size,
            "context_lines": self.context_lines,
            "max_cost_usd": self.max_cost_usd,
            "prices": {k: tuple(v) for k, v in self.prices.items()},
            "batch_discount": self.batch_discount,
        }


class LabelConfig(AskConfig):
    """What the labeler is asked and what a run may spend."""

    plan: Literal["windows", "distinct"] = Field(
        default="windows",
        description="windows: every line is sent, window_size consecutive lines a request. "
        "distinct: one line per line shape not answered yet (for any source, by this labeler, "
        "model and prompt version) is sent among its neighbours, and every other line of the "
        "shape takes its answer (label_source 'propagated').",
    )
    shape_samples: int = Field(
        default=1,
        description="distinct plan: answers wanted per shape, each from another place; shapes "
        "answered two ways are flagged and their propagated lines left unlabelled.",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="labels",
    code_version="1",
    kinds={"parquet"},
    pool=LLM_API_POOL,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
    ins={"raw_logs": streamed()},
    # API-bound: no backfill policy, so a backfill is Dagster's default of one run per source
    # and one source's failure stops only itself. (An explicit multi_run(1) would mean the same,
    # but jobs that mix it with the ingest assets' default warn on every load.)
    check_specs=[
        dg.AssetCheckSpec(
            "label_coverage",
            asset="llm_labels",
            blocking=True,
            description=f"At least {MIN_LABEL_COVERAGE:.0%} of lines have a label, so that what "
            "feeds the line classifier is not a fragment of the source.",
        )
    ],
)
def llm_labels(
    context: dg.AssetExecutionContext,
    config: LabelConfig,
    raw_logs: StoredTable,
    labeler: LabelerResource,
    sources: LogSources,
):
    """One LOOK/SKIP label per line, from the configured labeler, windows already paid for reused.

    A labeler that answers each line from the line alone (rules, recorded labels) labels the
    source batch by batch, in columns, and the label set is written as it comes: memory stays
    flat however long the source. An API labeler reads the source's lines and asks in windows
    (or distinct shapes) through the cache.

    A sequence source (pre-parsed sessions) has no log lines: nothing is sent, and its label set
    is empty.
    """
    source = context.partition_key
    with bad_input_fails_partition():
        sequences = sources.get(source).is_sequences
    options = config.ask_options()
    prompt = options["prompt"]
    secrets = labeler.secrets()
    try:
        built = labeler.build(config.model)
    except LogfitError as exc:
        raise dg.Failure(description=scrub(str(exc), secrets), allow_retries=False) from None
    if isinstance(built, ColumnLabeler) and not sequences:
        yield from _label_in_columns(context, config, raw_logs, built, prompt.version)
        return
    lines = [] if sequences else raw_logs.read(["raw"]).column("raw").to_pylist()
    try:
        frame, stats = label_source(
            source,
            lines,
            built,
            cache=labeler.cache(),
            plan=config.plan,
            shape_samples=config.shape_samples,
            log=context.log,
            **options,
        )
    except LogfitError as exc:
        raise dg.Failure(description=scrub(str(exc), secrets), allow_retries=False) from None
    except Exception as exc:  # an API or network failure: retried by the retry policy
        raise dg.Failure(description=f"{type(exc).__name__}: {scrub(str(exc), secrets)}") from None
    del lines
    frame["line_number"] = (
        raw_logs.read(["line_number"]).column("line_number").to_numpy()[: len(frame)]
        if len(frame)
        else pd.Series(dtype="int64")
    )
    looks = frame[frame["label"] == "LOOK"]
    stats.look_lines = len(looks)
    metadata = _label_metadata(
        stats, built, config, sequences, looks[["line_number", "raw", "reason"]], secrets
    )
    _warn_about(context, stats, built, source)
    yield dg.Output(frame, metadata=metadata)
    yield _coverage_check(stats)


def _label_in_columns(context, config: LabelConfig, raw_logs: StoredTable, built, version: str):
    """``llm_labels`` through a labeler that answers in columns, written as a stream."""
    stats = LabelStats()
    look_rows: list[pd.DataFrame] = []

    def keep_looks(table: pa.Table) -> None:
        looks = pc.equal(table.column("label"), "LOOK")
        stats.look_lines += int(pc.sum(looks).as_py() or 0)
        if sum(len(f) for f in look_rows) < PREVIEW_ROWS:
            picked = table.filter(looks).select(["line_number", "raw", "reason"])
            look_rows.append(picked.slice(0, PREVIEW_ROWS).to_pandas())

    batches = label_batches(
        context.partition_key,
        raw_logs.batches(["line_number", "raw"]),
        built,
        version,
        stats,
        on_batch=keep_looks,
    )
    # the stream's metadata is read once it is written: the counts are complete then
    stream = output_stream(
        batches,
        lambda head: _label_metadata(
            stats,
            built,
            config,
            False,
            pd.concat(look_rows) if look_rows else pd.DataFrame(columns=["line_number"]),
        ),
        LABEL_SCHEMA,
    )
    yield dg.Output(stream)
    _warn_about(context, stats, built, context.partition_key)
    yield _coverage_check(stats)


PREVIEW_ROWS = 8


def _label_metadata(stats, built, config, sequences, looks, secrets=()) -> dict:
    return {
        "labeler": built.name,
        "model": built.model,
        "prompt_version": config.prompt_version,
        "plan": stats.plan,
        "window_size": config.window_size,
        "lines": stats.lines,
        "look_lines": stats.look_lines,
        "skip_lines": stats.lines - stats.look_lines - stats.unlabeled_lines,
        "unlabeled_lines": stats.unlabeled_lines,
        "windows": stats.windows,
        "cache_hits": stats.cache_hits,
        "requests": stats.requests,
        "followup_requests": stats.followup_requests,
        "resubmitted_requests": stats.resubmitted_requests,
        "failed_requests": stats.failed_requests,
        "batches_submitted": stats.batches_submitted,
        "batches_resumed": stats.batches_resumed,
        "input_tokens": stats.input_tokens,
        "output_tokens": stats.output_tokens,
        "estimated_cost_usd": dg.MetadataValue.float(
            round(stats.estimated_cost_usd, 6) if stats.price_known else float("nan")
        ),
        **(
            {
                "shapes": stats.shapes,
                "shapes_answered_before": stats.shapes_answered_before,
                "direct_lines": stats.direct_lines,
                "propagated_lines": stats.propagated_lines,
                "conflicted_shapes": stats.conflicted_shapes,
                "conflicted_lines": stats.conflicted_lines,
            }
            if stats.plan == "distinct"
            else {}
        ),
        "repaired_replies": stats.repairs,
        "reply_problems": dg.MetadataValue.json([scrub(p, secrets) for p in stats.problems[:20]]),
        "note": label_note(stats, sequences),
        "preview": preview(looks),
    }


def _warn_about(context, stats, built, source: str) -> None:
    if stats.conflicted_shapes:
        context.log.warning(
            f"{stats.conflicted_shapes} line shape(s) of {source} were answered two ways: both "
            f"answers are kept in the reason, and their {stats.conflicted_lines} line(s) are "
            "flagged (shape_conflict); lines not asked themselves stay unlabelled"
        )
    if stats.unlabeled_lines:
        context.log.warning(
            f"{stats.unlabeled_lines} line(s) of {source} have no usable label; they stay "
            "unlabeled (never guessed) and the next run asks again for windows that failed"
        )
    if not stats.price_known:
        context.log.warning(f"no price known for model {built.model}: cost not estimated")


def _coverage_check(stats) -> dg.AssetCheckResult:
    coverage = 1 - stats.unlabeled_lines / max(stats.lines, 1)
    return dg.AssetCheckResult(
        check_name="label_coverage",
        passed=coverage >= MIN_LABEL_COVERAGE,
        metadata={
            "coverage": dg.MetadataValue.float(round(coverage, 6)),
            "unlabeled_lines": stats.unlabeled_lines,
        },
    )


def label_note(stats, sequences: bool = False) -> str:
    """What a labeling run sent and paid, in words that match its numbers."""
    if sequences:
        return (
            "a sequence source: its rows are event ids of pre-parsed sessions, not log lines; "
            "nothing to label"
        )
    what = "window" if stats.plan == "windows" else "request"
    if stats.plan == "columns":
        return (
            "each line answered from itself by the offline labeler, in columns: nothing was "
            "sent, nothing paid"
        )
    if stats.requests == 0 and not stats.batches_resumed:
        if stats.plan == "distinct":
            return (
                f"every one of the {stats.shapes} line shape(s) was answered before: "
                "nothing was sent, nothing paid"
            )
        return "every window came from the cache: nothing was sent, nothing paid"
    if stats.requests == 0:
        return (
            f"{stats.batches_resumed} batch(es) that an earlier run submitted were collected "
            "(paid once, by that submission; the estimated cost is theirs)"
        )
    sent = f"{stats.windows - stats.cache_hits} {what}(s) sent"
    if stats.plan == "distinct":
        sent += (
            f" for {stats.shapes - stats.shapes_answered_before} new line shape(s) of "
            f"{stats.shapes}; {stats.propagated_lines} line(s) took their shape's answer"
        )
    return sent


class QualityConfig(dg.Config):
    f1_floor: float = Field(
        default=0.3,
        description="The check warns when LOOK's F1 against ground-truth anomalies is below this.",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="labels",
    code_version="1",
    kinds={"parquet"},
    automation_condition=on_new_data(),
    ins={
        "llm_labels": streamed(),
        # a line's truth, not its detail text, read in line order beside the labels
        "ground_truth_labels": parts_of("lines", streamed=True),
    },
    check_specs=[
        dg.AssetCheckSpec(
            "look_agrees_with_ground_truth",
            asset="label_quality",
            description="F1 of LOOK against ground-truth anomalous lines is not below the floor.",
        )
    ],
)
def label_quality(
    context: dg.AssetExecutionContext,
    config: QualityConfig,
    llm_labels: StoredTable,
    ground_truth_labels: dict[str, StoredTable],
):
    """Agreement of LOOK labels with ground-truth anomalous lines, where the source has them.

    The labels and the truth are read side by side, batch by batch, into a few bytes a line
    (label, truth, how the label was given)."""
    truth = LineTruth(ground_truth_labels["lines"])
    columns = ["line_number", "label", "labeler", "model"]
    # label sets written before the distinct plan: every label answered for its own line
    has_source = "label_source" in llm_labels.column_names
    predicted, reference, kinds = [], [], []
    labeler = model = ""
    for batch in llm_labels.batches(columns + (["label_source"] if has_source else [])):
        if not labeler and batch.num_rows:
            labeler = str(batch.column("labeler")[0].as_py() or "")
            model = str(batch.column("model")[0].as_py() or "")
        label = batch.column("label").to_pandas()
        predicted.append(
            np.where(label == "LOOK", 1, np.where(label == "SKIP", 0, -1)).astype(np.int8)
        )
        # a byte a line: 1, 0, or -1 where there is no truth
        reference.append(truth.codes(batch.column("line_number").to_numpy()))
        given = batch.column("label_source").to_pandas() if has_source else None
        kinds.append(
            np.where(given == "propagated", 2, np.where(given == "direct", 1, 0)).astype(np.int8)
            if given is not None
            else np.where(label.notna(), 1, 0).astype(np.int8)
        )
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, np.int8)
    reference_all = np.concatenate(reference) if reference else np.zeros(0, np.int8)
    kind_all = np.concatenate(kinds) if kinds else np.zeros(0, np.int8)
    has_truth = bool((reference_all >= 0).any())
    stats = agreement_of_codes(predicted_all, reference_all)
    confusion = stats.pop("confusion")
    # how the lines that took their shape's answer fare against those asked themselves
    by_source = {}
    for code, kind in ((1, "direct"), (2, "propagated")):
        part = kind_all == code
        if part.any():
            found = agreement_of_codes(predicted_all[part], reference_all[part])
            by_source[kind] = {
                "lines": int(part.sum()),
                "compared": found["compared"],
                **{m: finite_or_none(found[m]) for m in ("precision", "recall", "f1")},
            }
    row = {
        "source": context.partition_key,
        "has_ground_truth": has_truth,
        "labeler": labeler,
        "model": model,
        **stats,
        **confusion,
        **{
            f"{kind}_{name}": value
            for kind, found in by_source.items()
            for name, value in found.items()
        },
    }
    metadata = {
        "has_ground_truth": has_truth,
        "compared_lines": stats["compared"],
        "lines_left_out": stats["left_out"],
        "by_label_source": dg.MetadataValue.json(by_source),
    }
    if has_truth:
        metadata.update(
            {
                name: dg.MetadataValue.float(round(float(stats[name]), 4))
                for name in ("precision", "recall", "f1", "kappa", "accuracy")
                if finite_or_none(stats[name]) is not None
            }
        )
        metadata["confusion_matrix"] = dg.MetadataValue.md(
            "| | truth anomalous | truth normal |\n|---|---|---|\n"
            f"| LOOK | {confusion['tp']} | {confusion['fp']} |\n"
            f"| SKIP | {confusion['fn']} | {confusion['tn']} |"
        )
    else:
        metadata["note"] = "this source has no ground-truth line labels: nothing to compare"
    yield dg.Output(pd.DataFrame([row]), metadata=metadata)
    f1 = finite_or_none(stats["f1"])
    yield dg.AssetCheckResult(
        check_name="look_agrees_with_ground_truth",
        passed=(not has_truth) or (f1 is not None and f1 >= config.f1_floor),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "f1": dg.MetadataValue.float(float(f1) if f1 is not None else float("nan")),
            "floor": dg.MetadataValue.float(config.f1_floor),
            "evaluated": has_truth,
        },
    )


#: The columns of ``labeled_lines``: the training set of the line classifier.
LABELED_COLUMNS = ["line_number", "raw", "label", "reason", "labeler", "model", "prompt_version"]


@dg.asset(
    group_name="labels",
    code_version="1",
    kinds={"parquet"},
    automation_condition=on_new_data(),
    ins={"llm_labels": streamed(partition_mapping=dg.AllPartitionMapping())},
    check_specs=[
        dg.AssetCheckSpec(
            "class_balance",
            asset="labeled_lines",
            description="Both LOOK and SKIP lines, from at least two sources: what the line "
            "classifier needs to learn and to be scored on held-out sources.",
        )
    ],
)
def labeled_lines(
    context: dg.AssetExecutionContext, llm_labels: dict[str, StoredTable], sources: LogSources
):
    """The latest labelled lines of every source, ``source`` kept as the group key: the training
    set of the line classifier. Unlabeled lines are left out and counted.

    Read and written batch by batch (memory flat in lines): a first pass counts and takes the
    content's digest (the data version), the second writes.
    """
    known = sources.all_sources()
    removed = sorted(set(llm_labels) - set(known))
    kept = {s: t for s, t in sorted(llm_labels.items()) if s in known}

    def labelled(columns: list[str]):
        for source, table in kept.items():
            for batch in table.batches(columns):
                batch = batch.filter(pc.is_valid(batch.column("label")))
                if batch.num_rows:
                    yield source, batch

    per_source: dict[str, dict] = {}
    digest = hashlib.sha256()
    for source in kept:
        per_source[source] = {"lines": 0, "look": 0, "labeler": "", "rows": kept[source].num_rows}
    for source, batch in labelled(["raw", "label", "labeler"]):
        entry = per_source[source]
        entry["lines"] += batch.num_rows
        entry["look"] += int(pc.sum(pc.equal(batch.column("label"), "LOOK")).as_py() or 0)
        entry["labeler"] = entry["labeler"] or str(batch.column("labeler")[0].as_py() or "")
        # the data version is the training set's content: a new source's labels (or a removed
        # source) move it and the line model is requested again; an identical set requests
        # nothing
        frame = batch.select(["raw", "label"]).to_pandas().astype("string")
        frame.insert(0, "source", source)
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    left_out = sum(e["rows"] - e["lines"] for e in per_source.values())
    with_lines = [s for s, e in per_source.items() if e["lines"]]
    lines = sum(e["lines"] for e in per_source.values())
    look = sum(e["look"] for e in per_source.values())
    missing = sorted(
        name for name, spec in known.items() if name not in llm_labels and not spec.is_sequences
    )

    def written():
        for source, batch in labelled(LABELED_COLUMNS):
            batch = batch.select(LABELED_COLUMNS)
            yield batch.add_column(0, "source", pa.repeat(pa.scalar(source), batch.num_rows))

    metadata = {
        "sources": len(with_lines),
        "lines": lines,
        "look_lines": look,
        "unlabeled_lines_left_out": left_out,
        "per_source": dg.MetadataValue.json(
            {
                s: {
                    "lines": e["lines"],
                    "look_rate": round(e["look"] / e["lines"], 4) if e["lines"] else None,
                    "labeler": e["labeler"],
                }
                for s, e in per_source.items()
            }
        ),
        "registered_sources_without_labels": dg.MetadataValue.json(missing),
        "removed_sources_left_out": dg.MetadataValue.json(removed),
        # which sources' labels were read: logfit materialize re-runs this asset (and the line
        # model below it) when that set changes, a source added or removed
        "label_sources": dg.MetadataValue.json(sorted(kept)),
    }
    if missing:
        context.log.warning(
            f"no labels yet for {', '.join(missing)}: materialize llm_labels for them"
        )
    first = next(iter(kept.values()), None)
    schema = pa.schema(
        [("source", pa.string())]
        + [
            first.schema.field(c)
            if first is not None and c in first.schema.names
            else pa.field(c, pa.string())
            for c in LABELED_COLUMNS
        ]
    )
    stream = TableStream(written(), schema)
    version = digest.hexdigest()[:24]
    yield dg.Output(stream, metadata=metadata, data_version=dg.DataVersion(version))
    # a warning, not a stop: with one source (or one class) the line model says itself why it
    # trained nothing, and the rest of the lineage stands
    yield dg.AssetCheckResult(
        check_name="class_balance",
        passed=0 < look < lines and len(with_lines) >= 2,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "look_rate": dg.MetadataValue.float(round(look / max(lines, 1), 4)),
            "sources": len(with_lines),
        },
    )

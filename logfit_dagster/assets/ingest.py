"""Ingest: raw log lines, parsed and templated lines, and the template vocabulary."""

import warnings

import dagster as dg
import pandas as pd
import pyarrow as pa

from logfit_dagster.assets._common import (
    bad_input_fails_partition,
    output_stream,
    preview,
    streamed,
)
from logfit_dagster.core.download import ProgressLog
from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.ingest import (
    RAW_SCHEMA,
    ParseStats,
    RawStats,
    parse_and_mine_batches,
    raw_line_batches,
    template_vocabulary_of_batches,
)
from logfit_dagster.core.registry import SourceSpec
from logfit_dagster.core.sequences import expand_sequences, read_templates
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.core.templates import TemplateMiner, profile_for
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.sources import LogSources

MAX_PARSE_FAILURE_RATE = 0.05

# raw_logs's data version is its source's fingerprint, the root of "unchanged input, nothing to
# recompute"; Dagster marks the parameter beta and would warn on every materialization.
warnings.filterwarnings("ignore", message="Parameter `data_version` of initializer `Output")


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="ingest",
    code_version="1",
    kinds={"parquet"},
)
def raw_logs(context: dg.AssetExecutionContext, sources: LogSources) -> dg.Output:
    """Every line of a log source, numbered from 1 across its files, exactly as read.

    Written batch by batch as the files are read: a source never has to fit in memory. Its data
    version is the source's fingerprint (registry entry and file bytes): re-reading unchanged
    files leaves everything downstream fresh.
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
        files = sources.files(spec, progress=ProgressLog(context.log, spec.name))
        templates = sources.templates_file(spec)
        fingerprint = sources.fingerprint(spec, files + ([templates] if templates else []))
    stats = RawStats()

    def counts(head: pd.DataFrame) -> dict:
        if stats.replaced_bytes:
            context.log.warning(
                f"{stats.replaced_bytes} byte(s) that are not UTF-8, on "
                f"{stats.lines_with_replacements} line(s), were replaced by U+FFFD"
            )
        return {
            "lines": stats.lines,
            "replaced_bytes": dg.MetadataValue.int(stats.replaced_bytes),
            "lines_with_replaced_bytes": stats.lines_with_replacements,
            "preview": preview(head[["line_number", "raw"]]),
        }

    return dg.Output(
        output_stream(raw_line_batches(files, stats), counts, RAW_SCHEMA),
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "origin": spec.origin,
            "files": dg.MetadataValue.json([str(f) for f in files]),
            "fingerprint": fingerprint,
        },
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="ingest",
    code_version="1",
    kinds={"parquet"},
    ins={"raw_logs": streamed()},
    check_specs=[
        dg.AssetCheckSpec(
            "parse_failure_rate",
            asset="parsed_logs",
            description=f"At most {MAX_PARSE_FAILURE_RATE:.0%} of lines fail the line format.",
        )
    ],
)
def parsed_logs(context: dg.AssetExecutionContext, raw_logs: StoredTable, sources: LogSources):
    """Lines split into header fields and content, each with its Drain3 template id and template.

    Parsed and mined batch by batch (see ``parse_and_mine_batches``). A sequence source's rows
    are the events of its sessions instead (see ``core/sequences.py``).
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
        if spec.is_sequences:
            yield from _sequence_events(spec, raw_logs.read(), sources)
            return
        fmt = get_line_format(spec.format, spec.multiline)
        # a source with templates_from starts from that source's templates (its first run)
        miner = TemplateMiner(profile_for(spec.format), sources.seeded_miner_state(spec))
    stats = ParseStats()

    def counts(head: pd.DataFrame) -> dict:
        return {
            "lines": stats.lines,
            "parse_failures": stats.parse_failures,
            "parse_failure_rate": dg.MetadataValue.float(round(_rate(stats), 6)),
            "continuation_lines": stats.continuation_lines,
            "templates": stats.templates,
            "new_templates": stats.new_templates,
            "templates_resumed_from_state": stats.resumed_templates,
            "distinct_masked_forms": stats.distinct_forms,
            "preview": preview(head[["line_number", "content", "template_id", "template"]]),
        }

    batches = parse_and_mine_batches(
        raw_logs.batches(["line_number", "raw"]), fmt, miner, stats, raw_logs.path.parent
    )
    yield dg.Output(
        output_stream(batches, counts, done=miner.save),
        metadata={"format": spec.format, "templates_from": spec.templates_from or "none"},
    )
    # the stream is written by now: its counts are complete
    yield dg.AssetCheckResult(
        check_name="parse_failure_rate",
        passed=_rate(stats) <= MAX_PARSE_FAILURE_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "parse_failures": stats.parse_failures,
            "rate": dg.MetadataValue.float(round(_rate(stats), 6)),
        },
    )


def _rate(stats: ParseStats) -> float:
    return stats.parse_failures / max(stats.lines, 1)


def _sequence_events(spec: SourceSpec, raw_logs: pa.Table, sources: LogSources):
    """parsed_logs of a sequence source: one row per event, each with its session and label."""
    path = sources.templates_file(spec)
    table, stats = expand_sequences(
        raw_logs,
        spec.layout,
        read_templates(path) if path else None,
        spec.labels,
        source=spec.name,
    )
    yield dg.Output(
        table,
        metadata={
            "format": f"sequences ({spec.layout})",
            "lines": stats["events"],
            "parse_failures": 0,
            "templates": stats["event_types"],
            "templates_file": str(path) if path else "none: events are named by their ids",
            "templates_named": stats["templates_named"],
            "sessions": stats["sessions"],
            "normal_sessions": stats["normal_sessions"],
            "anomalous_sessions": stats["anomalous_sessions"],
            "unlabelled_sessions": stats["unlabelled_sessions"],
            "preview": preview(
                table.slice(0, 8)
                .select(["line_number", "session", "template_id", "template"])
                .to_pandas()
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name="parse_failure_rate",
        passed=True,
        metadata={"note": "sequence files: a malformed line fails the step, naming its line"},
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="ingest",
    code_version="1",
    kinds={"parquet"},
    ins={"parsed_logs": streamed()},
)
def log_templates(context: dg.AssetExecutionContext, parsed_logs: StoredTable) -> pd.DataFrame:
    """The template vocabulary of a log source with each template's count and first and last line."""
    vocab = template_vocabulary_of_batches(
        parsed_logs.batches(["line_number", "template_id", "template"])
    )
    context.add_output_metadata(
        {
            "templates": len(vocab),
            "lines": int(vocab["count"].sum()),
            "top_templates": preview(vocab[["template_id", "count", "template"]], rows=10),
        }
    )
    return vocab

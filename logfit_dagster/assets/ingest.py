"""Ingest: raw log lines, parsed and templated lines, and the template vocabulary."""

import warnings

import dagster as dg
import pandas as pd
import pyarrow as pa

from logfit_dagster.assets._common import bad_input_fails_partition, columns_of, preview
from logfit_dagster.core.download import ProgressLog
from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.ingest import parse_and_mine, read_raw_logs, template_vocabulary
from logfit_dagster.core.registry import SourceSpec
from logfit_dagster.core.sequences import expand_sequences, read_templates
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
def raw_logs(context: dg.AssetExecutionContext, sources: LogSources) -> dg.Output[pa.Table]:
    """Every line of a log source, numbered from 1 across its files, exactly as read.

    Its data version is the source's fingerprint (registry entry and file bytes): re-reading
    unchanged files leaves everything downstream fresh.
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
        files = sources.files(spec, progress=ProgressLog(context.log, spec.name))
        table, stats = read_raw_logs(files)
        templates = sources.templates_file(spec)
        fingerprint = sources.fingerprint(spec, files + ([templates] if templates else []))
    if stats.replaced_bytes:
        context.log.warning(
            f"{stats.replaced_bytes} byte(s) that are not UTF-8, on {stats.lines_with_replacements} "
            "line(s), were replaced by U+FFFD"
        )
    return dg.Output(
        table,
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "origin": spec.origin,
            "files": dg.MetadataValue.json(stats.files),
            "lines": stats.lines,
            "replaced_bytes": dg.MetadataValue.int(stats.replaced_bytes),
            "lines_with_replaced_bytes": stats.lines_with_replacements,
            "fingerprint": fingerprint,
            "preview": preview(table.slice(0, 8).select(["line_number", "raw"]).to_pandas()),
        },
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="ingest",
    code_version="1",
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            "parse_failure_rate",
            asset="parsed_logs",
            description=f"At most {MAX_PARSE_FAILURE_RATE:.0%} of lines fail the line format.",
        )
    ],
)
def parsed_logs(context: dg.AssetExecutionContext, raw_logs: pa.Table, sources: LogSources):
    """Lines split into header fields and content, each with its Drain3 template id and template.

    A sequence source's rows are the events of its sessions instead (see ``core/sequences.py``).
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
        if spec.is_sequences:
            yield from _sequence_events(spec, raw_logs, sources)
            return
        fmt = get_line_format(spec.format, spec.multiline)
        miner = TemplateMiner(profile_for(spec.format), sources.miner_state_path(spec.name))
        table, stats = parse_and_mine(raw_logs, fmt, miner)
        miner.save()
    rate = stats.parse_failures / max(stats.lines, 1)
    yield dg.Output(
        table,
        metadata={
            "format": spec.format,
            "lines": stats.lines,
            "parse_failures": stats.parse_failures,
            "parse_failure_rate": dg.MetadataValue.float(round(rate, 6)),
            "continuation_lines": stats.continuation_lines,
            "templates": stats.templates,
            "new_templates": stats.new_templates,
            "templates_resumed_from_state": stats.resumed_templates,
            "distinct_masked_forms": stats.distinct_forms,
            "preview": preview(
                table.slice(0, 8)
                .select(["line_number", "content", "template_id", "template"])
                .to_pandas()
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name="parse_failure_rate",
        passed=rate <= MAX_PARSE_FAILURE_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "parse_failures": stats.parse_failures,
            "rate": dg.MetadataValue.float(round(rate, 6)),
        },
    )


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
    ins={"parsed_logs": columns_of("line_number", "template_id", "template")},
)
def log_templates(context: dg.AssetExecutionContext, parsed_logs: pd.DataFrame) -> pd.DataFrame:
    """The template vocabulary of a log source with each template's count and first and last line."""
    vocab = template_vocabulary(parsed_logs)
    context.add_output_metadata(
        {
            "templates": len(vocab),
            "lines": int(vocab["count"].sum()),
            "top_templates": preview(vocab[["template_id", "count", "template"]], rows=10),
        }
    )
    return vocab

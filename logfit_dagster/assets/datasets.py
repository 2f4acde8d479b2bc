"""Datasets: sessions, ground-truth labels and train/dev/test splits."""

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from logfit_dagster.assets._common import (
    bad_input_fails_partition,
    output_stream,
    parts_of,
    preview,
    streamed,
)
from logfit_dagster.core.ground_truth import collect_stored_ground_truth
from logfit_dagster.core.sessions import SESSION_SCHEMA, SessionStats, sessions_of_batches
from logfit_dagster.core.splits import repeated_content, sequence_keys, split_sessions
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.sources import LogSources

# more anomalous sessions than this share with exactly the events of a normal one: warned
MAX_INDISTINGUISHABLE = 0.10


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="datasets",
    code_version="1",
    kinds={"parquet"},
    ins={"parsed_logs": streamed()},
)
def sessions(
    context: dg.AssetExecutionContext, parsed_logs: StoredTable, sources: LogSources
) -> dg.Output:
    """Lines grouped into sessions (blocks, instances or windows) with template sequences and text.

    Built from the parsed lines in batches, in hash buckets of sessions merged in order of first
    line (see ``sessions_of_batches``): HDFS_v1's 575k blocks in one pass, in bounded memory.
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
    stats = SessionStats()

    def counts(head: pd.DataFrame | None) -> dict:
        frame = head if head is not None else pd.DataFrame(columns=SESSION_SCHEMA.names)
        return {
            "sessions": stats.sessions,
            "lines_in_sessions": stats.lines_in_sessions,
            "lines_outside_sessions": parsed_logs.num_rows - stats.lines_in_sessions,
            "mean_session_lines": dg.MetadataValue.float(
                round(stats.pairs / stats.sessions, 2) if stats.sessions else 0.0
            ),
            "preview": preview(
                frame[["session_id", "first_line", "n_lines", "template_ids", "text"]]
            ),
        }

    batches = sessions_of_batches(
        parsed_logs, spec.session, spec.format, stats, parsed_logs.path.parent
    )
    return dg.Output(
        output_stream(batches, counts, SESSION_SCHEMA),
        metadata={"session_key": spec.session.by},
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="datasets",
    code_version="1",
    kinds={"parquet"},
    ins={"parsed_logs": streamed(), "sessions": streamed()},
)
def ground_truth_labels(
    context: dg.AssetExecutionContext,
    parsed_logs: StoredTable,
    sessions: StoredTable,
    sources: LogSources,
) -> dict:
    """Ground-truth anomaly labels per line and per session, where the source has them.

    Only what the provider needs is read; line labels are written as a stream.
    """
    with bad_input_fails_partition():
        spec = sources.get(context.partition_key)
        truth = collect_stored_ground_truth(
            spec.ground_truth,
            parsed_logs,
            sessions,
            synthetic_labels=sources.synthetic_labels_path(spec.name),
            base_dir=sources.ground_truth_dir(spec),
        )
    groups = truth.sessions
    context.add_output_metadata(
        {
            "provider": truth.provider,
            "has_ground_truth": truth.has_labels,
            "note": truth.note,
            "labelled_lines": truth.labelled_lines,
            "anomalous_lines": truth.anomalous_lines,
            "labelled_sessions": int(groups["label"].notna().sum()),
            "anomalous_sessions": int((groups["label"] == 1).sum()),
            "unlabelled_sessions": int(len(groups) - groups["label"].notna().sum()),
            "session_preview": preview(groups[groups["label"] == 1]),
        }
    )
    return {"lines": truth.lines, "sessions": groups}


class SplitConfig(dg.Config):
    """How sessions are split into train, dev and test."""

    method: str = Field(
        default="stratified",
        description="'stratified' by session label with a fixed seed, or 'chronological' "
        "(train on the earliest sessions, test on the latest).",
    )
    train_fraction: float = Field(default=0.8, description="Share of sessions in train.")
    dev_fraction: float = Field(default=0.1, description="Share of sessions in dev.")
    test_fraction: float = Field(default=0.1, description="Share of sessions in test.")
    seed: int = Field(default=42, description="Shuffle seed of the stratified split.")


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="datasets",
    code_version="1",
    kinds={"parquet"},
    ins={
        # read batch by batch: a session's events become a 64-bit key, never a Python list
        "sessions": streamed(),
        # the session labels only: the line labels of a big source are millions of rows
        "ground_truth_labels": parts_of("sessions"),
    },
    check_specs=[
        dg.AssetCheckSpec(
            "sessions_in_one_split",
            asset="dataset_splits",
            blocking=True,
            description="No session is in two splits, and every session is in one.",
        ),
        dg.AssetCheckSpec(
            "anomalies_distinguishable",
            asset="dataset_splits",
            description="Warns when more than 10% of anomalous sessions have exactly the events "
            "of a normal one; counts the dev and test sessions whose events a training session "
            "repeats (identical content in two splits is the data's, not a leak).",
        ),
    ],
)
def dataset_splits(
    context: dg.AssetExecutionContext,
    config: SplitConfig,
    sessions: StoredTable,
    ground_truth_labels: dict[str, pd.DataFrame],
):
    """Each session's split (train, dev or test) and label, stratified by label with a fixed seed."""
    labels = ground_truth_labels["sessions"][["session_id", "label"]]
    ids = sessions.read(["session_id", "first_line"]).to_pandas()
    # each session's events as a key, for the repeated-content check, in the same row order
    ids["key"] = np.concatenate(
        [
            sequence_keys(batch.column("template_ids"))
            for batch in sessions.batches(["template_ids"])
        ]
        or [np.empty(0, dtype=np.uint64)]
    )
    frame = ids[["session_id", "first_line"]].merge(labels, on="session_id", how="left")
    frame["label"] = frame["label"].astype("Int8")
    try:
        splits = split_sessions(
            frame,
            method=config.method,
            fractions=(config.train_fraction, config.dev_fraction, config.test_fraction),
            seed=config.seed,
        )
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc
    counts = splits.groupby(["split", splits["label"].astype("string").fillna("unknown")]).size()
    balance = {f"{s}/{lab}": int(n) for (s, lab), n in counts.items()}
    duplicated = int(splits["session_id"].duplicated().sum())
    missing = int((~ids["session_id"].isin(splits["session_id"])).sum())
    yield dg.Output(
        splits,
        metadata={
            "method": config.method,
            "seed": config.seed,
            "sessions": len(splits),
            **{
                f"{name}_sessions": int((splits["split"] == name).sum())
                for name in ("train", "dev", "test")
            },
            "label_balance": dg.MetadataValue.json(balance),
            "labelled": bool(frame["label"].notna().any()),
        },
    )
    yield dg.AssetCheckResult(
        check_name="sessions_in_one_split",
        passed=duplicated == 0 and missing == 0,
        metadata={"sessions_in_two_splits": duplicated, "sessions_without_split": missing},
    )
    repeated = repeated_content(ids, splits)
    share = repeated["anomalous_equal_to_normal"] / max(repeated["anomalous"], 1)
    if share > MAX_INDISTINGUISHABLE:
        context.log.warning(
            f"{repeated['anomalous_equal_to_normal']} of {repeated['anomalous']} anomalous "
            "sessions have exactly the events of a normal session: no model of the events can "
            "tell them apart (whatever flags one flags the other), so read recall and precision "
            "with that in mind"
        )
    yield dg.AssetCheckResult(
        check_name="anomalies_distinguishable",
        passed=share <= MAX_INDISTINGUISHABLE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **repeated,
            "share_anomalous_equal_to_normal": dg.MetadataValue.float(round(share, 4)),
        },
    )

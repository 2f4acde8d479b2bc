"""Helpers shared by the asset modules: errors as failures, metadata previews."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd
import pyarrow as pa

from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.tables import TableStream


@contextmanager
def bad_input_fails_partition() -> Iterator[None]:
    """Turn a bad-input error into a step failure whose description names what is wrong."""
    try:
        yield
    except LogfitError as exc:
        # its words are the whole story (the file, the line, the field): no chain of causes
        raise dg.Failure(description=str(exc)) from None


def preview(frame: pd.DataFrame, rows: int = 8, width: int = 120) -> dg.MetadataValue:
    """A markdown preview of a few rows, long cells cut so the table stays readable."""
    head = frame.head(rows).copy()
    for column in head.columns:
        head[column] = head[column].map(lambda v: _cell(v, width))
    return dg.MetadataValue.md(head.to_markdown(index=False))


def _cell(value, width: int) -> str:
    text = (
        str(list(value)[:12])
        if hasattr(value, "__len__") and not isinstance(value, str)
        else str(value)
    )
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def training_op_tags(gpus: int | None = None) -> dict:
    """Tags of training steps: their Kubernetes requests when steps run as Kubernetes Jobs.

    ``dagster-k8s/config`` is read by the k8s_job_executor and the K8sRunLauncher and ignored by
    every other executor. ``gpus`` (default: ``LOGFIT_TRAINING_GPUS``, else 0) adds an
    ``nvidia.com/gpu`` limit and the matching toleration, so GPU training lands on GPU nodes.
    """
    if gpus is None:
        raw = os.environ.get("LOGFIT_TRAINING_GPUS") or "0"
        try:
            gpus = int(raw)
        except ValueError:
            raise ValueError(f"LOGFIT_TRAINING_GPUS={raw!r} is not an integer") from None
    resources: dict = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    pod_spec: dict = {}
    if gpus > 0:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    config: dict = {"container_config": {"resources": resources}}
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {"dagster-k8s/config": config}


def on_new_data(optional: tuple[str, ...] = ()) -> dg.AutomationCondition:
    """``eager()``, except that an upstream materialization whose data version did not change
    (a nightly re-read of unchanged files) requests nothing: the asset waits for new data.

    Requested when it is newly missing, or when a dependency's data version changed (or the
    dependency will be requested in the same tick), and none is missing or in progress.
    ``optional``: dependencies that may never be materialized (the LLM judges, run only when
    asked): their absence holds nothing back, and a new materialization of one still requests
    the asset.
    """
    condition = dg.AutomationCondition.eager().replace(
        "any_deps_updated",
        dg.AutomationCondition.any_deps_match(
            dg.AutomationCondition.data_version_changed()
            | dg.AutomationCondition.will_be_requested()
        ).with_label("any_deps_data_changed"),
    )
    if optional:
        condition = condition.replace(
            "any_deps_missing",
            dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(*optional)),
        )
    return condition.with_label("on_new_data")


def promoted_on_new_data() -> dg.AutomationCondition:
    """A champion's condition: :func:`on_new_data`, and only once every blocking check of its
    inputs (the families' gates) passed; a model that failed its gate is never promoted, by a
    job run or by the automation."""
    return (on_new_data() & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "on_new_data_past_gates"
    )


def columns_of(*columns: str, **asset_in) -> dg.AssetIn:
    """An input read with only these columns (the IO manager honours ``columns`` metadata)."""
    return dg.AssetIn(metadata={"columns": list(columns)}, **asset_in)


def output_stream(
    batches: Iterable[pa.Table],
    counts: Callable[[pd.DataFrame | None], dict],
    schema: pa.Schema | None = None,
    done: Callable[[], None] | None = None,
) -> TableStream:
    """An asset's output as a stream of ``batches`` that the IO manager writes as they come.

    A bad-input error mid-stream fails the step with its words; the first rows are kept (a copy:
    a slice would keep its whole batch) and handed to ``counts``, whose metadata joins the
    output's once the stream is written; ``done`` runs after the last batch.
    """
    head: list[pd.DataFrame] = []

    def produce() -> Iterator[pa.Table]:
        with bad_input_fails_partition():
            for batch in batches:
                if not head:
                    head.append(batch.slice(0, 8).to_pandas())
                yield batch
            if done is not None:
                done()

    return TableStream(produce(), schema, lambda: counts(head[0] if head else None))


def parts_of(
    *parts: str, columns: list[str] | None = None, streamed: bool = False, **asset_in
) -> dg.AssetIn:
    """An input of a folder output (a dict of tables) that loads only these of its tables (and
    of each, only ``columns`` where given); ``streamed``: each as a ``StoredTable``, read batch
    by batch."""
    metadata: dict = {"parts": list(parts)}
    if streamed:
        metadata["format"] = "stream"
    if columns is not None:
        metadata["columns"] = list(columns)
    return dg.AssetIn(metadata=metadata, **asset_in)


def optional(**asset_in) -> dg.AssetIn:
    """An input that is None when its asset stored nothing (a model that was not trained)."""
    return dg.AssetIn(metadata={"optional": True}, **asset_in)


def streamed(**asset_in) -> dg.AssetIn:
    """An input read as a ``StoredTable``, batch by batch, never whole."""
    return dg.AssetIn(metadata={"format": "stream"}, **asset_in)


#: what the session models read of ``sessions``: the template-id sequence of each session
SESSION_SEQUENCES = ("session_id", "template_ids")

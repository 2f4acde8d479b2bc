"""Helpers shared by the asset modules: errors as failures, metadata previews."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd

from logfit_dagster.core.errors import LogfitError


@contextmanager
def bad_input_fails_partition() -> Iterator[None]:
    """Turn a bad-input error into a step failure whose description names what is wrong."""
    try:
        yield
    except LogfitError as exc:
        raise dg.Failure(description=str(exc)) from exc


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

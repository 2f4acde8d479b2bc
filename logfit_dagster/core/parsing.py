"""Header parsing of raw lines into columns, whole columns at a time."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.formats import LineFormat


def column_name(field: str) -> str:
    """The parquet column a header field becomes: ``Component`` -> ``component``."""
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", field).lower()


def parse_lines(
    lines: pa.Array | pa.ChunkedArray, fmt: LineFormat, previous: dict | None = None
) -> pa.Table:
    """Split raw lines into header fields and content.

    A line that does not match the format is kept: its header fields are null, its content is the
    whole line and ``parse_ok`` is false. For a multiline format, a non-matching line that follows
    a matched record is a continuation (a stack-trace frame, say): it inherits that record's
    header fields and counts as parsed, flagged by ``is_continuation``.

    Args:
        previous: for a multiline format read in batches, the header fields of the record the
            batch's first lines may continue (``LineParser`` carries it from batch to batch).

    Returns:
        A table with one column per header field (lower-cased), ``content``, ``parse_ok`` and,
        for multiline formats, ``is_continuation``.
    """
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    extracted = _extract(lines, fmt)
    if fmt.multiline and previous is not None:
        # the record above the batch, as a first row that is dropped once filled forward
        head = pa.StructArray.from_arrays(
            [pa.array([previous.get(f)], pa.string()) for f in fmt.fields], names=list(fmt.fields)
        )
        extracted = pa.concat_arrays([head, extracted.cast(head.type)])
        lines = pa.concat_arrays([pa.array([""], lines.type), lines])
    matched = pc.is_valid(extracted)
    columns: dict[str, pa.Array] = {}
    for field in fmt.fields:
        values = pc.struct_field(extracted, field)
        if field == "Content":
            values = pc.if_else(matched, values, lines)
        else:
            values = pc.utf8_trim_whitespace(values)
        columns[column_name(field)] = values
    if fmt.multiline:
        # A continuation belongs to the record above it; only lines before any record fail.
        for field in fmt.fields:
            if field != "Content":
                name = column_name(field)
                columns[name] = pc.fill_null_forward(columns[name])
        continuation = pc.invert(matched)
        has_record = pc.is_valid(pc.fill_null_forward(pc.if_else(matched, True, None)))
        columns["parse_ok"] = pc.or_(matched, has_record)
        columns["is_continuation"] = pc.and_(continuation, has_record)
    else:
        columns["parse_ok"] = matched
    table = pa.table(columns)
    return table.slice(1) if fmt.multiline and previous is not None else table


class LineParser:
    """``parse_lines`` over the batches of one source: a multiline record that starts in one
    batch continues into the next."""

    def __init__(self, fmt: LineFormat):
        self.fmt = fmt
        self._previous: dict | None = None

    def parse(self, lines: pa.Array | pa.ChunkedArray) -> pa.Table:
        table = parse_lines(lines, self.fmt, self._previous)
        if self.fmt.multiline and table.num_rows and table.column("parse_ok")[-1].as_py():
            last = table.slice(table.num_rows - 1).to_pylist()[0]
            self._previous = {f: last[column_name(f)] for f in self.fmt.fields if f != "Content"}
        return table


def _extract(lines: pa.Array, fmt: LineFormat) -> pa.StructArray:
    """Header fields per line (null where the line does not match), fast pattern first."""
    if not fmt.fast_pattern or fmt.fast_pattern == fmt.pattern:
        return pc.extract_regex(lines, pattern=fmt.pattern)
    fast = pc.extract_regex(lines, pattern=fmt.fast_pattern)
    missed = pc.is_null(fast)
    n_missed = pc.sum(missed).as_py() or 0
    if n_missed == 0:
        return fast
    exact = pc.extract_regex(pc.filter(lines, missed), pattern=fmt.pattern)
    fields = [
        pc.replace_with_mask(pc.struct_field(fast, f), missed, pc.struct_field(exact, f))
        for f in fmt.fields
    ]
    validity = pc.replace_with_mask(pc.is_valid(fast), missed, pc.is_valid(exact))
    return pa.StructArray.from_arrays(fields, names=list(fmt.fields), mask=pc.invert(validity))

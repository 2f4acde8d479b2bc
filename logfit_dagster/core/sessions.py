"""Grouping parsed lines into sessions: by an id in the content, or by line or time windows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.parsing import column_name
from logfit_dagster.core.registry import SessionSpec
from logfit_dagster.core.tables import StoredTable, ahead, spill_folder

BLOCK_ID_PATTERN = r"(blk_-?\d+)"
INSTANCE_ID_PATTERN = (
    r"\[instance: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]"
)

SESSION_COLUMNS = [
    "session_id",
    "first_line",
    "last_line",
    "n_lines",
    "line_numbers",
    "template_ids",
    "text",
]


def line_timestamps(parsed: pd.DataFrame, format_name: str, require: bool = True) -> pd.Series:
    """Timestamps of lines from their header columns, for time windows.

    Raises:
        LogfitError: when the format has no timestamp rule, or (``require``) no line's time can
            be read.
    """
    fmt = get_line_format(format_name)
    if fmt.timestamp_rule is None:
        raise LogfitError(
            f"format {format_name!r} has no timestamp rule: use session 'window' (by line count)"
        )
    columns, rule = fmt.timestamp_rule
    raw = parsed[column_name(columns[0])].astype("string")
    for extra in columns[1:]:
        raw = raw + " " + parsed[column_name(extra)].astype("string")
    if rule == "unix":
        stamps = pd.to_datetime(pd.to_numeric(raw, errors="coerce"), unit="s")
    elif rule == "ISO8601":
        stamps = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    else:
        stamps = pd.to_datetime(raw, errors="coerce", format=rule)
    if require and stamps.notna().sum() == 0:
        raise LogfitError(f"no line's timestamp could be read with the {format_name} format's rule")
    return stamps


def session_keys(parsed: pd.DataFrame, spec: SessionSpec, format_name: str) -> pd.DataFrame:
    """Map lines to session ids: one row per (line_number, session_id) pair.

    A line that names several ids (an HDFS delete of three blocks) belongs to each of them; a line
    that names none belongs to no id session.
    """
    if spec.by in ("block_id", "instance_id", "regex"):
        content = pa.array(parsed["content"].astype("string"), pa.string())
        rows, ids, _ = _findall(content, np.arange(len(parsed)), _id_pattern(spec))
        return pd.DataFrame(
            {
                "line_number": parsed["line_number"].to_numpy()[rows],
                "session_id": ids.to_numpy(zero_copy_only=False),
            }
        )
    if spec.by == "sequence":
        if "session" not in parsed:
            raise LogfitError(
                "session kind 'sequence' needs the 'session' column that origin 'sequences' "
                "writes; other origins group lines by block_id, instance_id, regex or window"
            )
        return pd.DataFrame(
            {
                "line_number": parsed["line_number"].to_numpy(),
                "session_id": parsed["session"].astype("string").to_numpy(),
            }
        )
    if spec.by == "window":
        index = (parsed["line_number"].to_numpy() - 1) // spec.size
        ids = [f"w{int(i):07d}" for i in index]
        return pd.DataFrame({"line_number": parsed["line_number"].to_numpy(), "session_id": ids})
    if spec.by == "time_window":
        stamps = line_timestamps(parsed, format_name).ffill().bfill()
        start = stamps.min()
        index = ((stamps - start).dt.total_seconds() // spec.seconds).astype("int64")
        ids = (start + pd.to_timedelta(index * spec.seconds, unit="s")).dt.strftime(
            "t%Y%m%dT%H%M%S"
        )
        return pd.DataFrame(
            {"line_number": parsed["line_number"].to_numpy(), "session_id": ids.to_numpy()}
        )
    raise LogfitError(f"unknown session kind {spec.by!r}")


def entry_text(parsed: pd.DataFrame) -> pd.Series:
    """Each line as ``<LEVEL> <COMPONENT>: <CONTENT>``, leaving out header parts a format lacks."""
    columns = [c for c in ("level", "component", "content") if c in parsed]
    text = _entry_text(
        pa.table({c: pa.array(parsed[c].astype("string"), pa.string()) for c in columns})
    )
    return pd.Series(text.to_numpy(zero_copy_only=False), index=parsed.index, dtype="string")


def build_sessions(parsed: pd.DataFrame, spec: SessionSpec, format_name: str) -> pd.DataFrame:
    """Group parsed lines into sessions, in order of first appearance.

    Args:
        parsed: parsed lines with ``line_number``, ``content``, ``template_id`` and header columns.
        spec: how to group.
        format_name: the source's line format (for time windows).

    Returns:
        One row per session: its id, first and last line, line count, the line numbers and
        template-id sequence in order, and its text, one ``<LEVEL> <COMPONENT>: <CONTENT>`` per
        line.
    """
    keys = session_keys(parsed, spec, format_name)
    if keys.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SESSION_COLUMNS})
    lines = pd.DataFrame(
        {
            "line_number": parsed["line_number"].to_numpy(),
            "template_id": parsed["template_id"].to_numpy(),
            "text": entry_text(parsed).to_numpy(),
        }
    )
    joined = keys.merge(lines, on="line_number", how="left").sort_values(
        ["line_number"], kind="stable"
    )
    grouped = joined.groupby("session_id", sort=False)
    sessions = pd.DataFrame(
        {
            "first_line": grouped["line_number"].min(),
            "last_line": grouped["line_number"].max(),
            "n_lines": grouped["line_number"].size(),
            "line_numbers": grouped["line_number"].agg(list),
            "template_ids": grouped["template_id"].agg(list),
            "text": grouped["text"].agg("\n".join),
        }
    ).reset_index()
    return sessions.sort_values("first_line", kind="stable").reset_index(drop=True)[SESSION_COLUMNS]


# --- the same sessions from a source read in batches --------------------------------------------

SESSION_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("first_line", pa.int64()),
        ("last_line", pa.int64()),
        ("n_lines", pa.int64()),
        ("line_numbers", pa.list_(pa.int64())),
        ("template_ids", pa.list_(pa.int64())),
        ("text", pa.string()),
    ]
)
# The id of each id session kind is its pattern's first group. The column-wise path extracts
# it with RE2 from a line that names one id; a line with several, and every user pattern, take
# Python's ``re.findall`` (``_findall``), as ``session_keys`` does.
_ID_PATTERNS = {"block_id": BLOCK_ID_PATTERN, "instance_id": INSTANCE_ID_PATTERN}


def _id_pattern(spec: SessionSpec) -> str:
    pattern = _ID_PATTERNS.get(spec.by, spec.pattern)
    return pattern if "(" in pattern else f"({pattern})"


# A line's ids are ranked line_number * _IDS_PER_LINE + their place in the line.
_IDS_PER_LINE = 1024
# Sessions are assembled in hash buckets of about this many (line, session) pairs, then merged.
BUCKET_PAIRS = 250_000
# Sessions are merged in pieces of about this many lines (their text is what weighs).
_MERGE_LINES = 65_536


@dataclass
class SessionStats:
    """What grouping found: sessions, the lines in at least one, and the pairs of both."""

    sessions: int = 0
    lines_in_sessions: int = 0
    pairs: int = 0


def sessions_of_batches(
    parsed: StoredTable,
    spec: SessionSpec,
    format_name: str,
    stats: SessionStats,
    spill_dir: Path,
    bucket_pairs: int = BUCKET_PAIRS,
) -> Iterator[pa.Table]:
    """``build_sessions`` of a parsed source read in batches: the same rows in the same order,
    with memory bounded by the bucket size rather than the source.

    Each batch's (session, line) pairs go to one of several spill files by session; each file is
    grouped on its own (its sessions are whole in it), then the files are merged in order of
    first line. ``stats`` is complete before the first batch is given.
    """
    wanted = ["line_number", "template_id", "content"] + [
        c for c in ("level", "component") if c in parsed.column_names
    ]
    if spec.by == "sequence":
        if "session" not in parsed.column_names:
            session_keys(pd.DataFrame({"line_number": []}), spec, format_name)  # its error
        wanted.append("session")
    clock = None
    if spec.by == "time_window":
        clock = _WindowClock(parsed, spec, format_name)
        wanted += [c for c in clock.columns if c not in wanted]
    buckets = max(1, -(-parsed.num_rows // bucket_pairs))
    codes: dict[str, int] = {}
    with spill_folder(spill_dir) as folder:
        # spills are Arrow IPC files: written and read back as they are, no encoding
        spills = [folder / f"pairs-{b}.arrow" for b in range(buckets)]
        writers: list = [None] * buckets
        # each batch's ids and texts are found in threads (Arrow kernels, outside the GIL) a
        # batch or two ahead; time windows carry a clock from batch to batch, so one at a time
        pool = ThreadPoolExecutor(max_workers=1 if clock is not None else 2)
        try:
            found = ahead(pool, lambda b: _found(b, spec, clock), parsed.batches(wanted), 2)
            for batch, rows, ids, place in found:
                pairs, bucket = _pairs(batch, rows, ids, place, codes, buckets, stats)
                bounds = np.searchsorted(bucket, np.arange(buckets + 1))
                for b in range(buckets):
                    if bounds[b + 1] > bounds[b]:
                        piece = pairs.slice(bounds[b], bounds[b + 1] - bounds[b])
                        if writers[b] is None:
                            writers[b] = pa.ipc.new_file(str(spills[b]), piece.schema)
                        writers[b].write_table(piece)
        finally:
            pool.shutdown(cancel_futures=True)
            for writer in writers:
                if writer is not None:
                    writer.close()
        runs = []
        for b in range(buckets):
            if writers[b] is not None:
                grouped = _group(_read_ipc(spills[b]))
                spills[b].unlink()
                runs.append(_Run(grouped, folder / f"sessions-{b}.arrow"))
                stats.sessions += grouped.num_rows
                del grouped
                pa.default_memory_pool().release_unused()
        yield from _merge(runs)
        if not runs:
            yield SESSION_SCHEMA.empty_table()


def _entry_text(batch: pa.Table) -> pa.Array:
    """``entry_text`` column-wise: ``<LEVEL> <COMPONENT>: <CONTENT>`` without missing parts."""
    content = pc.fill_null(batch.column("content"), "")
    prefix = None
    if "level" in batch.column_names:
        prefix = pc.fill_null(batch.column("level"), "")
    if "component" in batch.column_names:
        component = pc.fill_null(batch.column("component"), "")
        joined = (
            component if prefix is None else pc.binary_join_element_wise(prefix, component, " ")
        )
        prefix = pc.utf8_trim_whitespace(joined)
    if prefix is None:
        return content
    labelled = pc.binary_join_element_wise(prefix, content, ": ")
    return pc.if_else(pc.not_equal(prefix, ""), labelled, content)


def _found(batch: pa.Table, spec: SessionSpec, clock: _WindowClock | None) -> tuple:
    """A batch with its lines' text, and the ids its lines name (see ``_ids``)."""
    batch = batch.append_column("text", _entry_text(batch).cast(pa.string()))
    return (batch, *_ids(batch, spec, clock))


def _pairs(
    batch: pa.Table,
    rows: np.ndarray,
    ids: pa.Array,
    place: np.ndarray,
    codes: dict[str, int],
    buckets: int,
    stats: SessionStats,
) -> tuple[pa.Table, np.ndarray]:
    """One row per (session, line) of a batch, ordered by bucket: code, rank, id, line,
    template and text; and each row's bucket."""
    stats.lines_in_sessions += int(np.count_nonzero(np.diff(rows))) + 1 if len(rows) else 0
    stats.pairs += len(rows)
    distinct = pc.unique(ids)
    code_of = np.fromiter(
        (codes.setdefault(value, len(codes)) for value in distinct.to_pylist()),
        dtype=np.int64,
        count=len(distinct),
    )
    code = code_of[pc.index_in(ids, value_set=distinct).to_numpy(zero_copy_only=False)]
    bucket = code % buckets
    order = np.argsort(bucket, kind="stable")
    rows, code, bucket = rows[order], code[order], bucket[order]
    lines = batch.column("line_number").to_numpy()[rows]
    take = pa.array(rows)
    pairs = pa.table(
        {
            "code": pa.array(code, pa.int64()),
            "rank": pa.array(lines * _IDS_PER_LINE + place[order], pa.int64()),
            "session_id": ids.take(pa.array(order)),
            "line_number": pa.array(lines, pa.int64()),
            "template_id": batch.column("template_id").take(take).cast(pa.int64()),
            "text": batch.column("text").take(take),
        }
    )
    return pairs, bucket


def _ids(
    batch: pa.Table, spec: SessionSpec, clock: _WindowClock | None
) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Each session id a batch's lines name: the row it is on, the id, its place in the row."""
    n = batch.num_rows
    if spec.by == "window":
        index = pc.divide(pc.subtract(batch.column("line_number"), 1), spec.size)
        ids = pc.binary_join_element_wise(
            "w", pc.utf8_lpad(pc.cast(index, pa.string()), 7, "0"), ""
        )
        return np.arange(n), _whole(ids), np.zeros(n, np.int64)
    if spec.by == "time_window":
        return np.arange(n), clock.window_ids(batch), np.zeros(n, np.int64)
    if spec.by == "sequence":
        ids = _whole(pc.cast(batch.column("session"), pa.string()))
        return np.arange(n), ids, np.zeros(n, np.int64)
    pattern = _id_pattern(spec)
    content = _whole(pc.fill_null(batch.column("content"), ""))
    if spec.by not in _ID_PATTERNS:  # a user's pattern: Python's regex, line by line
        return _findall(content, np.arange(n), pattern)
    counts = pc.count_substring_regex(content, pattern=pattern).to_numpy(zero_copy_only=False)
    single = np.flatnonzero(counts == 1)
    named = pattern.replace("(", "(?P<id>", 1)  # RE2 extracts named groups only
    one = pc.struct_field(pc.extract_regex(content.take(pa.array(single)), pattern=named), "id")
    several = np.flatnonzero(counts > 1)
    if not len(several):
        return single, one, np.zeros(len(single), np.int64)
    rows_m, ids_m, place_m = _findall(content.take(pa.array(several)), several, pattern)
    rows = np.concatenate([single, rows_m])
    order = np.lexsort((np.concatenate([np.zeros(len(single), np.int64), place_m]), rows))
    ids = pa.concat_arrays([one.cast(pa.string()), ids_m]).take(pa.array(order))
    return rows[order], ids, np.concatenate([np.zeros(len(single), np.int64), place_m])[order]


def _findall(
    content: pa.Array, rows: np.ndarray, pattern: str
) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """``re.findall`` per line, duplicates within a line dropped, first group where tuples."""
    regex = re.compile(pattern)
    out_rows, out_ids, out_place = [], [], []
    for row, text in zip(rows, content.to_pylist(), strict=True):
        found = [v[0] if isinstance(v, tuple) else v for v in regex.findall(text or "")]
        for place, value in enumerate(dict.fromkeys(found)):
            out_rows.append(row)
            out_ids.append(value)
            out_place.append(min(place, _IDS_PER_LINE - 1))
    return (
        np.asarray(out_rows, dtype=np.int64),
        pa.array(out_ids, pa.string()),
        np.asarray(out_place, dtype=np.int64),
    )


def _whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


class _WindowClock:
    """Time windows over batches: the source's first time and first readable stamp are read in
    a first pass, so each batch's windows are those of the whole source."""

    def __init__(self, parsed: StoredTable, spec: SessionSpec, format_name: str):
        fmt = get_line_format(format_name)
        if fmt.timestamp_rule is None:
            line_timestamps(pd.DataFrame(), format_name)  # its error
        self.columns = [column_name(c) for c in fmt.timestamp_rule[0]]
        self.format_name, self.seconds = format_name, spec.seconds
        self.start = self.first = None
        for batch in parsed.batches(self.columns):
            stamps = line_timestamps(batch.to_pandas(), format_name, require=False).dropna()
            if len(stamps):
                self.first = stamps.iloc[0] if self.first is None else self.first
                low = stamps.min()
                self.start = low if self.start is None else min(self.start, low)
        if self.start is None:
            line_timestamps(pd.DataFrame({c: [] for c in self.columns}), format_name)
        self._last = None

    def window_ids(self, batch: pa.Table) -> pa.Array:
        stamps = line_timestamps(batch.select(self.columns).to_pandas(), self.format_name, False)
        if self._last is not None and len(stamps) and pd.isna(stamps.iloc[0]):
            stamps.iloc[0] = self._last
        stamps = stamps.ffill().fillna(self.first)
        self._last = stamps.iloc[-1] if len(stamps) else self._last
        index = ((stamps - self.start).dt.total_seconds() // self.seconds).astype("int64")
        ids = (self.start + pd.to_timedelta(index * self.seconds, unit="s")).dt.strftime(
            "t%Y%m%dT%H%M%S"
        )
        return pa.array(ids.to_numpy(), pa.string())


def _group(pairs: pa.Table) -> pa.Table:
    """The sessions of one bucket's pairs, in order of their first (line, place)."""
    code = pairs.column("code").to_numpy()
    rank = pairs.column("rank").to_numpy()
    order = np.lexsort((rank, code))
    pairs = pairs.take(pa.array(order))
    code, rank = code[order], rank[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    offsets = pa.array(np.r_[starts, len(code)].astype(np.int32))
    lines = pairs.column("line_number").combine_chunks()
    text = pa.ListArray.from_arrays(offsets, pairs.column("text").combine_chunks())
    ends = np.r_[starts[1:], len(code)] - 1
    sessions = pa.table(
        {
            "first_rank": pa.array(rank[starts]),
            "session_id": pairs.column("session_id").take(pa.array(starts)),
            "first_line": lines.take(pa.array(starts)),
            "last_line": lines.take(pa.array(ends)),
            "n_lines": pa.array(np.diff(np.r_[starts, len(code)]), pa.int64()),
            "line_numbers": pa.ListArray.from_arrays(offsets, lines),
            "template_ids": pa.ListArray.from_arrays(
                offsets, pairs.column("template_id").combine_chunks()
            ),
            "text": pc.binary_join(text, "\n"),
        }
    )
    return sessions.take(pa.array(np.argsort(rank[starts], kind="stable")))


def _read_ipc(path: Path) -> pa.Table:
    with pa.OSFile(str(path)) as handle:
        return pa.ipc.open_file(handle).read_all()


class _Run:
    """One bucket's sessions, sorted by first rank, written to ``path`` in small batches and
    handed out up to a rank at a time (the merge holds a batch of each bucket at most)."""

    def __init__(self, sessions: pa.Table, path: Path):
        self.ranks = sessions.column("first_rank").to_numpy()
        self.lines = sessions.column("n_lines").to_numpy()
        with pa.ipc.new_file(str(path), sessions.schema) as writer:
            writer.write_table(sessions, max_chunksize=1024)
        self._handle = pa.OSFile(str(path))
        self._reader = pa.ipc.open_file(self._handle)
        self._next = 0
        self._rest: pa.Table | None = None

    def _batch(self) -> pa.Table | None:
        if self._next >= self._reader.num_record_batches:
            self._handle.close()
            return None
        self._next += 1
        return pa.Table.from_batches([self._reader.get_batch(self._next - 1)])

    def until(self, rank: int) -> list[pa.Table]:
        pieces = []
        while True:
            if self._rest is None or self._rest.num_rows == 0:
                self._rest = self._batch()
                if self._rest is None:
                    return pieces
            ranks = self._rest.column("first_rank").to_numpy()
            cut = int(np.searchsorted(ranks, rank, side="right"))
            pieces.append(self._rest.slice(0, cut))
            self._rest = self._rest.slice(cut)
            if self._rest.num_rows:
                return pieces


def _merge(runs: list[_Run]) -> Iterator[pa.Table]:
    """The runs' sessions in one order, by first rank, about ``_MERGE_LINES`` lines at a time."""
    if not runs:
        return
    ranks = np.concatenate([run.ranks for run in runs])
    order = np.argsort(ranks, kind="stable")
    ranks = ranks[order]
    lines = np.cumsum(np.concatenate([run.lines for run in runs])[order])
    cuts = np.searchsorted(lines, np.arange(_MERGE_LINES, lines[-1], _MERGE_LINES), side="left")
    for hi in np.unique(np.r_[ranks[cuts], ranks[-1]]).tolist():
        pieces = [piece for run in runs for piece in run.until(hi)]
        chunk = pa.concat_tables(pieces)
        if not chunk.num_rows:
            continue
        order = np.argsort(chunk.column("first_rank").to_numpy(), kind="stable")
        yield chunk.take(pa.array(order)).drop_columns(["first_rank"]).cast(SESSION_SCHEMA)

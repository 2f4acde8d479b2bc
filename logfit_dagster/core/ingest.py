"""From log files to parsed, templated lines: the column-wise ingest path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logfit_dagster.core.formats import LineFormat
from logfit_dagster.core.parsing import LineParser, parse_lines
from logfit_dagster.core.reading import atomic_path, iter_line_batches
from logfit_dagster.core.synthetic import SyntheticLog
from logfit_dagster.core.tables import TableStream, ahead, spill_folder
from logfit_dagster.core.templates import TemplateMiner


@dataclass
class RawStats:
    """What reading a source found."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    replaced_bytes: int = 0
    lines_with_replacements: int = 0


# Bytes of log read per batch: what one batch of every streaming step holds, several times over.
RAW_BATCH_BYTES = 8 << 20

RAW_SCHEMA = pa.schema(
    [
        ("line_number", pa.int64()),
        ("raw", pa.string()),
        ("file", pa.dictionary(pa.int32(), pa.string())),
    ]
)


def raw_line_batches(paths: Iterable[Path], stats: RawStats) -> Iterator[pa.Table]:
    """A source's files as batches of ``line_number`` (1-based, across files), ``raw`` and
    ``file``; ``stats`` is complete once the batches are.

    Raises:
        LogInputError: naming the file that is missing or empty.
    """
    next_line = 1
    for path in paths:
        stats.files.append(str(path))
        for batch in iter_line_batches(Path(path), batch_bytes=RAW_BATCH_BYTES):
            raw = batch.lines
            n = len(batch.lines)
            yield pa.table(
                {
                    "line_number": pa.array(range(next_line, next_line + n), type=pa.int64()),
                    "raw": raw,
                    "file": pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(n, dtype=np.int32)), pa.array([str(path)])
                    ),
                },
                schema=RAW_SCHEMA,
            )
            next_line += n
            stats.replaced_bytes += batch.replaced_bytes
            if batch.replaced_bytes:
                stats.lines_with_replacements += int(
                    pc.sum(pc.match_substring(raw, "\ufffd")).as_py() or 0
                )
    stats.lines = next_line - 1


def read_raw_logs(paths: Iterable[Path]) -> tuple[pa.Table, RawStats]:
    """Read a source's files into one table (see ``raw_line_batches``)."""
    stats = RawStats()
    table = TableStream(raw_line_batches(paths, stats), RAW_SCHEMA).read_all()
    return table.combine_chunks(), stats


@dataclass
class ParseStats:
    """What parsing and mining found."""

    lines: int = 0
    parse_failures: int = 0
    continuation_lines: int = 0
    distinct_forms: int = 0
    templates: int = 0
    new_templates: int = 0
    resumed_templates: int = 0

    def count(self, table: pa.Table, mined) -> None:
        """Add a parsed and mined batch's lines, failures, continuations and new forms."""
        self.lines += table.num_rows
        self.parse_failures += int(pc.sum(pc.invert(table.column("parse_ok"))).as_py() or 0)
        if "is_continuation" in table.column_names:
            self.continuation_lines += int(pc.sum(table.column("is_continuation")).as_py() or 0)
        self.distinct_forms += mined.distinct_forms
        self.new_templates += mined.new_clusters


def _numbered(raw: pa.Table, parsed: pa.Table, template_ids: np.ndarray) -> pa.Table:
    """A parsed batch with its line numbers first and its template ids last."""
    table = parsed.add_column(0, "line_number", raw.column("line_number"))
    return table.append_column("template_id", pa.array(template_ids, type=pa.int64()))


def _with_templates(table: pa.Table, ids: np.ndarray, templates: pa.Array) -> pa.Table:
    """``table`` with each line's template, as a dictionary column (one string per template);
    ``ids`` are the sorted template ids and ``templates`` their texts."""
    codes = np.searchsorted(ids, table.column("template_id").to_numpy()).astype(np.int32)
    return table.append_column(
        "template", pa.DictionaryArray.from_arrays(pa.array(codes), templates)
    )


def parse_and_mine(
    raw: pa.Table, fmt: LineFormat, miner: TemplateMiner
) -> tuple[pa.Table, ParseStats]:
    """Parse headers, mask content and mine templates for a table of raw lines.

    Returns:
        ``line_number``, header columns, ``content``, ``parse_ok`` (and ``is_continuation`` for
        multiline formats), ``template_id`` and ``template``; plus counts.
    """
    parsed = parse_lines(raw.column("raw"), fmt)
    mined = miner.mine(parsed.column("content"))
    table = _numbered(raw, parsed, mined.template_ids)
    stats = ParseStats(resumed_templates=miner.resumed_clusters)
    stats.count(table, mined)
    ids = np.asarray(sorted(mined.templates), dtype=np.int64)
    stats.templates = len(ids)
    templates = pa.array([mined.templates[int(c)] for c in ids], pa.string())
    return _with_templates(table, ids, templates), stats


def parse_and_mine_batches(
    raw_batches: Iterable[pa.Table],
    fmt: LineFormat,
    miner: TemplateMiner,
    stats: ParseStats,
    spill_dir: Path,
) -> Iterator[pa.Table]:
    """``parse_and_mine`` over a source that comes in batches, with the same output.

    A cluster's template can still change while later batches are mined, so the first pass
    writes each parsed batch with its template ids to a spill file in ``spill_dir``; the second
    reads it back and gives every line its cluster's final template. One batch is in memory at a
    time; ``stats`` is complete before the first batch is given.
    """
    parser = LineParser(fmt)
    seen: set[int] = set()

    def prepare(raw: pa.Table) -> tuple[pa.Table, pa.Table, pa.Array]:
        parsed = parser.parse(raw.column("raw"))
        return raw, parsed, miner.mask(parsed.column("content"))

    # Parsing and masking (Arrow kernels, outside the GIL) run a batch or two ahead in threads
    # while this thread mines in order; a multiline record carries from batch to batch, so
    # those formats parse one batch at a time.
    pool = ThreadPoolExecutor(max_workers=1 if fmt.multiline else 2)
    with spill_folder(spill_dir) as folder:
        spill = str(folder / "parsed.arrow")
        try:
            writer = None
            try:
                for raw, parsed, masked in ahead(pool, prepare, raw_batches, 2):
                    mined = miner.mine(parsed.column("content"), masked)
                    seen.update(mined.templates)
                    table = _numbered(raw, parsed, mined.template_ids)
                    if writer is None:  # an Arrow IPC file: written and read back as it is
                        writer = pa.ipc.new_file(spill, table.schema)
                    writer.write_table(table)
                    stats.count(table, mined)
            finally:
                if writer is not None:
                    writer.close()
            stats.templates = len(seen)
            stats.resumed_templates = miner.resumed_clusters
            ids = np.asarray(sorted(seen), dtype=np.int64)
            templates = pa.array([miner.template_of(int(c)) for c in ids], pa.string())
            with pa.OSFile(spill) as handle:
                reader = pa.ipc.open_file(handle)
                for i in range(reader.num_record_batches):
                    batch = pa.Table.from_batches([reader.get_batch(i)])
                    yield _with_templates(batch, ids, templates)
        finally:
            pool.shutdown(cancel_futures=True)


def template_vocabulary_of_batches(batches: Iterable[pa.Table]) -> pd.DataFrame:
    """The templates of a parsed source with their counts and first and last line, from batches
    of ``line_number``, ``template_id`` and ``template``: only per-template counts are held."""
    parts = []
    for batch in batches:
        grouped = batch.select(["template_id", "line_number"]).group_by("template_id")
        part = grouped.aggregate(
            [("line_number", "count"), ("line_number", "min"), ("line_number", "max")]
        ).to_pandas()
        # every line of a template id carries the same (final) template: any one will do
        where = pc.index_in(pa.array(part["template_id"]), value_set=batch.column("template_id"))
        part["template"] = batch.column("template").take(where).cast(pa.string()).to_pandas()
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    grouped = table.groupby("template_id", sort=True)
    vocab = pd.DataFrame(
        {
            "template": grouped["template"].first().astype("string"),
            "count": grouped["line_number_count"].sum(),
            "first_line": grouped["line_number_min"].min(),
            "last_line": grouped["line_number_max"].max(),
        }
    ).reset_index()
    return vocab.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)


def ingest_file_streaming(
    path: Path,
    fmt: LineFormat,
    miner: TemplateMiner,
    out_path: Path,
    progress: Callable[[int], None] | None = None,
) -> ParseStats:
    """Read, parse, mine and write a large file batch by batch, holding one batch in memory.

    The parquet file appears at ``out_path`` only when complete.
    """
    stats, raw_stats = ParseStats(), RawStats()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def raw() -> Iterator[pa.Table]:
        done = 0
        for batch in raw_line_batches([Path(path)], raw_stats):
            yield batch.drop_columns(["file"])
            done += batch.num_rows
            if progress:
                progress(done)

    TableStream(parse_and_mine_batches(raw(), fmt, miner, stats, out_path.parent)).write(out_path)
    return stats


def write_synthetic(log: SyntheticLog, log_path: Path, labels_path: Path) -> None:
    """Write a generated log and its line labels, each file atomically."""
    write_synthetic_chunks([log], log_path, labels_path)


def write_synthetic_chunks(
    chunks: Iterable[SyntheticLog], log_path: Path, labels_path: Path
) -> int:
    """Write a generated log chunk by chunk (``generate_chunks``) with its line labels, each
    file atomically, in the memory of one chunk; returns the lines written."""
    schema = pa.schema([("line_number", pa.int64()), ("label", pa.int8()), ("detail", pa.string())])
    written = 0
    with (
        atomic_path(log_path) as log_tmp,
        atomic_path(labels_path) as labels_tmp,
        open(log_tmp, "w", encoding="utf-8") as log_out,
        pq.ParquetWriter(labels_tmp, schema) as labels_out,
    ):
        for chunk in chunks:
            log_out.write("\n".join(chunk.lines) + "\n")
            n = len(chunk.lines)
            labels_out.write_table(
                pa.table(
                    {
                        "line_number": pa.array(range(written + 1, written + n + 1), pa.int64()),
                        "label": pa.array(chunk.line_labels, type=pa.int8()),
                        "detail": pa.array(chunk.line_details, type=pa.string()),
                    },
                    schema=schema,
                )
            )
            written += n
    return written


def source_fingerprint(spec_text: str, paths: Iterable[Path]) -> str:
    """A digest of a source's registry entry and the bytes of its files, in order.

    It is ``raw_logs``'s data version: unchanged files under an unchanged entry give the same
    fingerprint, so nothing downstream goes stale; a touched but unchanged file changes nothing.
    """
    digest = hashlib.sha256(spec_text.encode())
    for path in paths:
        digest.update(b"\0" + str(Path(path).name).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]

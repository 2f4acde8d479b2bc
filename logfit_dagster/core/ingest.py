"""From log files to parsed, templated lines: the column-wise ingest path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logfit_dagster.core.formats import LineFormat
from logfit_dagster.core.parsing import parse_lines
from logfit_dagster.core.reading import atomic_path, iter_line_batches
from logfit_dagster.core.synthetic import SyntheticLog
from logfit_dagster.core.templates import TemplateMiner


@dataclass
class RawStats:
    """What reading a source found."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    replaced_bytes: int = 0
    lines_with_replacements: int = 0


def read_raw_logs(paths: Iterable[Path]) -> tuple[pa.Table, RawStats]:
    """Read a source's files into one table of ``line_number`` (1-based, across files), ``raw``
    and ``file``.

    Raises:
        LogInputError: naming the file that is missing or empty.
    """
    stats = RawStats()
    chunks: list[pa.Table] = []
    next_line = 1
    for path in paths:
        stats.files.append(str(path))
        for batch in iter_line_batches(Path(path)):
            raw = batch.lines
            n = len(batch.lines)
            chunks.append(
                pa.table(
                    {
                        "line_number": pa.array(range(next_line, next_line + n), type=pa.int64()),
                        "raw": raw,
                        "file": pa.DictionaryArray.from_arrays(
                            pa.array([0] * n, type=pa.int32()), pa.array([str(path)])
                        ),
                    }
                )
            )
            next_line += n
            stats.replaced_bytes += batch.replaced_bytes
            if batch.replaced_bytes:
                stats.lines_with_replacements += int(
                    pc.sum(pc.match_substring(raw, "\ufffd")).as_py() or 0
                )
    stats.lines = next_line - 1
    table = (
        pa.concat_tables(chunks)
        if chunks
        else pa.table(
            {
                "line_number": pa.array([], pa.int64()),
                "raw": pa.array([], pa.string()),
                "file": pa.array([], pa.dictionary(pa.int32(), pa.string())),
            }
        )
    )
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
    template_ids = pa.array(mined.template_ids, type=pa.int64())
    # Templates as a dictionary column: one string per template, not per line.
    ids = sorted(mined.templates)
    codes = np.searchsorted(np.asarray(ids, dtype=np.int64), mined.template_ids).astype(np.int32)
    template = pa.DictionaryArray.from_arrays(
        pa.array(codes, type=pa.int32()), pa.array([mined.templates[c] for c in ids], pa.string())
    )
    table = parsed.add_column(0, "line_number", raw.column("line_number"))
    table = table.append_column("template_id", template_ids).append_column("template", template)
    stats = ParseStats(
        lines=table.num_rows,
        parse_failures=int(pc.sum(pc.invert(table.column("parse_ok"))).as_py() or 0),
        continuation_lines=(
            int(pc.sum(table.column("is_continuation")).as_py() or 0)
            if "is_continuation" in table.column_names
            else 0
        ),
        distinct_forms=mined.distinct_forms,
        templates=len(ids),
        new_templates=mined.new_clusters,
        resumed_templates=miner.resumed_clusters,
    )
    return table, stats


def template_vocabulary(parsed: pd.DataFrame) -> pd.DataFrame:
    """The templates of a parsed source with their counts and first and last line."""
    grouped = parsed.groupby("template_id", sort=True)
    vocab = pd.DataFrame(
        {
            "template": grouped["template"].first().astype("string"),
            "count": grouped["line_number"].size(),
            "first_line": grouped["line_number"].min(),
            "last_line": grouped["line_number"].max(),
        }
    ).reset_index()
    return vocab.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)


def ingest_file_streaming(
    path: Path,
    fmt: LineFormat,
    miner: TemplateMiner,
    out_path: Path,
    batch_bytes: int = 16 << 20,
    progress: Callable[[int], None] | None = None,
) -> ParseStats:
    """Read, parse, mine and write a large file batch by batch, holding one batch in memory.

    The parquet file appears at ``out_path`` only when complete.
    """
    total = ParseStats()
    writer = None
    next_line = 1
    with atomic_path(Path(out_path)) as tmp:
        try:
            for batch in iter_line_batches(Path(path), batch_bytes=batch_bytes):
                n = len(batch.lines)
                raw = pa.table(
                    {
                        "line_number": pa.array(range(next_line, next_line + n), type=pa.int64()),
                        "raw": batch.lines,
                    }
                )
                next_line += n
                table, stats = parse_and_mine(raw, fmt, miner)
                # Template strings can change as a cluster generalises: keep ids per batch and
                # the final vocabulary in the miner, so batches share one schema.
                table = table.drop_columns(["template"])
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                total.lines += stats.lines
                total.parse_failures += stats.parse_failures
                total.distinct_forms += stats.distinct_forms
                if progress:
                    progress(total.lines)
        finally:
            if writer is not None:
                writer.close()
    total.templates = len(miner.drain.id_to_cluster)
    return total


def write_synthetic(log: SyntheticLog, log_path: Path, labels_path: Path) -> None:
    """Write a generated log and its line labels, each file atomically."""
    with atomic_path(log_path) as tmp:
        Path(tmp).write_text("\n".join(log.lines) + "\n", encoding="utf-8")
    labels = pa.table(
        {
            "line_number": pa.array(range(1, len(log.lines) + 1), type=pa.int64()),
            "label": pa.array(log.line_labels, type=pa.int8()),
            "detail": pa.array(log.line_details, type=pa.string()),
        }
    )
    with atomic_path(labels_path) as tmp:
        pq.write_table(labels, tmp)


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

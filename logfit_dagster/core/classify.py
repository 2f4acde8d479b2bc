"""Scoring a log file with an exported LOOK/SKIP model, streamed in batches of lines."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.line_scoring import LineScorer
from logfit_dagster.core.reading import atomic_path, iter_line_batches

OUTPUT_FORMATS = (".parquet", ".jsonl")


@dataclass
class ClassifyStats:
    lines: int = 0
    look: int = 0
    distinct_shapes: int = 0
    seconds: float = 0.0
    replaced_bytes: int = 0
    # lines longer than the model's cut: scored on their first characters, written whole
    long_lines: int = 0
    max_chars: int = 0
    # lines longer than the read cap: only their head was read into memory and written
    cut_lines: int = 0
    cut_bytes: int = 0
    first_cut_line: int = 0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else float("nan")


# Characters of one line held in memory at most: a longer line (a gigabyte without a newline)
# is read through, its head scored and written, and the bytes not kept are counted.
MAX_LINE_CHARS = 1_000_000


def classify_file(
    path: Path,
    scorer: LineScorer,
    output: Path | None = None,
    look_out: TextIO | None = None,
    threshold: float | None = None,
    max_line_chars: int = MAX_LINE_CHARS,
    progress=None,
) -> ClassifyStats:
    """Score every line of ``path`` (plain or gzip).

    With ``output`` (``.parquet`` or ``.jsonl``) every line is written with its line number,
    probability, label and ``cut_bytes`` (bytes past ``max_line_chars`` that were not kept),
    atomically; otherwise the LOOK lines are written to ``look_out``, a cut one marked.
    ``progress(bytes_done, bytes_total)`` hears the read, on disk.
    """
    threshold = scorer.threshold if threshold is None else threshold
    if output is not None and Path(output).suffix not in OUTPUT_FORMATS:
        raise LogInputError(f"output {output}: use a .parquet or .jsonl file name")
    look_out = look_out if look_out is not None else sys.stdout
    stats = ClassifyStats(max_chars=getattr(scorer, "max_chars", 0))
    started = time.perf_counter()
    writer = None
    with atomic_path(Path(output)) if output is not None else nullcontext() as tmp:
        handle = open(tmp, "w") if tmp is not None and Path(output).suffix == ".jsonl" else None
        try:
            batches = iter_line_batches(
                Path(path), max_line_chars=max_line_chars, progress=progress
            )
            for batch in batches:
                probability = scorer.score_lines(batch.lines)
                look = probability >= threshold
                stats.lines += len(probability)
                stats.look += int(look.sum())
                stats.replaced_bytes += batch.replaced_bytes
                if stats.max_chars:
                    lengths = pc.utf8_length(pc.fill_null(batch.lines, ""))
                    stats.long_lines += int(
                        pc.sum(pc.greater(lengths, stats.max_chars)).as_py() or 0
                    )
                numbers = np.arange(batch.first_line, batch.first_line + len(probability))
                cut = batch.cut_bytes
                if cut is not None and cut.any():
                    cut_at = np.flatnonzero(cut)
                    stats.cut_lines += len(cut_at)
                    stats.cut_bytes += int(cut.sum())
                    stats.first_cut_line = stats.first_cut_line or int(numbers[cut_at[0]])
                if tmp is None:
                    raws = batch.lines.filter(pa.array(look)).to_pylist()
                    cuts = cut[look] if cut is not None else np.zeros(len(raws), dtype=np.int64)
                    for number, raw, left in zip(numbers[look], raws, cuts, strict=True):
                        more = f" …[{left:,} more bytes not read into memory]" if left else ""
                        look_out.write(f"{number}\t{raw}{more}\n")
                    continue
                table = pa.table(
                    {
                        "line_number": numbers,
                        "probability": probability,
                        "label": np.where(look, "LOOK", "SKIP"),
                        "raw": batch.lines,
                        "cut_bytes": cut if cut is not None else np.zeros(len(numbers), np.int64),
                    }
                )
                if handle is not None:
                    for row in table.to_pylist():
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
            if handle is not None:
                handle.close()
    stats.seconds = time.perf_counter() - started
    stats.distinct_shapes = scorer.shapes_scored
    return stats

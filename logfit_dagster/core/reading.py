"""Reading raw log files: plain or gzipped, undecodable bytes replaced and counted."""

from __future__ import annotations

import codecs
import gzip
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from logfit_dagster.core.errors import LogInputError

_replaced = [0]


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("logfit-count", _count_and_replace)


@dataclass
class LineBatch:
    """A batch of lines of one file: 1-based line numbers continue across batches."""

    path: Path
    first_line: int
    lines: list[str]
    replaced_bytes: int


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_line_batches(path: Path, batch_bytes: int = 32 << 20) -> Iterator[LineBatch]:
    """Stream a log file in batches of whole lines.

    Raises:
        LogInputError: naming the file when it is missing or holds no line.
    """
    path = Path(path)
    if not path.is_file():
        raise LogInputError(f"log file not found: {path}")
    next_line = 1
    carry = b""
    with _open(path) as handle:
        while True:
            block = handle.read(batch_bytes)
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                continue
            carry = block[cut + 1 :]
            batch = _decode(path, next_line, block[: cut + 1])
            next_line += len(batch.lines)
            yield batch
    if carry:
        batch = _decode(path, next_line, carry + b"\n")
        next_line += len(batch.lines)
        yield batch
    if next_line == 1:
        raise LogInputError(f"log file is empty: {path}")


def _decode(path: Path, first_line: int, data: bytes) -> LineBatch:
    _replaced[0] = 0
    text = data.decode("utf-8", errors="logfit-count")
    lines = text.split("\n")
    lines.pop()  # the block ends with a newline: the last piece is empty
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return LineBatch(path, first_line, lines, _replaced[0])


def read_lines(path: Path) -> tuple[list[str], int]:
    """Read a whole file.

    Returns:
        The lines and the number of undecodable bytes that were replaced by U+FFFD.
    """
    lines: list[str] = []
    replaced = 0
    for batch in iter_line_batches(path):
        lines.extend(batch.lines)
        replaced += batch.replaced_bytes
    return lines, replaced


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that replaces it only if the block succeeds.

    A crash or an exception leaves the previous ``target`` untouched and no partial file behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet_atomic(table: pa.Table, target: Path) -> None:
    """Write a parquet file so that readers only ever see a whole file."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)

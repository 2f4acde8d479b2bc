"""Reading raw log files: plain or gzipped, undecodable bytes replaced and counted."""

from __future__ import annotations

import codecs
import glob
import gzip
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    lines: pa.Array
    replaced_bytes: int


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read(handle, path: Path, size: int) -> bytes:
    """A block of bytes; a truncated or fake gzip file is named, not a bare EOFError."""
    try:
        return handle.read(size)
    except (EOFError, OSError, zlib.error) as exc:
        if path.suffix != ".gz":
            raise LogInputError(f"{path}: cannot be read: {exc}") from None
        raise LogInputError(
            f"{path}: cannot be read as gzip ({type(exc).__name__}: {exc or 'truncated'}); "
            "is it complete, and gzip at all?"
        ) from None


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
            block = _read(handle, path, batch_bytes)
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
    """Turn a block of whole lines (ending in a newline) into an Arrow string array.

    Valid UTF-8 is used in place: the newline offsets become the array's offsets, and the
    newline itself (and one carriage return before it) is cut off column-wise.
    """
    replaced = 0
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        _replaced[0] = 0
        data = data.decode("utf-8", errors="logfit-count").encode("utf-8")
        replaced = _replaced[0]
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    offsets = np.empty(len(ends) + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:] = ends + 1
    with_newline = pa.LargeStringArray.from_buffers(
        len(ends), pa.py_buffer(offsets), pa.py_buffer(data)
    )
    lines = pc.utf8_slice_codeunits(with_newline, 0, -1)
    if b"\r" in data:
        lines = pc.replace_substring_regex(lines, pattern="\r$", replacement="")
    return LineBatch(path, first_line, lines.cast(pa.string()), replaced)


def read_lines(path: Path) -> tuple[list[str], int]:
    """Read a whole file.

    Returns:
        The lines and the number of undecodable bytes that were replaced by U+FFFD.
    """
    lines: list[str] = []
    replaced = 0
    for batch in iter_line_batches(path):
        lines.extend(batch.lines.to_pylist())
        replaced += batch.replaced_bytes
    return lines, replaced


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that replaces it only if the block succeeds.

    A crash or an exception leaves the previous ``target`` untouched and no partial file behind;
    the temporary file of a process killed mid-write is removed by the next writer.
    """
    target = Path(target)
    tmp = owned_temp(target.parent, f".{target.name}.", suffix=".tmp")
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def owned_temp(parent: Path, prefix: str, suffix: str = "", folder: bool = False) -> Path:
    """A new temporary file (or ``folder``) under ``parent``, named ``<prefix><pid>.…``.

    What a killed process left under the same prefix (its pid no longer runs) is removed first:
    a ``kill -9`` mid-write leaves nothing behind once the next writer comes.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for left in parent.glob(f"{glob.escape(prefix)}*"):
        owner = re.match(r"\d+", left.name[len(prefix) :])
        if owner and not process_running(int(owner.group())):
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
    named = f"{prefix}{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(dir=parent, prefix=named))
    fd, path = tempfile.mkstemp(dir=parent, prefix=named, suffix=suffix)
    os.close(fd)
    return Path(path)


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_parquet_atomic(table: pa.Table, target: Path) -> None:
    """Write a parquet file so that readers only ever see a whole file."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)

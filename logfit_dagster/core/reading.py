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
    """A batch of lines of one file: 1-based line numbers continue across batches.

    ``cut_bytes`` (when a line cap was asked for) holds, per line, the bytes of the line that
    were not kept: 0 for a whole line.
    """

    path: Path
    first_line: int
    lines: pa.Array
    replaced_bytes: int
    cut_bytes: np.ndarray | None = None


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


# Pseudo-file systems: their "files" are the kernel's state (a process's environment, devices).
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
# How much of a file is looked at to tell text from binary, and the share of NUL or control
# bytes past which it is binary (text logs have none; a NUL-padded tail after a crash is past
# the start, and is read with its bytes counted).
SNIFF_BYTES = 64 << 10
BINARY_SHARE = 0.10
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))


def check_log_file(path: Path) -> os.stat_result:
    """Refuse what is not a log file to read: a missing path, a folder, a device, a FIFO, a
    file of /proc, /sys or /dev, a binary file.

    Raises:
        LogInputError: naming the file and what it is.
    """
    import stat as stat_module

    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LogInputError(f"log file not found: {path}") from None
    except OSError as exc:
        raise LogInputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    real = os.path.realpath(path)
    if any(real == root or real.startswith(root + "/") for root in _PSEUDO_ROOTS):
        raise LogInputError(
            f"{path}: is a file of the kernel's {real.split('/')[1]} file system ({real}), not a "
            "log file: refused"
        )
    if stat_module.S_ISDIR(info.st_mode):
        raise LogInputError(f"{path}: is a folder, not a log file (name the files, or a glob)")
    if not stat_module.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat_module.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat_module.S_ISSOCK(info.st_mode)
            else "a device"
        )
        raise LogInputError(
            f"{path}: is {kind}, not a regular file: write the stream to a file first"
        )
    try:
        with _open(path) as handle:
            head = _read(handle, path, SNIFF_BYTES)
    except PermissionError as exc:
        raise LogInputError(f"{path}: cannot be read: {exc.strerror}") from None
    if head:
        odd = len(head) - len(head.translate(None, _CONTROL))
        if odd > BINARY_SHARE * len(head):
            raise LogInputError(
                f"{path}: looks binary ({odd:,} NUL or control bytes in its first "
                f"{len(head):,}), not a text log: refused"
            )
    return info


def max_inflated_bytes(path: Path, on_disk: int) -> int:
    """How many bytes a gzip file may decompress to: ``LOGFIT_MAX_GZIP_BYTES`` (a number, with
    an optional K, M, G or T), else 100 times its size on disk and at least 1 GiB (text logs
    compress 5 to 30 times; a gzip bomb, thousands)."""
    setting = os.environ.get("LOGFIT_MAX_GZIP_BYTES", "").strip()
    if setting:
        match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", setting, re.IGNORECASE)
        if not match:
            raise LogInputError(
                f"LOGFIT_MAX_GZIP_BYTES={setting!r}: expected a size such as 5000000000 or 20G"
            )
        scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        return int(match.group(1)) * scale[match.group(2).upper()]
    return max(1 << 30, 100 * on_disk)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


def iter_line_batches(
    path: Path,
    batch_bytes: int = 32 << 20,
    max_line_chars: int | None = None,
    progress=None,
) -> Iterator[LineBatch]:
    """Stream a log file in batches of whole lines.

    Args:
        max_line_chars: keep at most this many characters of a line (the rest is read through,
            not held, and counted in ``cut_bytes``): one line of a gigabyte costs no more
            memory than the cap. None keeps lines whole.
        progress: ``progress(bytes_done_on_disk, bytes_on_disk)``, called after each block.

    Raises:
        LogInputError: naming the file when it is missing, not a regular text file, holds no
            line, or is a gzip file that decompresses past its cap.
    """
    path = Path(path)
    info = check_log_file(path)
    cap = max_inflated_bytes(path, info.st_size) if path.suffix == ".gz" else None
    keep_bytes = None if max_line_chars is None else 4 * max_line_chars + 4
    next_line = 1
    carry = b""
    skipped = 0  # bytes of an over-long line read past its kept head
    inflated = 0
    with _open(path) as handle:
        raw_file = getattr(handle, "fileobj", handle)
        while True:
            block = _read(handle, path, batch_bytes)
            if not block:
                break
            inflated += len(block)
            if cap is not None and inflated > cap:
                raise LogInputError(
                    f"{path}: decompresses to more than {_human(cap)} ({_human(info.st_size)} on "
                    f"disk): refused as a likely gzip bomb; set LOGFIT_MAX_GZIP_BYTES (e.g. "
                    f"{max(2, 2 * cap >> 30)}G) to read it"
                )
            if progress is not None:
                progress(raw_file.tell(), info.st_size)
            if skipped:
                cut = block.find(b"\n")
                if cut < 0:
                    skipped += len(block)
                    continue
                skipped += cut
                batch = _decode(path, next_line, carry + b"\n", max_line_chars, skipped)
                next_line += 1
                yield batch
                carry, skipped = b"", 0
                block = block[cut + 1 :]
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                if keep_bytes is not None and len(carry) > keep_bytes:
                    skipped = len(carry) - keep_bytes
                    carry = carry[:keep_bytes]
                continue
            carry = block[cut + 1 :]
            batch = _decode(path, next_line, block[: cut + 1], max_line_chars)
            next_line += len(batch.lines)
            yield batch
            if keep_bytes is not None and len(carry) > keep_bytes:
                skipped = len(carry) - keep_bytes
                carry = carry[:keep_bytes]
    if carry or skipped:
        batch = _decode(path, next_line, carry + b"\n", max_line_chars, skipped)
        next_line += len(batch.lines)
        yield batch
    if next_line == 1:
        raise LogInputError(f"log file is empty: {path}")


def _decode(
    path: Path,
    first_line: int,
    data: bytes,
    max_line_chars: int | None = None,
    skipped: int = 0,
) -> LineBatch:
    """Turn a block of whole lines (ending in a newline) into an Arrow string array.

    Valid UTF-8 is used in place: the newline offsets become the array's offsets, and the
    newline itself (and one carriage return before it) is cut off column-wise. With
    ``max_line_chars``, longer lines keep their head; ``skipped`` bytes of the block's last
    line were read past already (an over-long line).
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
    cut = None
    if max_line_chars is not None:
        whole = pc.binary_length(lines).to_numpy(zero_copy_only=False).astype(np.int64)
        lines = pc.utf8_slice_codeunits(lines, 0, max_line_chars)
        kept = pc.binary_length(lines).to_numpy(zero_copy_only=False).astype(np.int64)
        cut = whole - kept
        if skipped and len(cut):
            cut[-1] += skipped
    return LineBatch(path, first_line, lines.cast(pa.string()), replaced, cut)


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
        # the mode of the file it replaces, or a new file's default (mkstemp makes it 0600)
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
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

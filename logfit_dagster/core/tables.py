"""Tables too big to hold whole: streams of record batches out, parquet row groups in.

An asset that returns a ``TableStream`` hands the storage an iterator of Arrow batches; the
storage writes them one row group at a time, beside the target, and renames the file into
place only when the stream is exhausted (an error mid-stream leaves the previous output). A
reader marked for streaming gets a ``StoredTable``: the stored file, read in batches of the
columns it asks for.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from logfit_dagster.core.errors import StoredOutputError
from logfit_dagster.core.reading import atomic_path, owned_temp

# Rows per batch when reading a stored table, and at most per row group when writing one.
BATCH_ROWS = 64 * 1024


class TableStream:
    """Batches of one table, produced while the storage writes them.

    Args:
        batches: ``pa.RecordBatch`` or ``pa.Table`` pieces, all of one schema (the first one's).
        schema: the table's schema, for a stream that may yield nothing.
        metadata: called once the stream is written; its dict joins the output's metadata (the
            counts a producer only knows at the end).
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch | pa.Table],
        schema: pa.Schema | None = None,
        metadata: Callable[[], dict] | None = None,
    ):
        self._batches = batches
        self.schema = schema
        self._metadata = metadata
        self.rows = 0

    def __iter__(self) -> Iterator[pa.Table]:
        for piece in self._batches:
            table = pa.Table.from_batches([piece]) if isinstance(piece, pa.RecordBatch) else piece
            if self.schema is None:
                self.schema = table.schema
            elif table.schema != self.schema:
                table = table.select(self.schema.names).cast(self.schema)
            self.rows += table.num_rows
            yield table

    def write(self, target: Path) -> int:
        """Write the stream to ``target`` as parquet, atomically; returns the rows written."""
        with atomic_path(Path(target)) as tmp:
            writer = None
            try:
                for table in self:
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table, row_group_size=BATCH_ROWS)
                if writer is None:
                    if self.schema is None:
                        raise ValueError("an empty table stream needs its schema")
                    writer = pq.ParquetWriter(tmp, self.schema)
            finally:
                if writer is not None:
                    writer.close()
                # the allocator keeps freed blocks for reuse: hand them back between assets
                pa.default_memory_pool().release_unused()
        return self.rows

    def metadata(self) -> dict:
        return self._metadata() if self._metadata is not None else {}

    def read_all(self) -> pa.Table:
        """The whole table in memory (for small inputs and tests)."""
        pieces = list(self)
        if not pieces:
            return self.schema.empty_table()
        return pa.concat_tables(pieces)


class StoredTable:
    """A parquet table on disk, read in batches of the columns asked for."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with unreadable_names(self.path):
            # without pre-buffering: a pre-buffered reader keeps every row group it read
            self._file = pq.ParquetFile(self.path, pre_buffer=False)

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    def __len__(self) -> int:
        return self.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def batches(
        self, columns: list[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[pa.Table]:
        """The table in order, ``rows`` at a time, as tables of ``columns`` (all by default)."""
        with unreadable_names(self.path):
            for batch in self._file.iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])

    def read(self, columns: list[str] | None = None) -> pa.Table:
        with unreadable_names(self.path):
            return self._file.read(columns=columns)

    def head(self, rows: int, columns: list[str] | None = None) -> pa.Table:
        return next(self.batches(columns, rows), None) or self.schema.empty_table()


@contextmanager
def unreadable_names(path: Path) -> Iterator[None]:
    """A stored output that cannot be read fails naming its file and what rebuilds it."""
    try:
        yield
    except FileNotFoundError:
        raise StoredOutputError(
            f"{path}: the stored output is missing; the next `logfit materialize` rebuilds it"
        ) from None
    except (pa.ArrowException, OSError) as exc:
        raise StoredOutputError(
            f"{path}: the stored output is unreadable ({exc}); the next `logfit materialize` "
            "rebuilds it"
        ) from None


def stored_stamp(path: Path) -> str | None:
    """Size and modification time of a stored output (a file, or each file of a folder):
    what its materialization wrote, to tell later whether it is still that. None if missing."""
    path = Path(path)
    try:
        if path.is_dir():
            parts = sorted(
                f"{p.name}={p.stat().st_size}:{p.stat().st_mtime_ns}" for p in path.glob("*.parquet")
            )
            return ";".join(parts)
        stat = path.stat()
    except FileNotFoundError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def ahead(pool: ThreadPoolExecutor, work: Callable, items: Iterable, depth: int) -> Iterator:
    """``work(item)`` for each item, in order, with at most ``depth`` items in flight."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextmanager
def spill_folder(parent: Path) -> Iterator[Path]:
    """A private folder under ``parent`` for a step's spill files, removed when the step ends.

    Folders left by a process that was killed (its id no longer runs) are removed first, so a
    ``kill -9`` mid-step leaves nothing behind for long.
    """
    folder = owned_temp(parent, ".spill-", folder=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

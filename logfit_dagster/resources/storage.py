"""Parquet storage of asset outputs under data/, written atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from logfit_dagster.core.errors import StoredOutputError
from logfit_dagster.core.reading import owned_temp, write_parquet_atomic
from logfit_dagster.core.tables import StoredTable, TableStream, stored_stamp, unreadable_names
from logfit_dagster.paths import data_dir

STORED_STAMP = "stored_stamp"


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames and Arrow tables as parquet, one file per asset partition.

    An output that is a dict of frames becomes a folder with one parquet file per key. A
    ``TableStream`` (alone or in such a dict) is written one row group at a time as it is
    produced, so a source never has to fit in memory; its late metadata joins the output's.
    Outputs are written beside their target and renamed into place, so a failed step never
    leaves a half-written file where a good one was.

    An input marked ``format: stream`` (``streamed()``) is a ``StoredTable`` to read in batches;
    one marked ``parts`` (``parts_of()``) loads only those files of a folder output; one marked
    ``optional`` is None when nothing was stored.
    """

    base_dir: str = Field(
        default="",
        description="Root folder of asset outputs; empty means $LOGFIT_DATA_DIR/assets.",
    )

    def _root(self) -> Path:
        return Path(self.base_dir).resolve() if self.base_dir else data_dir() / "assets"

    def _path(
        self, context: dg.OutputContext | dg.InputContext, partition: str | None = None
    ) -> Path:
        key_path = self._root().joinpath(*context.asset_key.path)
        if partition is not None:
            return key_path / partition
        if context.has_asset_partitions:
            partitions = context.asset_partition_keys
            if len(partitions) != 1:
                raise dg.Failure(
                    f"{context.asset_key.to_user_string()}: expected one partition, got "
                    f"{len(partitions)}"
                )
            return key_path / partitions[0]
        return key_path / "all"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            self._write_partitions(context, obj)
            return
        target = self._path(context)
        self._write(target, obj)
        path = target if isinstance(obj, dict) else target.with_suffix(".parquet")
        late = {}
        for stream in obj.values() if isinstance(obj, dict) else [obj]:
            if isinstance(stream, TableStream):
                late.update(stream.metadata())
        context.add_output_metadata(
            {
                **late,
                "path": dg.MetadataValue.path(str(path)),
                # what was written, to tell later whether the file is still it (freshness.py)
                STORED_STAMP: stored_stamp(path) or "",
            }
        )

    def _write_partitions(self, context: dg.OutputContext, obj) -> None:
        """A step over several partitions (a single-run backfill) returns a dict by partition."""
        keys = list(context.asset_partition_keys)
        name = context.asset_key.to_user_string()
        if not isinstance(obj, dict) or set(obj) != set(keys):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise dg.Failure(
                f"{name}: a step over {len(keys)} partitions must return a dict with one entry per "
                f"partition ({', '.join(sorted(keys))}); got {got}"
            )
        late = {}
        for key in keys:
            self._write(self._path(context, key), obj[key])
            # a stream's counts, asked once it is written (the last answer wins a key: a
            # producer that counts across partitions answers for all written so far)
            if isinstance(obj[key], TableStream):
                late.update(obj[key].metadata())
        context.add_output_metadata(
            {
                **late,
                "path": dg.MetadataValue.path(str(self._root().joinpath(*context.asset_key.path))),
            }
        )

    def _write(self, target: Path, obj) -> None:
        if isinstance(obj, dict):
            self._write_bundle(target, obj)
            return
        if isinstance(obj, TableStream):
            obj.write(target.with_suffix(".parquet"))
            return
        table = (
            obj if isinstance(obj, pa.Table) else pa.Table.from_pandas(obj, preserve_index=False)
        )
        write_parquet_atomic(table, target.with_suffix(".parquet"))

    def _write_bundle(self, target: Path, frames: dict) -> None:
        staging = owned_temp(target.parent, f".{target.name}.", folder=True)
        try:
            for name, frame in frames.items():
                if isinstance(frame, TableStream):
                    frame.write(staging / f"{name}.parquet")
                    continue
                table = (
                    frame
                    if isinstance(frame, pa.Table)
                    else pa.Table.from_pandas(frame, preserve_index=False)
                )
                pq.write_table(table, staging / f"{name}.parquet")
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
            os.replace(staging, target)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def load_input(self, context: dg.InputContext):
        try:
            return self._load_input(context)
        except StoredOutputError as exc:
            raise dg.Failure(description=str(exc)) from None

    def _load_input(self, context: dg.InputContext):
        if context.has_asset_partitions and not context.has_partition_key:
            return self._load_partitions(context)
        target = self._path(context)
        if target.is_dir():
            metadata = context.definition_metadata or {}
            streamed, parts = metadata.get("format") == "stream", metadata.get("parts")
            return {
                p.stem: StoredTable(p) if streamed else _read_frame(p, _present(p, metadata))
                for p in sorted(target.glob("*.parquet"))
                if parts is None or p.stem in parts
            }
        path = target.with_suffix(".parquet")
        if not path.exists() and (context.definition_metadata or {}).get("optional"):
            return None  # an input the reader can do without (``optional()``)
        if not path.exists():
            raise dg.Failure(
                f"input {context.asset_key.to_user_string()} has no stored output at {path}: "
                "materialize it first"
            )
        return _read(path, context)

    def _load_partitions(self, context: dg.InputContext) -> dict:
        """Several partitions of an input (an unpartitioned reader, or a single-run backfill).

        Partitions never materialized are absent from the dict; the reading asset reports them.
        """
        root = self._root().joinpath(*context.asset_key.path)
        loaded = {}
        for partition in context.asset_partition_keys:
            path = root / f"{partition}.parquet"
            if path.exists():
                loaded[partition] = _read(path, context)
            elif (root / partition).is_dir():
                loaded[partition] = {
                    p.stem: _read_frame(p) for p in sorted((root / partition).glob("*.parquet"))
                }
        return loaded


def _read(path: Path, context: dg.InputContext):
    """One stored table, as Arrow or pandas, with only the columns the input's ``columns``
    metadata names (``dg.AssetIn(metadata={"columns": [...]})``) and the file has: a reader that
    needs two columns of a million-line table does not load its text."""
    if (context.definition_metadata or {}).get("format") == "stream":
        return StoredTable(path)
    columns = _present(path, context.definition_metadata or {})
    if _wants_arrow(context):
        with unreadable_names(path):
            return pq.read_table(path, columns=columns)
    return _read_frame(path, columns)


def _present(path: Path, metadata: dict) -> list[str] | None:
    """The columns an input's ``columns`` metadata names that the file has (one written before
    a column was new has fewer); None: every column."""
    columns = metadata.get("columns")
    if columns is None:
        return None
    with unreadable_names(path):
        present = set(pq.read_schema(path).names)
    return [c for c in columns if c in present]


def _read_frame(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    with unreadable_names(path):
        return pd.read_parquet(path, columns=columns)


def _wants_arrow(context: dg.InputContext) -> bool:
    """Arrow tables for inputs typed ``pa.Table`` (or dicts of them) or marked ``format: arrow``."""
    typing_type = context.dagster_type.typing_type
    marked = (context.definition_metadata or {}).get("format") == "arrow"
    return marked or typing_type is pa.Table or typing_type == dict[str, pa.Table]

"""Parquet storage of asset outputs under data/, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from logfit_dagster.core.reading import write_parquet_atomic
from logfit_dagster.paths import data_dir


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames and Arrow tables as parquet, one file per asset partition.

    An output that is a dict of frames becomes a folder with one parquet file per key. Outputs
    are written beside their target and renamed into place, so a failed step never leaves a
    half-written file where a good one was.
    """

    base_dir: str = Field(
        default="",
        description="Root folder of asset outputs; empty means $LOGFIT_DATA_DIR/assets.",
    )

    def _root(self) -> Path:
        return Path(self.base_dir).resolve() if self.base_dir else data_dir() / "assets"

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        key_path = self._root().joinpath(*context.asset_key.path)
        if context.has_asset_partitions:
            partitions = context.asset_partition_keys
            if len(partitions) != 1:
                raise dg.Failure(
                    f"{context.asset_key.to_user_string()}: expected one partition, got "
                    f"{len(partitions)}; run one partition per step"
                )
            return key_path / partitions[0]
        return key_path / "all"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        target = self._path(context)
        if isinstance(obj, dict):
            self._write_bundle(target, obj)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(target))})
            return
        table = (
            obj if isinstance(obj, pa.Table) else pa.Table.from_pandas(obj, preserve_index=False)
        )
        write_parquet_atomic(table, target.with_suffix(".parquet"))
        context.add_output_metadata(
            {"path": dg.MetadataValue.path(str(target.with_suffix(".parquet")))}
        )

    def _write_bundle(self, target: Path, frames: dict) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            for name, frame in frames.items():
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
        if context.has_asset_partitions and not context.has_partition_key:
            return self._load_partitions(context)
        target = self._path(context)
        wants_arrow = context.dagster_type.typing_type is pa.Table
        if target.is_dir():
            return {p.stem: pd.read_parquet(p) for p in sorted(target.glob("*.parquet"))}
        path = target.with_suffix(".parquet")
        if not path.exists():
            raise dg.Failure(
                f"input {context.asset_key.to_user_string()} has no stored output at {path}: "
                "materialize it first"
            )
        return pq.read_table(path) if wants_arrow else pd.read_parquet(path)

    def _load_partitions(self, context: dg.InputContext) -> dict:
        """An unpartitioned asset reading a partitioned one: every stored partition, by key.

        Partitions never materialized are absent from the dict; the reading asset reports them.
        """
        root = self._root().joinpath(*context.asset_key.path)
        wants_arrow = context.dagster_type.typing_type is dict[str, pa.Table]
        loaded = {}
        for partition in context.asset_partition_keys:
            path = root / f"{partition}.parquet"
            if path.exists():
                loaded[partition] = pq.read_table(path) if wants_arrow else pd.read_parquet(path)
            elif (root / partition).is_dir():
                loaded[partition] = {
                    p.stem: pd.read_parquet(p) for p in sorted((root / partition).glob("*.parquet"))
                }
        return loaded

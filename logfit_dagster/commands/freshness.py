"""What a re-run has to recompute, read from the materializations Dagster records.

An asset (or one partition of it) is up to date when it has been materialized, with the code
version it has now, from the data versions its inputs have now. Dagster writes what each
materialization was made from into the materialization's tags: ``dagster/code_version``, and per
input ``dagster/input_data_version/<key>`` and ``dagster/input_event_pointer/<key>`` (the storage
id of the input's materialization that was read). This module compares those tags with the
latest materializations, through the public records API only (``fetch_materializations``,
``resolve_all_asset_specs``), so it follows Dagster's releases; it is the same rule the UI uses
for "Materialize changed and missing".

``raw_logs`` has no upstream asset; its data version is the source's fingerprint (registry entry
and file bytes), so a source is unchanged when the fingerprint of its files now equals the one
recorded last time.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import dagster as dg

from logfit_dagster.core.tables import stored_stamp

CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_VERSION_TAG = "dagster/input_data_version/"
INPUT_POINTER_TAG = "dagster/input_event_pointer/"


class Freshness:
    """Stale status of assets and partitions, for one look at the instance."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions):
        self._instance = instance
        self._assets = list(defs.assets or ())
        self._specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
        self._children: dict[dg.AssetKey, set[dg.AssetKey]] = defaultdict(set)
        for spec in self._specs.values():
            for dep in spec.deps:
                self._children[dep.asset_key].add(spec.key)
        self._latest_records: dict[tuple, dg.EventLogRecord | None] = {}
        # (asset, partition) -> why its stored output is not what its materialization wrote
        self.damaged: dict[tuple[dg.AssetKey, str | None], str] = {}

    def job_assets(self, selection: dg.AssetSelection) -> list[dg.AssetKey]:
        return sorted(selection.resolve(self._assets), key=lambda k: k.to_user_string())

    def out_of_date(
        self,
        keys: list[dg.AssetKey],
        partition: str | None = None,
        also: list[dg.AssetKey] = (),
    ) -> list[dg.AssetKey]:
        """The keys that are missing or stale (for one partition of partitioned assets), and
        every key of ``keys`` downstream of one of them.

        An asset is stale only once its inputs have moved: before a run, the downstream of an
        asset about to be recomputed still reads up to date (the line model, when a new
        source's labels are about to change its training set). Those run too, as do the keys
        in ``also`` (known out of date for reasons Dagster does not track).
        """
        wanted = set(keys)
        stale = {key for key in keys if key in also or self._stale(key, partition)}
        frontier = list(stale)
        while frontier:
            for child in self._children[frontier.pop()]:
                if child in wanted and child not in stale:
                    stale.add(child)
                    frontier.append(child)
        return [key for key in keys if key in stale]

    def _stale(self, key: dg.AssetKey, partition: str | None) -> bool:
        """Missing, made by other code, or made from inputs whose data has moved since."""
        spec = self._specs[key]
        partition = partition if spec.partitions_def is not None else None
        record = self._latest_record(key, partition)
        if record is None:
            return True
        damage = _stored_damage(record)
        if damage:
            self.damaged[key, partition] = damage
            return True
        tags = record.asset_materialization.tags or {}
        if spec.code_version and tags.get(CODE_VERSION_TAG) != spec.code_version:
            return True
        for dep in spec.deps:
            dep_spec = self._specs.get(dep.asset_key)
            if dep_spec is None:
                continue  # not defined here: nothing to compare with
            name = dep.asset_key.to_user_string()
            if dep_spec.partitions_def is None:
                moved = self._version(dep.asset_key, None) != tags.get(INPUT_VERSION_TAG + name)
            else:
                # the same source's partition, or every partition for an unpartitioned reader
                pointer = tags.get(INPUT_POINTER_TAG + name, "")
                moved = self._moved_since(
                    dep.asset_key,
                    partition,
                    int(pointer) if pointer.isdigit() else record.storage_id,
                )
            if moved:
                return True
        return False

    def _moved_since(self, key: dg.AssetKey, partition: str | None, pointer: int) -> bool:
        """Whether a partition of ``key`` (``partition``, or any) materialized after
        ``pointer`` (the input that was read) holds a data version other than the one read."""
        newer = self._instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key,
                asset_partitions=[partition] if partition else None,
                after_storage_id=pointer,
            ),
            limit=10_000,
        ).records
        for moved in {record.partition_key for record in newer}:
            read = self._instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=key, asset_partitions=[moved], before_storage_id=pointer + 1
                ),
                limit=1,
            ).records
            if (_data_version(read[0]) if read else None) != self._version(key, moved):
                return True
        return False

    def _latest_record(self, key: dg.AssetKey, partition: str | None):
        """The latest materialization record of ``key`` (and ``partition``), or None."""
        if (key, partition) not in self._latest_records:
            records = self._instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=key, asset_partitions=[partition] if partition else None
                ),
                limit=1,
            ).records
            self._latest_records[key, partition] = records[0] if records else None
        return self._latest_records[key, partition]

    def _version(self, key: dg.AssetKey, partition: str | None) -> str | None:
        record = self._latest_record(key, partition)
        return _data_version(record) if record is not None else None

    def recorded_version(self, key: dg.AssetKey, partition: str | None) -> str | None:
        """The data version of the latest materialization of ``key`` (and ``partition``)."""
        return self._version(key, partition)

    def is_partitioned(self, key: dg.AssetKey) -> bool:
        return self._specs[key].partitions_def is not None

    def has_materialization(self, key: dg.AssetKey, partition: str | None) -> bool:
        """Whether ``key`` (its ``partition``, for a partitioned asset) was ever materialized."""
        return self._latest_record(key, partition if self.is_partitioned(key) else None) is not None

    def downstream_of(self, key: dg.AssetKey, keys: set[dg.AssetKey]) -> bool:
        """Whether ``key`` reads one of ``keys``, directly or not."""
        frontier, seen = list(keys), set(keys)
        while frontier:
            for child in self._children[frontier.pop()]:
                if child == key:
                    return True
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
        return False

    def latest_metadata(self, key: dg.AssetKey, partition: str | None) -> dict:
        """The metadata of the latest materialization of ``key`` (and ``partition``, ignored
        for an unpartitioned asset), as values."""
        if key in self._specs and not self.is_partitioned(key):
            partition = None
        record = self._latest_record(key, partition)
        if record is None:
            return {}
        metadata = record.asset_materialization.metadata
        return {k: getattr(v, "value", v) for k, v in metadata.items()}


def _stored_damage(record: dg.EventLogRecord) -> str | None:
    """Why the output a materialization stored is gone or no longer what it wrote, or None."""
    metadata = record.asset_materialization.metadata
    path = metadata.get("path")
    if path is None:
        return None  # nothing stored by the IO manager (a check, an output kept elsewhere)
    path = Path(path.value)
    now = stored_stamp(path)
    if now is None:
        return f"{path} is missing"
    written = metadata.get("stored_stamp")
    if written is not None and written.value and written.value != now:
        return f"{path} was changed on disk after it was written"
    return None


def _data_version(record: dg.EventLogRecord) -> str | None:
    return (record.asset_materialization.tags or {}).get(DATA_VERSION_TAG)

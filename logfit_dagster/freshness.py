"""What a re-run has to recompute, read from Dagster's own records.

An asset is up to date when Dagster's stale status is FRESH: its code version is the one it was
materialized with and its inputs' data versions have not moved since. ``raw_logs`` has no
upstream asset; its data version is the source's fingerprint (registry entry and file bytes), so
a source is unchanged when the fingerprint of its files now equals the one recorded last time.

Dagster computes stale status for the UI ("Materialize changed and missing") with
``CachingStaleStatusResolver``; it is not a public API, so this module is the one place that
touches it (dagster is pinned to one release in pyproject.toml).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime


class Freshness:
    """Stale status of assets and partitions, for one look at the instance."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions):
        self._instance = instance
        self._graph = defs.resolve_asset_graph()
        view = AssetGraphView(
            temporal_context=TemporalContext(
                effective_dt=get_current_datetime(), last_event_id=None
            ),
            instance=instance,
            asset_graph=self._graph,
        )
        self._resolver = CachingStaleStatusResolver(instance, self._graph, view)

    def job_assets(self, selection: dg.AssetSelection) -> list[dg.AssetKey]:
        return sorted(selection.resolve(self._graph), key=lambda k: k.to_user_string())

    def out_of_date(
        self,
        keys: list[dg.AssetKey],
        partition: str | None = None,
        also: list[dg.AssetKey] = (),
    ) -> list[dg.AssetKey]:
        """The keys that are missing or stale (for one partition of partitioned assets), and
        every key of ``keys`` downstream of one of them.

        Dagster calls an asset stale only once its inputs have moved: before a run, the
        downstream of an asset about to be recomputed still reads FRESH (the line model, when a
        new source's labels are about to change its training set). Those run too, as do the
        keys in ``also`` (known out of date for reasons Dagster does not track).
        """
        wanted = set(keys)
        stale = {
            key
            for key in keys
            if key in also
            or self._resolver.get_status(key, partition if self._partitioned(key) else None)
            != StaleStatus.FRESH
        }
        frontier = list(stale)
        while frontier:
            for child in self._graph.get(frontier.pop()).child_keys:
                if child in wanted and child not in stale:
                    stale.add(child)
                    frontier.append(child)
        return [key for key in keys if key in stale]

    def _partitioned(self, key: dg.AssetKey) -> bool:
        return self._graph.get(key).partitions_def is not None

    def _latest(self, key: dg.AssetKey, partition: str | None):
        """The latest materialization of ``key`` (and ``partition``), or None."""
        records = self._instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key, asset_partitions=[partition] if partition else None
            ),
            limit=1,
        ).records
        return records[0].asset_materialization if records else None

    def recorded_version(self, key: dg.AssetKey, partition: str | None) -> str | None:
        """The data version of the latest materialization of ``key`` (and ``partition``)."""
        materialization = self._latest(key, partition)
        return (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization else None

    def latest_metadata(self, key: dg.AssetKey, partition: str | None) -> dict:
        """The metadata of the latest materialization of ``key`` (and ``partition``), as values."""
        materialization = self._latest(key, partition)
        if materialization is None:
            return {}
        return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}

"""The order in which ``logfit materialize`` runs a selection of the asset graph.

A Dagster run holds one partition (one log source) or none, so a selection that mixes
per-source assets with assets over every source (the line models, the overview) runs in
stages: each asset's stage is the number of times the path to it switches between per-source
and all-source assets. Every stage's per-source assets run once per source, its all-source
assets once; Dagster orders the assets within a run. The stages come from the graph's edges
alone: a new asset or family finds its place with no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg


@dataclass
class Stage:
    """Assets that run together: once per source (``partitioned``) or once."""

    partitioned: bool
    keys: list[dg.AssetKey]
    # per asset of the stage, the inputs from earlier stages it cannot run without
    needs: dict[dg.AssetKey, list[dg.AssetKey]] = field(default_factory=dict)

    groups: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [k.to_user_string() for k in self.keys]

    def label(self, source: str | None, first: bool) -> str:
        """How progress and the summary name one run of the stage."""
        if source is not None:
            return source if first else f"{source} {'+'.join(self.groups)}"
        return f"all sources {'+'.join(self.groups)}"


def plan_stages(defs: dg.Definitions, keys: list[dg.AssetKey]) -> list[Stage]:
    """The stages of ``keys`` in the order they must run."""
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    wanted = set(keys)
    required = _required_inputs(defs)
    layer: dict[dg.AssetKey, int] = {}

    def layer_of(key: dg.AssetKey, seen: tuple = ()) -> int:
        if key in layer:
            return layer[key]
        if key in seen:
            raise ValueError(f"the asset graph has a cycle through {key.to_user_string()}")
        spec = specs[key]
        value = 0
        for dep in spec.deps:
            parent = specs.get(dep.asset_key)
            if parent is None or dep.asset_key not in wanted:
                continue
            switch = (parent.partitions_def is None) != (spec.partitions_def is None)
            value = max(value, layer_of(dep.asset_key, (*seen, key)) + int(switch))
        layer[key] = value
        return value

    for key in wanted:
        layer_of(key)
    stages = []
    for number in sorted(set(layer.values())):
        for partitioned in (True, False):
            members = sorted(
                (
                    k
                    for k in wanted
                    if layer[k] == number and (specs[k].partitions_def is not None) == partitioned
                ),
                key=lambda k: k.to_user_string(),
            )
            if members:
                groups = sorted({specs[k].group_name or "default" for k in members})
                stage = Stage(partitioned, members, groups=groups)
                for key in members:
                    outside = [d for d in required.get(key, []) if d not in members]
                    if outside:
                        stage.needs[key] = outside
                stages.append(stage)
    return stages


def independent_parts(defs: dg.Definitions, keys: list[dg.AssetKey]) -> list[list[dg.AssetKey]]:
    """``keys`` split into the parts no edge of the graph joins (none reads another's assets,
    directly or through the others): parts that can run side by side. The largest first, each
    in ``keys``' order."""
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    wanted = set(keys)
    part_of = {key: key for key in keys}

    def root(key: dg.AssetKey) -> dg.AssetKey:
        while part_of[key] != key:
            part_of[key] = part_of[part_of[key]]
            key = part_of[key]
        return key

    for key in keys:
        for dep in specs[key].deps:
            if dep.asset_key in wanted:
                part_of[root(dep.asset_key)] = root(key)
    parts: dict[dg.AssetKey, list[dg.AssetKey]] = {}
    for key in keys:
        parts.setdefault(root(key), []).append(key)
    return sorted(parts.values(), key=len, reverse=True)


def _required_inputs(defs: dg.Definitions) -> dict[dg.AssetKey, list[dg.AssetKey]]:
    """Per asset, the upstream assets it reads one stored output of and cannot do without:
    not those marked ``optional``, nor those read across every source (what exists is read)."""
    required: dict[dg.AssetKey, list[dg.AssetKey]] = {}
    for assets_def in defs.assets or ():
        if not isinstance(assets_def, dg.AssetsDefinition) or not assets_def.is_executable:
            continue
        node = assets_def.node_def
        for input_name, upstream in assets_def.keys_by_input_name.items():
            metadata = node.input_def_named(input_name).metadata or {}
            if metadata.get("optional"):
                continue
            if isinstance(
                assets_def.get_partition_mapping_for_dep(upstream), dg.AllPartitionMapping
            ):
                continue
            for key in assets_def.keys:
                required.setdefault(key, []).append(upstream)
    return required

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


@dataclass
class Unit:
    """A part of a stage for one source (or for every source): one Dagster run, started once
    the units it reads from have finished."""

    stage: Stage
    keys: list[dg.AssetKey]
    partition: str | None
    label: str
    # the units (by their place in the plan) whose assets it reads
    after: set[int] = field(default_factory=set)
    # a part of the first stage, per source: what the summary row of its source shows, and
    # what the source's later units cannot run without
    first: bool = False

    @property
    def stage_label(self) -> str:
        """How progress and the summary name the whole stage of this unit for its source."""
        return self.stage.label(self.partition, self.first)


def plan_units(defs: dg.Definitions, stages: list[Stage], sources: list[str]) -> list[Unit]:
    """The runs of ``stages`` (every stage of a selection, the first included) as units: each
    stage's parts that no edge joins, once per source for a per-source stage. A unit waits
    only for the units whose assets it reads (for its own source, or for every source), not
    for a whole stage: one source's ingest runs beside another's, and a source's template model
    fine-tunes as soon as the pretrained model is there, while the line models still train. In
    stage order, then part, then source."""
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    units: list[Unit] = []
    for number, stage in enumerate(stages):
        parts = independent_parts(defs, stage.keys)
        for part in parts:
            reads = {dep.asset_key for key in part for dep in specs[key].deps}
            suffix = f" ({part_name(part)})" if len(parts) > 1 else ""
            for partition in sources if stage.partitioned else [None]:
                after = {
                    number
                    for number, unit in enumerate(units)
                    if reads.intersection(unit.keys)
                    and (partition is None or unit.partition in (None, partition))
                }
                first = number == 0 and stage.partitioned
                label = stage.label(partition, number == 0) + suffix
                units.append(Unit(stage, part, partition, label, after, first))
    return units


def part_name(keys: list[dg.AssetKey]) -> str:
    """How progress names a part of a stage: its assets, the first few."""
    names = [key.to_user_string() for key in keys]
    return ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")


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

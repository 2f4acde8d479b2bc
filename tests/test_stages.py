"""The stages ``logfit materialize`` runs a selection in, and the parts of a stage that run side
by side."""

import dagster as dg

from logfit_dagster.commands.stages import independent_parts, plan_stages, plan_units
from logfit_dagster.definitions import defs
from logfit_dagster.jobs import MATERIALIZE_SELECTION


def _names(parts) -> list[list[str]]:
    return [[key.to_user_string() for key in part] for part in parts]


def test_the_line_models_and_the_template_pretraining_are_parts_no_edge_joins():
    keys = list(MATERIALIZE_SELECTION.resolve(list(defs.assets)))
    stages = plan_stages(defs, keys)
    models = next(s for s in stages if not s.partitioned and "template_lm_pretrained" in s.names)
    parts = independent_parts(defs, models.keys)
    assert _names(parts) == [
        [
            "labeled_lines",
            "line_champion",
            "line_transformer_model",
            "look_skip_champion",
            "look_skip_model",
        ],
        ["template_lm_pretrained", "template_vocabulary"],
    ]
    # no asset of one part reads one of another, and every asset is in one part
    part_of = {key: number for number, part in enumerate(parts) for key in part}
    assert sorted(part_of) == sorted(models.keys)
    for spec in defs.resolve_all_asset_specs():
        for dep in spec.deps:
            if spec.key in part_of and dep.asset_key in part_of:
                assert part_of[spec.key] == part_of[dep.asset_key], (spec.key, dep.asset_key)
    # the overview reads every family: one part
    overview = next(s for s in stages if s.names == ["metrics_overview"])
    assert len(independent_parts(defs, overview.keys)) == 1


@dg.asset
def outside() -> int:
    return 0


@dg.asset
def a() -> int:
    return 1


@dg.asset
def b(a: int) -> int:
    return a


@dg.asset
def c(a: int) -> int:
    return a


@dg.asset
def d() -> int:
    return 2


@dg.asset
def e(d: int, outside: int) -> int:
    return d + outside


@dg.asset
def f(outside: int) -> int:
    return outside


def test_parts_largest_first_and_an_asset_outside_the_selection_joins_nothing():
    toy = dg.Definitions(assets=[outside, a, b, c, d, e, f])
    keys = [dg.AssetKey(n) for n in ("f", "e", "d", "c", "b", "a")]
    # resolving a graph reads the current instance's state storage: a live one, whatever the
    # tests before this one in the process left
    with dg.instance_for_test():
        parts = independent_parts(toy, keys)
        alone = independent_parts(toy, [dg.AssetKey("b")])
    # e and f both read ``outside``, which is not selected: they stay apart
    assert _names(parts) == [["c", "b", "a"], ["e", "d"], ["f"]]
    assert _names(alone) == [["b"]]


def test_a_unit_waits_only_for_the_units_it_reads_from():
    """Each source's ingest waits for nothing; the line models and the pretraining for every
    source's ingest; a source's template model waits for the pretraining, not for the line
    models; its scoring waits for the line champion; the overview for the units whose assets
    it reads."""
    keys = list(MATERIALIZE_SELECTION.resolve(list(defs.assets)))
    stages = plan_stages(defs, keys)
    units = plan_units(defs, stages, ["a", "b"])
    number = {(tuple(sorted(_names([u.keys])[0])), u.partition): n for n, u in enumerate(units)}

    def unit(asset: str, source: str | None):
        return next(
            n for (names, partition), n in number.items() if asset in names and partition == source
        )

    ingest = {unit("raw_logs", "a"), unit("raw_logs", "b")}
    assert [units[n].after for n in sorted(ingest)] == [set(), set()]
    assert [units[n].label for n in sorted(ingest)] == ["a", "b"]  # the summary row's name
    assert all(units[n].first for n in ingest) and sum(u.first for u in units) == 2
    assert units[unit("session_model", "a")] is units[unit("raw_logs", "a")]
    lines, pretraining = unit("look_skip_model", None), unit("template_lm_pretrained", None)
    assert units[lines].after == ingest and units[pretraining].after == ingest
    ingest_a, ingest_b = unit("raw_logs", "a"), unit("raw_logs", "b")
    # a source's later units read its own ingest, never another source's
    assert units[unit("template_lm", "a")].after == {ingest_a, pretraining}
    assert units[unit("scored_lines", "b")].after == {ingest_b, lines}
    overview = unit("metrics_overview", None)
    # it reads the line models and every source's template model (which waited for the
    # pretraining), not the scored lines
    assert units[overview].after == {lines, unit("template_lm", "a"), unit("template_lm", "b")}
    assert units[unit("template_lm", "b")].label == (
        "b models+reports (metrics_report, session_champion, template_lm)"
    )
    # its ingest; its scoring; its template model and reports
    assert [u.partition for u in units].count("a") == 3
    assert units[unit("template_lm", "b")].stage_label == "b models+reports"

    # a selection that starts over every source: no source's row comes from its first stage
    keys = [dg.AssetKey("line_champion"), dg.AssetKey("scored_lines")]
    champion, *scoring = plan_units(defs, plan_stages(defs, keys), ["a", "b"])
    assert champion.partition is None and not champion.first
    assert [(u.partition, u.first, u.after) for u in scoring] == [
        ("a", False, {0}),
        ("b", False, {0}),
    ]

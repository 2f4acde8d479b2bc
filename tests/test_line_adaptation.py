"""Adapting the line champion to a new system: the shapes it is least sure of (weighted by their
lines) are asked once through the real SDK, a re-run sends nothing, and the answers make a new
model of their own while the shipped champion stays as it was."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from logfit_dagster.core.line_adaptation import (
    adapt_threshold,
    apply_answers,
    ask_order,
    shape_table,
    uncertainty,
)
from tests.llm_servers import FakeAnthropic, expected_label
from tests.test_labeling_distinct import service_log


def test_uncertainty_is_one_at_the_threshold_and_zero_at_either_end():
    u = uncertainty(np.array([0.0, 0.15, 0.3, 0.65, 1.0]), 0.3)
    assert u.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_shapes_are_asked_by_lines_times_uncertainty():
    lines = ["a 1"] * 50 + ["b 2"] * 10 + ["c 3"] * 200 + ["d 4"] * 3
    p = np.array([0.5] * 50 + [0.3] * 10 + [0.01] * 200 + [0.29] * 3)
    table, index = shape_table(lines, p)
    assert table["lines"].sum() == len(lines) and len(set(index.tolist())) == 4
    ranked = ask_order(table, threshold=0.3)
    # 50 lines at 0.5 (50 x 0.71) and 10 at the threshold (10 x 1.0) outrank 200 sure lines
    # (200 x 0.03) and 3 unsure ones (3 x 0.97)
    assert ranked["lines"].tolist() == [50, 10, 200, 3]
    assert ranked["priority"].round(2).tolist() == [35.71, 10.0, 6.67, 2.9]


def test_answers_override_their_shapes_and_the_threshold_moves_only_when_it_pays():
    pred = np.array([True, False, False, True])
    shapes = np.array([0, 1, 1, 2])
    assert apply_answers(pred, shapes, {1: 1, 2: 0}).tolist() == [True, True, True, False]
    table = pd.DataFrame(
        {"shape_index": [0, 1, 2], "lines": [10, 30, 5], "probability": [0.1, 0.25, 0.6]}
    )
    # LOOK answers at 0.25 and 0.6, SKIP at 0.1: a 0.3 threshold misses 30 LOOK lines
    assert adapt_threshold(table, {0: 0, 1: 1, 2: 1}, 0.3) == 0.25
    assert adapt_threshold(table, {1: 1, 2: 1}, 0.3) == 0.3  # one class: nothing to learn
    assert adapt_threshold(table, {}, 0.3) == 0.3


@pytest.mark.slow  # trains the line champion first
def test_the_adaptation_asset_asks_the_least_sure_shapes_once_and_leaves_the_champion(workdir):
    from logfit_dagster.core.line_scorers import load_line_scorer
    from logfit_dagster.core.models.base import read_manifest
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.labelers import AnthropicLabelerResource
    from tests.graph import ASSETS, offline_resources

    log = workdir / "svc.log"
    log.write_text("\n".join(service_log(600)) + "\n")
    registry = workdir / "sources.yaml"
    registry.write_text(
        registry.read_text() + f"  - {{name: svc, origin: files, path: '{log}'}}\n"
    )
    grid = {"C": [1.0], "char_max_features": [5000], "word_max_features": [2000]}
    with dg.instance_for_test() as instance, FakeAnthropic() as server:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs", "tiny_bgl", "svc"])
        for source in ("tiny_hdfs", "tiny_bgl"):
            assert dg.materialize(
                ASSETS,
                selection=["raw_logs", "llm_labels"],
                partition_key=source,
                instance=instance,
                resources=offline_resources(),
            ).success
        assert dg.materialize(
            ASSETS,
            selection=["labeled_lines", "look_skip_model", "look_skip_champion", "line_champion"],
            instance=instance,
            resources=offline_resources(),
            run_config={"ops": {"look_skip_model": {"config": grid}}},
        ).success
        champion = workdir / "data" / "models" / "line_champion"
        before = read_manifest(champion).files

        labeler = AnthropicLabelerResource(
            api_key=server.api_key, base_url=server.url, poll_interval_s=0.01
        )

        def adapt():
            return dg.materialize(
                ASSETS,
                selection=["raw_logs", "line_adaptation"],
                partition_key="svc",
                instance=instance,
                resources=offline_resources(labeler=labeler),
                run_config={"ops": {"line_adaptation": {"config": {"max_shapes": 3}}}},
            )

        first = adapt()
        assert first.success
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in first.get_asset_materialization_events()
        }["line_adaptation"]
        requests = sum(len(b["requests"]) for b in server.batches.values())
        assert meta["asked_shapes"].value == 3 and meta["answered_shapes"].value == 3
        assert meta["requests"].value == requests >= 1

        # the shapes asked are the three the champion ranks first
        scorer = load_line_scorer(champion)
        lines = log.read_text().splitlines()
        table, _ = shape_table(lines, scorer.score_lines(lines))
        expected = ask_order(table, scorer.threshold)["shape"].head(3).tolist()
        adapted_folder = workdir / "data" / "models" / "line_adaptation" / "svc"
        record = json.loads((adapted_folder / "adaptation.json").read_text())
        assert [a["shape"] for a in record["asked"]] == expected
        assert all(a["label"] in ("LOOK", "SKIP") for a in record["asked"])

        # a re-run asks nothing: every answer is in the label cache
        again = adapt()
        assert again.success
        assert sum(len(b["requests"]) for b in server.batches.values()) == requests
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in again.get_asset_materialization_events()
        }["line_adaptation"]
        assert meta["requests"].value == 0

    # a new model with its own manifest (what it was adapted on); the champion is unchanged
    manifest = read_manifest(adapted_folder)
    assert manifest.extra["adaptation"]["source"] == "svc"
    assert manifest.extra["adaptation"]["answered_shapes"] == 3
    assert read_manifest(champion).files == before
    adapted = load_line_scorer(adapted_folder)
    p = adapted.score_lines(lines)
    by_shape = {a["shape"]: a["label"] for a in record["asked"]}
    _, index = shape_table(lines, np.zeros(len(lines)))
    shapes = dict(zip(table["shape_index"], table["shape"], strict=True))
    for i, line in enumerate(lines):
        shape = shapes[int(index[i])]
        if shape in by_shape:
            assert p[i] == (1.0 if by_shape[shape] == "LOOK" else 0.0)
            assert by_shape[shape] == expected_label(line)  # the fake model's answer

"""The label-set assets materialized with a real Dagster instance into temporary folders."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

from logfit_dagster.assets import datasets, ingest, labels
from logfit_dagster.partitions import LOG_SOURCE
from logfit_dagster.resources.labelers import (
    AnthropicLabelerResource,
    OpenAILabelerResource,
    RecordedLabelerResource,
    RuleLabelerResource,
    default_labeler,
)
from logfit_dagster.resources.sources import LogSources
from logfit_dagster.resources.storage import ParquetIOManager
from tests.llm_servers import FakeAnthropic, expected_label

ASSETS = dg.load_assets_from_modules([ingest, datasets, labels])
LABEL_ASSETS = ["llm_labels", "label_quality"]


def materialize(instance, partition, labeler, selection=None, run_config=None):
    instance.add_dynamic_partitions(LOG_SOURCE, [partition])
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition,
        instance=instance,
        run_config=run_config,
        resources={"io_manager": ParquetIOManager(), "sources": LogSources(), "labeler": labeler},
        raise_on_error=False,
    )


def metadata(result, asset: str) -> dict:
    event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    )
    return {k: v.value for k, v in event.materialization.metadata.items()}


UPSTREAM = ["raw_logs", "parsed_logs", "sessions", "ground_truth_labels"]


def test_rule_labels_quality_and_a_rerun_that_sends_nothing(workdir):
    with dg.instance_for_test() as instance:
        result = materialize(instance, "tiny_hdfs", RuleLabelerResource(), UPSTREAM + LABEL_ASSETS)
        assert result.success
        first = metadata(result, "llm_labels")
        assert first["labeler"] == "rule" and first["lines"] == 1500
        assert first["look_lines"] + first["skip_lines"] == 1500 and first["unlabeled_lines"] == 0
        quality = metadata(result, "label_quality")
        assert quality["has_ground_truth"] is True and 0 <= quality["f1"] <= 1
        checks = {c.check_name for c in result.get_asset_check_evaluations()}
        assert "look_agrees_with_ground_truth" in checks
        again = materialize(instance, "tiny_hdfs", RuleLabelerResource(), ["llm_labels"])
        assert again.success
        second = metadata(again, "llm_labels")
        assert second["requests"] == 0 and second["cache_hits"] == second["windows"]
        assert "nothing was sent" in second["note"]
    frame = pd.read_parquet(workdir / "data" / "assets" / "llm_labels" / "tiny_hdfs.parquet")
    assert frame["reason"].str.startswith("rule:").all()
    assert list(frame.columns[:5]) == ["line_number", "raw", "label", "reason", "window_key"]
    # label_quality reads the labels in batches: what the whole table gives
    from logfit_dagster.core.labeling.quality import agreement, look_as_int

    truth = pd.read_parquet(
        workdir / "data" / "assets" / "ground_truth_labels" / "tiny_hdfs" / "lines.parquet"
    )
    joined = frame.merge(
        truth[["line_number", "label"]].rename(columns={"label": "truth"}),
        on="line_number",
        how="left",
    )
    whole = agreement(look_as_int(joined["label"]), joined["truth"].astype("Float64"))
    assert quality["compared_lines"] == whole["compared"] > 0
    assert quality["f1"] == pytest.approx(round(whole["f1"], 4))
    assert quality["kappa"] == pytest.approx(round(whole["kappa"], 4))


def test_the_distinct_plan_through_claude_batches_reports_what_it_propagated(workdir, monkeypatch):
    plan = {"ops": {"llm_labels": {"config": {"plan": "distinct"}}}}
    with FakeAnthropic() as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
        claude = AnthropicLabelerResource(
            api_key=dg.EnvVar("ANTHROPIC_API_KEY"), base_url=server.url, poll_interval_s=0.01
        )
        result = materialize(instance, "tiny_hdfs", claude, UPSTREAM + LABEL_ASSETS, plan)
        assert result.success
        first = metadata(result, "llm_labels")
        assert first["plan"] == "distinct" and first["unlabeled_lines"] == 0
        assert first["direct_lines"] + first["propagated_lines"] == first["lines"] == 1500
        # one line asked per shape, a few requests for 1,500 lines (30 windows of 50)
        assert first["direct_lines"] == first["shapes"] and first["requests"] <= 3
        assert "took their shape's answer" in first["note"]
        quality = metadata(result, "label_quality")
        assert set(quality["by_label_source"]) == {"direct", "propagated"}
        assert quality["by_label_source"]["propagated"]["lines"] == first["propagated_lines"]
        again = materialize(instance, "tiny_hdfs", claude, ["llm_labels"], plan)
        second = metadata(again, "llm_labels")
        assert second["requests"] == 0 and second["shapes_answered_before"] == first["shapes"]
        assert "was answered before" in second["note"]
    frame = pd.read_parquet(workdir / "data" / "assets" / "llm_labels" / "tiny_hdfs.parquet")
    assert frame["label"].tolist() == [expected_label(x) for x in frame["raw"]]
    assert set(frame["label_source"]) == {"direct", "propagated"}


def test_claude_batches_through_an_env_var_key(workdir, monkeypatch):
    with FakeAnthropic(api_key="sk-ant-test-1") as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-1")
        labeler = AnthropicLabelerResource(
            api_key=dg.EnvVar("ANTHROPIC_API_KEY"), base_url=server.url, poll_interval_s=0.01
        )
        result = materialize(
            instance,
            "tiny_bgl",
            labeler,
            ["raw_logs", "llm_labels"],
            run_config={"ops": {"llm_labels": {"config": {"window_size": 100}}}},
        )
        assert result.success
        meta = metadata(result, "llm_labels")
        assert meta["requests"] == 8 and meta["batches_submitted"] == 1
        assert meta["estimated_cost_usd"] > 0 and meta["input_tokens"] > 0
        frame = pd.read_parquet(workdir / "data" / "assets" / "llm_labels" / "tiny_bgl.parquet")
        assert frame["label"].tolist() == [expected_label(x) for x in frame["raw"]]
        assert set(server.submitted.values()) == {1}


def test_budget_cap_and_a_bad_key_fail_clearly_and_never_show_the_key(workdir, monkeypatch):
    secret = "sk-ant-very-secret-999"
    with FakeAnthropic(api_key="another") as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
        labeler = AnthropicLabelerResource(
            api_key=dg.EnvVar("ANTHROPIC_API_KEY"),
            base_url=server.url,
            poll_interval_s=0.01,
        )
        capped = materialize(
            instance,
            "tiny_bgl",
            labeler,
            ["raw_logs", "llm_labels"],
            run_config={"ops": {"llm_labels": {"config": {"max_cost_usd": 0.0001}}}},
        )
        assert not capped.success
        failure = capped.get_step_failure_events()[0].step_failure_data.error.message
        assert "would cost about $" in failure and "nothing was submitted" in failure
        refused = materialize(instance, "tiny_bgl", labeler, ["llm_labels"])
        assert not refused.success
        logs = json.dumps([str(e.dagster_event) for e in instance.all_logs(refused.run_id)])
        assert "401" in logs and secret not in logs and "***" in logs


def test_labeled_lines_gathers_every_source(workdir):
    labeler = RuleLabelerResource()
    with dg.instance_for_test() as instance:
        for source in ("tiny_hdfs", "tiny_bgl"):
            assert materialize(instance, source, labeler, ["raw_logs", "llm_labels"]).success
        result = dg.materialize(
            ASSETS,
            selection=["labeled_lines"],
            instance=instance,
            resources={
                "io_manager": ParquetIOManager(),
                "sources": LogSources(),
                "labeler": labeler,
            },
        )
        assert result.success
        meta = metadata(result, "labeled_lines")
    frame = pd.read_parquet(workdir / "data" / "assets" / "labeled_lines" / "all.parquet")
    assert frame.groupby("source").size().to_dict() == {"tiny_bgl": 800, "tiny_hdfs": 1500}
    assert meta["sources"] == 2 and meta["registered_sources_without_labels"] == []


def test_default_labeler_follows_the_environment():
    assert isinstance(default_labeler({}), RuleLabelerResource)
    assert isinstance(default_labeler({"ANTHROPIC_API_KEY": "k"}), AnthropicLabelerResource)
    assert isinstance(default_labeler({"LOGFIT_LABELER": "openai"}), OpenAILabelerResource)
    assert isinstance(default_labeler({"LOGFIT_LABELER": "recorded"}), RecordedLabelerResource)
    from logfit_dagster.core.errors import LabelerError

    with pytest.raises(LabelerError, match="LOGFIT_LABELER"):
        default_labeler({"LOGFIT_LABELER": "gpt5"})
    with pytest.raises(LabelerError, match="ANTHROPIC_API_KEY"):
        default_labeler({"LOGFIT_LABELER": "anthropic"}).build()


def test_the_definitions_labeler_is_chosen_when_a_run_starts(monkeypatch, tmp_path):
    """The environment as it is when a run builds the labeler, not when the code loaded; the
    run's config wins over it."""
    from logfit_dagster.core.errors import LabelerError
    from logfit_dagster.core.labeling.offline import RecordedLabeler, RuleLabeler
    from logfit_dagster.definitions import defs
    from logfit_dagster.resources.labelers import ChosenLabelerResource

    labeler = defs.resources["labeler"]
    assert isinstance(labeler, ChosenLabelerResource)
    monkeypatch.delenv("LOGFIT_LABELER", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert isinstance(labeler.build(), RuleLabeler)
    recorded = tmp_path / "labels.jsonl"
    recorded.write_text(
        '{"system": "x", "line_number": 1, "raw_line": "a", "label": "SKIP", "reason": "r"}\n'
    )
    monkeypatch.setenv("LOGFIT_LABELER", "recorded")
    monkeypatch.setenv("LOGFIT_RECORDED_LABELS", str(recorded))
    assert isinstance(labeler.build(), RecordedLabeler)  # the variable set after loading
    assert isinstance(ChosenLabelerResource(kind="rule").build(), RuleLabeler)  # config wins
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    openai = ChosenLabelerResource(kind="openai", model="m", base_url="http://127.0.0.1:9/v1")
    assert openai.secrets() == ["sk-secret"] and openai.chosen().model == "m"
    with pytest.raises(LabelerError, match="the labeler's kind is 'gpt5'"):
        ChosenLabelerResource(kind="gpt5").build()


def test_recorded_labels_match_by_content(shared_data, tmp_path):
    from logfit_dagster.core.labeling.base import label_source
    from logfit_dagster.core.labeling.cache import LabelCache

    recorded = shared_data / "llm-labels" / "Apache.jsonl"
    truth = [json.loads(line) for line in recorded.read_text().splitlines()]
    raw = (shared_data / "loghub-2k" / "Apache" / "Apache_2k.log").read_text().splitlines()
    labeler = RecordedLabelerResource(paths=[str(recorded)], system="Apache").build()
    # ten new lines in front shift every line number: content still matches
    frame, stats = label_source(
        "Apache", ["new line"] * 10 + raw, labeler, cache=LabelCache(tmp_path / "c.sqlite")
    )
    assert stats.unlabeled_lines == 10 and frame["label"].iloc[:10].isna().all()
    assert frame["label"].iloc[10:].tolist() == [t["label"] for t in truth]


def test_bad_recorded_file_names_file_and_line(tmp_path):
    from logfit_dagster.core.errors import LabelerError

    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"system":"a","line_number":1,"raw_line":"x","label":"LOOK"}\n{"system":"a"}\n'
    )
    with pytest.raises(LabelerError, match=r"bad.jsonl:2: field 'line_number' is missing"):
        RecordedLabelerResource(paths=[str(path)]).build()


def test_the_note_says_a_resumed_batch_was_paid_for():
    from logfit_dagster.assets.labels import label_note
    from logfit_dagster.core.labeling.base import LabelStats

    assert "nothing paid" in label_note(LabelStats(windows=4, cache_hits=4))
    resumed = label_note(LabelStats(windows=4, cache_hits=0, batches_resumed=1))
    assert "nothing paid" not in resumed and "1 batch(es) that an earlier run submitted" in resumed
    assert label_note(LabelStats(windows=4, cache_hits=1, requests=3)) == "3 window(s) sent"

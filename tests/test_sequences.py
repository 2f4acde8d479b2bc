"""Pre-parsed session datasets (origin ``sequences``): each layout read with its labels, every
malformed line named by file and line, and the source through the same assets as any other."""

import random

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from logfit_dagster.core.errors import LogInputError, RegistryError
from logfit_dagster.core.ingest import read_raw_logs
from logfit_dagster.core.registry import load_registry, parse_source
from logfit_dagster.core.sequences import expand_sequences, read_templates
from tests.conftest import FIXTURES

SEQUENCES = FIXTURES / "sequences"


def _read(paths, layout, templates=None, rules=(), source="s"):
    raw, _ = read_raw_logs(paths)
    return expand_sequences(raw, layout, templates, rules, source=source)


def _sessions(table: pa.Table) -> dict:
    frame = table.to_pandas()
    return {
        sid: (group["template_id"].tolist(), group["label"].iloc[0])
        for sid, group in frame.groupby("session", sort=False)
    }


DEEPLOG_FILES = ("hdfs_train", "hdfs_test_normal", "hdfs_test_abnormal")
DEEPLOG_RULES = [("*abnormal*", "anomalous"), ("*normal*", "normal"), ("*train*", "normal")]


def test_deeplog_layout_takes_labels_from_file_name_rules():
    table, stats = _read([SEQUENCES / n for n in DEEPLOG_FILES], "deeplog", None, DEEPLOG_RULES)
    sessions = _sessions(table)
    assert stats["sessions"] == 7 and stats["anomalous_sessions"] == 2
    assert sessions["hdfs_train:2"] == ([5, 22, 5, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26], 0)
    assert sessions["hdfs_test_abnormal:1"][1] == 1
    assert table.column("template")[0].as_py() == "s event 5"  # no templates file: no text


def test_a_templates_csv_names_events_by_number(tmp_path):
    templates = tmp_path / "templates.csv"
    templates.write_text(
        "EventId,EventTemplate\nE5,open <*>\nE22,allocate <*>\nE11,close <*>\nE9,write <*>\n"
    )
    table, stats = _read([SEQUENCES / "anomaly_sequences.csv"], "csv", read_templates(templates))
    assert table.column("template")[0].as_py() == "open <*>"  # event 5 is E5
    assert stats["templates_named"] == stats["event_types"] == 4


def test_the_deeplog_fixtures_with_loghubs_hdfs_templates(shared_data):
    path = shared_data / "loghub-2k" / "HDFS" / "HDFS_templates.csv"
    templates = read_templates(path)
    table, stats = _read(
        [SEQUENCES / n for n in DEEPLOG_FILES], "deeplog", templates, DEEPLOG_RULES
    )
    assert table.column("template")[0].as_py() == templates["E5"]
    assert stats["templates_named"] == stats["event_types"]


def test_csv_layouts_loghub_event_traces_and_plain_sequences():
    table, stats = _read([SEQUENCES / "Event_traces.csv"], "csv")
    sessions = _sessions(table)
    assert sessions["blk_-3544583377289625738"][1] == 1  # Fail
    assert sessions["blk_-1608999687919862906"] == (
        [5, 22, 5, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26],
        0,
    )
    # without a templates file an event is named by its source and id, never by a guess
    assert table.column("template")[0].as_py() == "s event E5"

    table, _ = _read([SEQUENCES / "anomaly_sequences.csv"], "csv")
    sessions = _sessions(table)
    assert sessions == {
        "i-1": ([5, 22, 11], 0),
        "i-2": ([5, 22, 11, 9], 1),
        "i-3": ([5, 22, 11], 0),
    }


def test_files_no_rule_matches_keep_unknown_labels(tmp_path):
    path = tmp_path / "sessions.txt"
    path.write_text("1 2 3\n1 2\n")
    table, stats = _read([path], "deeplog", rules=[("*abnormal*", "anomalous")])
    assert stats["unlabelled_sessions"] == 2
    assert table.column("label").null_count == table.num_rows


@pytest.mark.parametrize(
    ("layout", "text", "line", "words"),
    [
        ("ait", "app/c1,1 2 3\napp/c2 1 2 3\n", 2, "expected '<session id>,"),
        ("ait", "app/c1,1 2 3\napp/c2,\n", 2, "no events"),
        ("deeplog", "1 2 3\n4 5 $x\n", 2, "'$x' is not an event id"),
        ("csv", "BlockId,EventSequence,Label\nb1,1 2,Normal\nb2,1 2\n", 3, "2 field(s)"),
        ("csv", "BlockId,EventSequence,Label\nb1,1 2,Normal\nb2,1 2,maybe\n", 3, "'maybe'"),
        ("csv", "Block,Events\nb1,1 2\n", 1, "expected a header"),
        ("ait", "app/c1,1 2\napp/c2,1\napp/c1,2 2\n", 3, "already appears at"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, layout, text, line, words):
    path = tmp_path / "broken_sessions"
    path.write_text(text)
    with pytest.raises(LogInputError) as caught:
        _read([path], layout)
    assert f"{path}: line {line}:" in str(caught.value)
    assert words in str(caught.value)


def test_an_event_the_templates_file_lacks_is_named(tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("first <*>\nsecond <*>\n")
    path = tmp_path / "train"
    path.write_text("a/1,1 2\na/2,1 2 7\n")
    with pytest.raises(LogInputError, match=r"train: line 2: event '7' is not in the templates"):
        _read([path], "ait", read_templates(templates))


def test_registry_entries_of_origin_sequences(tmp_path):
    spec = parse_source(
        {
            "name": "hadoop",
            "origin": "sequences",
            "path": "seq/*",
            "layout": "ait",
            "labels": {"*abnormal*": "anomalous", "*normal*": "Normal"},
        },
        "test",
    )
    assert spec.session.by == "sequence" and spec.ground_truth.provider == "sequence_labels"
    assert spec.labels == (("*abnormal*", "anomalous"), ("*normal*", "normal"))
    assert spec.is_sequences
    for entry, words in [
        ({"layout": "lines"}, "field 'layout' must be 'ait', 'deeplog' or 'csv'"),
        ({"layout": "ait", "labels": {"*": "bad"}}, "must be 'normal' or 'anomalous'"),
        ({"layout": "ait", "session": {"by": "window"}}, "one and only session kind"),
        ({"layout": "ait", "ground_truth": {"provider": "alert_field"}}, "takes ground_truth"),
    ]:
        with pytest.raises(RegistryError, match=words):
            parse_source({"name": "x", "origin": "sequences", "path": "p", **entry}, "test")
    with pytest.raises(RegistryError, match="field 'layout' is for origin 'sequences' only"):
        parse_source({"name": "x", "origin": "files", "path": "p", "layout": "ait"}, "test")
    with pytest.raises(RegistryError, match="one and only session kind"):
        parse_source(
            {"name": "x", "origin": "files", "path": "p", "session": {"by": "sequence"}}, "t"
        )


def test_the_ait_hadoop_sequences(shared_data):
    folder = shared_data / "hadoop" / "sequences_ait"
    table, stats = _read(
        [folder / n for n in ("hadoop_train", "hadoop_test_normal", "hadoop_test_abnormal")],
        "ait",
        read_templates(folder / "Hadoop_templates.csv"),
        [("*abnormal*", "anomalous"), ("*normal*", "normal"), ("*train*", "normal")],
    )
    assert stats["sessions"] == 17 + 150 + 811
    assert stats["anomalous_sessions"] == 811 and stats["unlabelled_sessions"] == 0
    assert stats["templates_named"] == stats["event_types"]


def write_sequence_source(folder, seed: int = 5) -> None:
    """An AIT-layout dataset: normal sessions walk 1 2 3 (4 5)* 6; anomalous ones skip the
    last step, swap two steps or meet an event normal sessions never show."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "templates.txt").write_text(
        "\n".join(
            [
                "open session <*>",
                "load <*>",
                "start <*>",
                "read chunk <*>",
                "write chunk <*>",
                "close session <*>",
                "retry <*>",
                "crash in <*>",
            ]
        )
        + "\n"
    )

    def normal() -> list[int]:
        return [1, 2, 3, *([4, 5] * rng.randint(1, 6)), 6]

    normal_rows = [f"app/n{i},{' '.join(map(str, normal()))}" for i in range(240)]
    anomalous_rows = []
    for i in range(60):
        events = normal()
        if i % 3 == 0:
            events = events[:-1]
        elif i % 3 == 1:
            events[1], events[2] = events[2], events[1]
        else:
            events.insert(rng.randint(1, len(events) - 1), 8)
        anomalous_rows.append(f"app/a{i},{' '.join(map(str, events))}")
    (folder / "run_normal").write_text("\n".join(normal_rows) + "\n")
    (folder / "run_abnormal").write_text("\n".join(anomalous_rows) + "\n")


def test_a_sequence_source_runs_through_sessions_splits_and_session_models(workdir):
    from logfit_dagster.partitions import LOG_SOURCE
    from tests.graph import ASSETS, offline_resources

    write_sequence_source(workdir / "seq")
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - name: seq_app\n"
        "    origin: sequences\n"
        "    path: seq/run_*\n"
        "    layout: ait\n"
        "    templates: seq/templates.txt\n"
        "    labels: {'*abnormal*': anomalous, '*normal*': normal}\n"
    )
    load_registry(workdir / "sources.yaml")
    assets = ASSETS
    resources = offline_resources()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["seq_app"])
        result = dg.materialize(
            assets,
            selection=[
                "raw_logs",
                "parsed_logs",
                "log_templates",
                "sessions",
                "ground_truth_labels",
                "dataset_splits",
                "llm_labels",
                "session_model",
            ],
            partition_key="seq_app",
            instance=instance,
            resources=resources,
        )
        assert result.success
        # sessions and the line labels are written as streams: read what was stored
        assets_dir = workdir / "data" / "assets"
        sessions = pd.read_parquet(assets_dir / "sessions" / "seq_app.parquet")
        assert len(sessions) == 300
        assert (
            sessions.set_index("session_id")
            .loc["app/n0", "text"]
            .startswith("open session <*>\nload <*>\nstart <*>")
        )
        truth = result.output_for_node("ground_truth_labels")["sessions"]
        assert int((truth["label"] == 1).sum()) == 60
        splits = result.output_for_node("dataset_splits")
        assert set(splits["split"]) == {"train", "dev", "test"}
        assert len(result.output_for_node("llm_labels")) == 0  # nothing sent for event ids
        metrics = result.output_for_node("session_model")
        # the count-vector models scored the test sessions with the labels the files gave
        test_ids = set(splits.loc[splits["split"] == "test", "session_id"])
        assert set(metrics["session_id"]) == test_ids
        expected = metrics["session_id"].str.startswith("app/a").astype(int)
        assert (metrics["label"].astype(int) == expected).all()

        # and the next-template model, which sees the order that counts cannot
        pytest.importorskip("transformers")

        small = {"layers": 1, "width": 32, "heads": 2, "context": 16, "max_epochs": 4}
        small["learning_rate"] = 3e-3
        everything = assets
        assert dg.materialize(
            everything,
            selection=["template_vocabulary", "template_lm_pretrained"],
            instance=instance,
            resources=resources,
            run_config={"ops": {"template_lm_pretrained": {"config": small}}},
        ).success
        result = dg.materialize(
            everything,
            selection=["template_lm"],
            partition_key="seq_app",
            instance=instance,
            resources=resources,
            run_config={"ops": {"template_lm": {"config": small}}},
        )
        assert result.success
        scores = result.output_for_node("template_lm")
        assert set(scores["session_id"]) == test_ids
        by_max = scores[scores["method"] == "max_nll"].set_index("session_id")
        swapped = [s for s in by_max.index if s.startswith("app/a") and int(s[5:]) % 3 == 1]
        assert swapped, "the split put no order-swapped session in test"
        assert by_max.loc[swapped, "flagged"].all()  # what count vectors cannot see
        normal = by_max[by_max["label"] == 0]
        assert normal["flagged"].mean() < 0.2

        # the session champion is chosen among both families on dev, and stored
        result = dg.materialize(
            everything,
            selection=["session_champion", "metrics_report"],
            partition_key="seq_app",
            instance=instance,
            resources=resources,
        )
        assert result.success
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()
        }
        champion = meta["session_champion"]["champion"].value
        candidates = meta["session_champion"]["candidates"].value
        assert "template_lm:max_nll" in candidates and "session_counts:decision_tree" in candidates
        report = result.output_for_node("metrics_report")
        assert f"champion: {champion}" in set(report["model"])

    # logfit sessions scores the sequence file with that champion: the test sessions get the
    # asset's scores
    from tests.processes import run_logfit

    out = workdir / "scored.parquet"
    done = run_logfit(
        workdir, "sessions", "seq/run_abnormal", "--source", "seq_app", "--output", str(out)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"flagged by {champion}" in done.stderr
    scored = pd.read_parquet(out).set_index("session_id")
    assert len(scored) == 60 and (scored["model"] == champion).all()
    family, model = champion.split(":")
    if family == "template_lm":
        stored = scores[scores["method"] == model]
    else:
        stored = metrics[metrics["model"] == model].rename(columns={"predicted": "flagged"})
    stored = stored[stored["session_id"].str.startswith("app/a")].set_index("session_id")
    mine = scored.loc[stored.index]
    assert (abs(mine["score"] - stored["score"].astype(float)) < 1e-6).all()
    assert (mine["flagged"] == stored["flagged"].astype(bool)).all()
    assert (mine["label"] == 1).all()  # the source's label rules name the file anomalous


def test_path_may_list_several_files_or_globs(workdir):
    from logfit_dagster.resources.sources import LogSources

    folder = workdir / "seq"
    write_sequence_source(folder)
    (folder / "run_abnormal_copy").write_text("app/x,1 2\n")
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - name: two_files\n"
        "    origin: sequences\n"
        "    path: [seq/run_normal, seq/run_ab*l]\n"
        "    layout: ait\n"
        "  - {name: none_match, origin: sequences, path: [seq/run_normal, seq/nothing*], "
        "layout: ait}\n"
    )
    sources = LogSources()
    files = sources.files(sources.get("two_files"))
    assert [f.name for f in files] == ["run_normal", "run_abnormal"]
    with pytest.raises(LogInputError, match="no file matches .*nothing"):
        sources.files(sources.get("none_match"))
    with pytest.raises(RegistryError, match="a list of them"):
        parse_source({"name": "x", "origin": "files", "path": [1, 2]}, "test")

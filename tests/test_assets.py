"""The lineage materialized for synthetic and Loghub partitions into temporary folders."""

import pkgutil

import dagster as dg
import pandas as pd
import pytest

import logfit_dagster.core
from logfit_dagster.assets import datasets, ingest
from logfit_dagster.definitions import defs
from logfit_dagster.partitions import LOG_SOURCE
from logfit_dagster.resources.sources import LogSources
from logfit_dagster.resources.storage import ParquetIOManager

ASSETS = dg.load_assets_from_modules([ingest, datasets])


def _materialize(instance, partition, selection=None, **kwargs):
    instance.add_dynamic_partitions(LOG_SOURCE, [partition])
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources={"io_manager": ParquetIOManager(), "sources": LogSources(**kwargs)},
        raise_on_error=False,
    )


def test_synthetic_lineage_materializes_with_checks(workdir):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "tiny_hdfs")
        assert result.success
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {
            "parse_failure_rate": True,
            "sessions_in_one_split": True,
            "anomalies_distinguishable": True,
        }
    assets = workdir / "data" / "assets"
    parsed = pd.read_parquet(assets / "parsed_logs" / "tiny_hdfs.parquet")
    assert len(parsed) == 1500 and parsed["parse_ok"].all()
    assert {
        "date",
        "time",
        "pid",
        "level",
        "component",
        "content",
        "template_id",
        "template",
    } <= set(parsed)
    sessions = pd.read_parquet(assets / "sessions" / "tiny_hdfs.parquet")
    assert sessions["session_id"].str.startswith("blk_").all()
    truth = pd.read_parquet(assets / "ground_truth_labels" / "tiny_hdfs" / "sessions.parquet")
    splits = pd.read_parquet(assets / "dataset_splits" / "tiny_hdfs.parquet")
    assert splits["session_id"].is_unique
    assert set(splits["session_id"]) == set(sessions["session_id"])
    merged = splits.merge(truth, on="session_id")
    assert (merged["label_x"].astype(int) == merged["label_y"].astype(int)).all()
    assert (truth["label"] == 1).sum() > 0
    templates = pd.read_parquet(assets / "log_templates" / "tiny_hdfs.parquet")
    assert templates["count"].sum() == 1500


def test_rerun_keeps_template_ids(workdir):
    with dg.instance_for_test() as instance:
        assert _materialize(instance, "tiny_bgl", selection=["raw_logs", "parsed_logs"]).success
        path = workdir / "data" / "assets" / "parsed_logs" / "tiny_bgl.parquet"
        first = pd.read_parquet(path)[["template_id", "template"]]
        assert _materialize(instance, "tiny_bgl", selection=["raw_logs", "parsed_logs"]).success
        second = pd.read_parquet(path)[["template_id", "template"]]
    assert first["template_id"].equals(second["template_id"])


def test_grown_file_continues_mining(workdir):
    logs = workdir / "mine"
    logs.mkdir()
    source = logs / "app.log"
    source.write_text(
        "".join(f"2024-01-01T00:00:0{i % 10}Z INFO user u{i} logged in\n" for i in range(50))
    )
    (workdir / "sources.yaml").write_text(
        f"sources:\n  - {{name: mine, origin: files, path: '{logs}/*.log'}}\n"
    )
    with dg.instance_for_test() as instance:
        assert _materialize(instance, "mine", selection=["raw_logs", "parsed_logs"]).success
        with source.open("a") as handle:
            handle.write("2024-01-01T00:01:00Z ERROR disk /dev/sda1 full\n")
        result = _materialize(instance, "mine", selection=["raw_logs", "parsed_logs"])
        assert result.success
        meta = result.asset_materializations_for_node("parsed_logs")[0].metadata
    assert meta["templates_resumed_from_state"].value == 1
    assert meta["new_templates"].value == 1
    parsed = pd.read_parquet(workdir / "data/assets/parsed_logs/mine.parquet")
    assert parsed["template_id"].nunique() == 2 and parsed["level"].iloc[-1] == "ERROR"


@pytest.mark.faults
def test_empty_file_fails_the_partition_naming_it_and_keeps_good_output(workdir):
    logs = workdir / "mine"
    logs.mkdir()
    (logs / "a.log").write_text("INFO first\nINFO second\n")
    (workdir / "sources.yaml").write_text(
        f"sources:\n  - {{name: mine, origin: files, path: '{logs}/*.log'}}\n"
    )
    with dg.instance_for_test() as instance:
        assert _materialize(instance, "mine", selection=["raw_logs"]).success
        stored = workdir / "data/assets/raw_logs/mine.parquet"
        before = stored.read_bytes()
        (logs / "a.log").write_text("")
        result = _materialize(instance, "mine", selection=["raw_logs"])
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "log file is empty" in failure.step_failure_data.error.message
    assert str(logs / "a.log") in failure.step_failure_data.error.message
    assert stored.read_bytes() == before


def test_source_removed_from_registry_is_refused(workdir):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "gone_source", selection=["raw_logs"])
    assert not result.success
    message = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message
    assert "'gone_source' is not in the registry" in message


@pytest.mark.faults
def test_non_utf8_lines_are_counted_not_dropped(workdir):
    logs = workdir / "mine"
    logs.mkdir()
    (logs / "a.log").write_bytes(b"INFO ok\nINFO caf\xe9 latin-1\n")
    (workdir / "sources.yaml").write_text(
        f"sources:\n  - {{name: mine, origin: files, path: '{logs}/*.log'}}\n"
    )
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "mine", selection=["raw_logs"])
    meta = result.asset_materializations_for_node("raw_logs")[0].metadata
    assert meta["lines"].value == 2 and meta["replaced_bytes"].value == 1


def test_loghub_partition_from_a_local_mirror(workdir, shared_data):
    (workdir / "sources.yaml").write_text(
        "sources:\n  - {name: lh_bgl, origin: loghub, system: BGL}\n"
    )
    mirror = f"file://{shared_data / 'loghub-2k'}"
    with dg.instance_for_test() as instance:
        result = _materialize(instance, "lh_bgl", loghub_base_url=mirror)
    assert result.success
    meta = result.asset_materializations_for_node("ground_truth_labels")[0].metadata
    assert meta["anomalous_lines"].value == 143  # BGL_2k's alert lines


def test_definitions_resolve_every_job():
    for job in defs.resolve_all_job_defs():
        assert job.name
    assert defs.resolve_job_def("ingest_job")
    assert {a.key.to_user_string() for a in ASSETS} >= {
        "raw_logs",
        "parsed_logs",
        "log_templates",
        "sessions",
        "ground_truth_labels",
        "dataset_splits",
    }


CORE_MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(logfit_dagster.core.__path__, "logfit_dagster.core.")
    if not m.ispkg
)
# One fresh interpreter imports every core module in turn and names the first one after
# which dagster is loaded: a process a module cost two minutes of the quick suite.
FIRST_TO_IMPORT_DAGSTER = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if "dagster" in sys.modules:
        sys.exit(name)
"""


def test_core_never_imports_dagster():
    import subprocess
    import sys

    assert len(CORE_MODULES) > 40  # the walk found the core
    done = subprocess.run(
        [sys.executable, "-c", FIRST_TO_IMPORT_DAGSTER, *CORE_MODULES],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"dagster is imported by: {done.stderr.strip()}"


def test_readers_load_only_the_columns_they_name(workdir):
    """log_templates, ground_truth_labels and dataset_splits read two or three columns of
    parsed_logs and sessions, not their text: the IO manager honours ``columns`` metadata."""
    import pandas as pd

    from logfit_dagster.assets._common import columns_of

    seen = {}

    @dg.asset(
        partitions_def=ingest.log_source_partitions,
        ins={
            "sessions": columns_of("session_id", "first_line"),
            "parsed_logs": columns_of("line_number", "template_id"),
        },
    )
    def reader(sessions: pd.DataFrame, parsed_logs: pd.DataFrame) -> pd.DataFrame:
        seen["sessions"], seen["parsed_logs"] = list(sessions.columns), list(parsed_logs.columns)
        return sessions

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        result = dg.materialize(
            [*ASSETS, reader],
            selection=["raw_logs", "parsed_logs", "sessions", "reader"],
            partition_key="tiny_hdfs",
            instance=instance,
            resources={"io_manager": ParquetIOManager(), "sources": LogSources()},
        )
    assert result.success
    assert seen == {
        "sessions": ["session_id", "first_line"],
        "parsed_logs": ["line_number", "template_id"],
    }
    stored = pd.read_parquet(workdir / "data" / "assets" / "sessions" / "tiny_hdfs.parquet")
    assert "text" in stored.columns  # the stored table is whole; only the read is narrow


def test_a_source_with_templates_from_mines_on_from_that_sources_templates(workdir):
    # two clusters of one system: the same messages, other ids and numbers
    def lines(offset: int, n: int) -> str:
        kinds = (
            "INFO dfs.DataNode: Receiving block blk_{i} src: /10.0.0.{j}:50010",
            "INFO dfs.DataNode: PacketResponder {j} for block blk_{i} terminating",
            "WARN dfs.DataNode: Slow BlockReceiver write packet to mirror took {j}ms",
        )
        return "".join(
            f"081109 2035{i % 60:02d} 143 "
            + kinds[i % 3].format(i=offset + i, j=(offset + i) % 250)
            + "\n"
            for i in range(n)
        )

    (workdir / "a.log").write_text(lines(0, 300))
    (workdir / "b.log").write_text(lines(10_000, 60))
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: a, origin: files, path: a.log, format: HDFS}\n"
        "  - {name: b, origin: files, path: b.log, format: HDFS, templates_from: a}\n"
    )
    with dg.instance_for_test() as instance:
        first = _materialize(instance, "b", selection=["raw_logs", "parsed_logs"])
        assert not first.success  # a has no templates yet: named, nothing half-done
        failure = next(e for e in first.all_events if e.is_step_failure)
        words = failure.step_failure_data.user_failure_data.description
        assert "materialize parsed_logs of a first" in words
        assert not (workdir / "data" / "sources" / "b" / "drain_state.json").exists()
        for source in ("a", "b"):
            assert _materialize(instance, source, selection=["raw_logs", "parsed_logs"]).success
    assets = workdir / "data" / "assets" / "parsed_logs"
    a = pd.read_parquet(assets / "a.parquet")
    b = pd.read_parquet(assets / "b.parquet")
    # b's lines got a's templates, ids and all
    pairs_a = set(zip(a["template_id"], a["template"].astype(str), strict=True))
    assert set(zip(b["template_id"], b["template"].astype(str), strict=True)) <= pairs_a

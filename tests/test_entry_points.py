"""The UI, a schedule and ``logfit materialize`` leave the same champions and scores.

Each runs the whole lineage of the same registry on a fresh instance and data folder:

- the UI: what its "Materialize" sends for every asset ``logfit materialize`` covers, over
  every source: an asset backfill through the GraphQL API of ``dagster dev``, run by its daemon;
- a schedule: the nightly schedule's tick and its runs, then what the automation sensor
  requests, run, until it requests nothing (Dagster's own evaluation of the conditions, the
  runs in this process);
- ``logfit materialize``.

The three run side by side (the UI's daemon launches a run every 30 s or so, and waits
between). The champions are compared by what they are (family, training data, figures), the
scores value by value; registry version numbers and timestamps are not compared.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from .processes import BIN, LAUNCH_BACKFILL, dagster_dev, run_logfit

pytestmark = pytest.mark.slow

SOURCES = ["tiny_hdfs", "tiny_bgl"]
REGISTRY = (
    "sources:\n"
    "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
    "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
)
NIGHT = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def _folder(root: Path) -> dict:
    """A fresh data folder with the registry; the environment that points at it."""
    root.mkdir()
    (root / "data").mkdir()
    (root / "sources.yaml").write_text(REGISTRY)
    return {
        "LOGFIT_DATA_DIR": str(root / "data"),
        "LOGFIT_SOURCES": str(root / "sources.yaml"),
        # the three run side by side: one torch thread each keeps every training far from its
        # time budget (a model stopped by time depends on the machine's load, by design)
        "LOGFIT_TORCH_THREADS": "1",
    }


def _covered() -> dict[dg.AssetKey, bool]:
    """Every asset ``logfit materialize`` covers, and whether it is partitioned by source."""
    from logfit_dagster.definitions import defs
    from logfit_dagster.jobs import MATERIALIZE_SELECTION

    graph = defs.resolve_asset_graph()
    keys = sorted(MATERIALIZE_SELECTION.resolve(graph), key=lambda k: k.to_user_string())
    return {key: graph.get(key).partitions_def is not None for key in keys}


@contextmanager
def _from_the_ui(root: Path):
    """The backfill the UI launches, waited for on leaving the block (its daemon starts a run
    every 30 s or so: the block's own work is done meanwhile)."""
    env = {
        **os.environ,
        **_folder(root),
        "DAGSTER_HOME": str(root / "dagster_home"),
        # only what is launched here runs; steps in each run's process (the executor changes
        # where a step runs, not what it computes)
        "LOGFIT_AUTOMATION": "off",
        "LOGFIT_EXECUTOR": "in_process",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("log_source", SOURCES)
    with dagster_dev(root, env) as server:
        launched = server.graphql(
            LAUNCH_BACKFILL,
            params={
                "assetSelection": [{"path": key.path} for key in _covered()],
                "allPartitions": True,
                "title": "materialize everything",
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        yield
        _wait_for_backfill(server, launched["backfillId"], root)


def _wait_for_backfill(server, backfill_id: str, root: Path, timeout: float = 420) -> None:
    """Until every asset partition the backfill targets is materialized and none of its runs is
    going (or one failed); Dagster marks the backfill itself complete on its next pass."""
    covered = _covered()
    deadline = time.monotonic() + timeout
    with server.instance() as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            failed = [r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            assert not failed, (failed, (root / "dagster_dev.log").read_text()[-4000:])
            done = all(r.is_finished for r in runs) and all(
                set(SOURCES) <= instance.get_materialized_partitions(key)
                if partitioned
                else instance.get_latest_materialization_event(key) is not None
                for key, partitioned in covered.items()
            )
            if done:
                return
            time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id} not done in {timeout}s")


def _run_requested(defs, result, instance) -> None:
    """What one evaluation requested, as the daemon launches it: one run per partition (one for
    the unpartitioned assets), a run started once the runs its assets depend on have ended."""
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    pending: dict = defaultdict(list)  # partition (None: unpartitioned) -> asset keys

    def launch() -> None:
        for partition, keys in pending.items():
            run = job.execute_in_process(
                asset_selection=keys, partition_key=partition, instance=instance
            )
            assert run.success, (partition, keys)
        pending.clear()

    waiting = {}  # asset key -> whether it waits in a partitioned run
    for key in graph.toposorted_asset_keys:
        if not result.get_num_requested(key):
            continue
        partitioned = graph.get(key).partitions_def is not None
        # a parent waiting in a run of the other kind: that run goes first
        if any(waiting.get(p, partitioned) != partitioned for p in graph.get(key).parent_keys):
            launch()
            waiting.clear()
        for partition in result.get_requested_partitions(key):
            pending[partition].append(key)
        waiting[key] = partitioned
    launch()


def _from_a_schedule(root: Path, monkeypatch) -> None:
    from logfit_dagster.definitions import defs
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.schedules import nightly_ingest_and_label

    for name, value in _folder(root).items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, SOURCES)
        # the sensor's first evaluation takes stock, as it does when the daemon starts
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=NIGHT) as tick:
            requests = nightly_ingest_and_label(tick)
        assert sorted(r.partition_key for r in requests) == sorted(SOURCES)
        nightly = defs.resolve_job_def("nightly_job")
        for request in requests:
            run = nightly.execute_in_process(
                partition_key=request.partition_key, instance=instance, tags=request.tags
            )
            assert run.success
        for _ in range(12):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = result.cursor
            if not result.total_requested:
                break
            _run_requested(defs, result, instance)
        else:
            pytest.fail("the automation kept requesting runs after 12 evaluations")


def _manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {k: manifest[k] for k in ("family", "params", "metrics", "data")}


def _frame(path: Path, drop=("version", "run_id", "promoted_at")) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    return frame.drop(columns=[c for c in drop if c in frame.columns]).reset_index(drop=True)


def _outcome(data: Path) -> dict:
    """The champions and the scores a run leaves in a data folder."""
    models, assets = data / "models", data / "assets"
    out = {
        "line_champion": _manifest(models / "line_champion"),
        "look_skip_champion": _frame(assets / "look_skip_champion" / "all.parquet"),
        "overview": _frame(assets / "metrics_overview" / "all.parquet"),
    }
    for source in SOURCES:
        champion = models / "session_champion" / source
        out[f"session_champion/{source}"] = (
            _manifest(champion) if (champion / "manifest.json").is_file() else None
        )
        for asset in ("scored_lines", "template_lm", "session_model", "metrics_report"):
            out[f"{asset}/{source}"] = _frame(assets / asset / f"{source}.parquet")
    return out


def _assert_same(left: dict, right: dict, names: tuple[str, str]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        a, b = left[key], right[key]
        where = f"{key}: {names[0]} and {names[1]} differ"
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-5, atol=1e-6, obj=where)
        else:
            assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), where


@pytest.fixture(scope="module")
def lineages(tmp_path_factory):
    """The three runs, side by side: the UI's backfill is launched first, and ``logfit
    materialize`` then the schedule run while its daemon works. Returns the root of the three
    folders (``cli``, ``ui``, ``schedule``), the command's environment and its result; the
    tests below run in order on the command's folder (the last ones change it)."""
    root = tmp_path_factory.mktemp("entry_points")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.delenv("LOGFIT_LOGHUB_URL", raising=False)
        with _from_the_ui(root / "ui"):
            env = _folder(root / "cli")
            result = _materialize(root / "cli", env)
            _from_a_schedule(root / "schedule", patch)
    return root, env, result


def _materialize(root: Path, env: dict, *extra: str):
    result = run_logfit(root, "materialize", *extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _row(result, source: str) -> list[str]:
    return next(line for line in result.stdout.splitlines() if line.startswith(source)).split()


def test_logfit_materialize_prints_summary_and_writes_outputs(lineages):
    root, _, result = lineages
    root = root / "cli"
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("source"))
    for column in ("lines", "parse failures", "templates", "sessions", "anomalous sessions"):
        assert column in header
    row = _row(result, "tiny_hdfs")
    assert row[1] == "1500" and row[2] == "0"
    data = root / "data"
    assert (data / "dagster_home" / "dagster.yaml").exists(), "the instance lives under data/"
    splits = pd.read_parquet(data / "assets" / "dataset_splits" / "tiny_hdfs.parquet")
    assert set(splits["split"]) == {"train", "dev", "test"}
    # the whole lineage: labels, the line classifier and its champion, every source scored
    assert "look_skip_model: leave-family-out LOOK F1" in result.stdout
    assert "(char n-gram baseline " in result.stdout
    assert (data / "models" / "look_skip_champion.json").exists()
    for source in SOURCES:
        scored = pd.read_parquet(data / "assets" / "scored_lines" / f"{source}.parquet")
        assert scored["probability"].between(0, 1).all()
    assert (data / "mlflow" / "mlflow.db").exists() and not (root / "mlruns").exists()


def test_logfit_materialize_runs_each_part_in_a_worker_as_soon_as_its_inputs_are_there(lineages):
    """On 2 or more CPUs, every run goes to one of two worker processes as soon as what it
    reads is there: the sources' ingests first, the line models and the template model's
    pretraining at once, then each source's template model and its scoring as separate runs
    (the UI and schedule runs above reach the same results)."""
    from logfit_dagster.core.models.threads import available_cpus
    from logfit_dagster.runs import PID_TAG

    if available_cpus() < 2:
        pytest.skip("one CPU: the runs go one at a time, in the command's process")
    root = lineages[0] / "cli"
    with dg.DagsterInstance.from_config(str(root / "data" / "dagster_home")) as instance:
        records = instance.get_run_records()

    def runs_of(asset: str, source: str | None = None) -> list:
        return [
            r
            for r in records
            if dg.AssetKey(asset) in (r.dagster_run.asset_selection or ())
            and r.dagster_run.tags.get("dagster/partition") == source
        ]

    def overlap(a, b) -> bool:
        return max(a.start_time, b.start_time) < min(a.end_time, b.end_time)

    ingests = [r for source in SOURCES for r in runs_of("raw_logs", source)]
    (lines,) = runs_of("look_skip_model")
    (pretraining,) = runs_of("template_lm_pretrained")
    assert runs_of("line_champion") == [lines] and runs_of("template_vocabulary") == [pretraining]
    workers = {lines.dagster_run.tags[PID_TAG], pretraining.dagster_run.tags[PID_TAG]}
    # every run in one of the two workers, none in the command's own process
    assert len(workers) == 2 and {r.dagster_run.tags[PID_TAG] for r in records} == workers
    assert len(ingests) == 2 and overlap(lines, pretraining)
    assert all(r.start_time >= max(i.end_time for i in ingests) for r in (lines, pretraining))
    # each source's runs start once what they read has finished, in the same two workers: its
    # template model after the pretraining (not after the line models), its scoring after the
    # line champion
    fine_tuned = [r for source in SOURCES for r in runs_of("template_lm", source)]
    scored = [r for source in SOURCES for r in runs_of("scored_lines", source)]
    assert len(fine_tuned) == len(scored) == 2
    assert not any(dg.AssetKey("scored_lines") in r.dagster_run.asset_selection for r in fine_tuned)
    assert {r.dagster_run.tags[PID_TAG] for r in fine_tuned + scored} <= workers
    assert all(r.start_time >= pretraining.end_time for r in fine_tuned)
    assert all(r.start_time >= lines.end_time for r in scored)


def test_the_ui_a_schedule_and_logfit_materialize_leave_the_same_champions_and_scores(lineages):
    root = lineages[0]
    by_cli = _outcome(root / "cli" / "data")
    assert by_cli["line_champion"]["family"] in ("line_tfidf", "line_transformer")
    assert by_cli["session_champion/tiny_hdfs"] is not None
    _assert_same(by_cli, _outcome(root / "ui" / "data"), ("logfit materialize", "the UI"))
    _assert_same(by_cli, _outcome(root / "schedule" / "data"), ("logfit materialize", "a schedule"))


def test_a_second_materialize_runs_nothing_and_the_registry_decides_what_runs_next(lineages):
    """Nothing changed: nothing runs. Then one source grows and one is added: the grown one's
    lineage, the new one's and the line model run (its training set now three sources); the
    unchanged source's ingest and session models stay as they were. A source removed from the
    registry leaves the line model's training set on the next materialize, without --force."""
    root, env, first = lineages
    root = root / "cli"
    data = root / "data"

    def run_count() -> int:
        with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:
            return len(instance.get_runs())

    def sources_in(result) -> str:
        line = next(x for x in result.stdout.splitlines() if x.startswith("look_skip_model:"))
        return line.split(" over ")[1].split(" sources")[0]

    assert sources_in(first) == "2"
    # Nothing changed: nothing runs, nothing is rewritten.
    outputs = {p: p.stat().st_mtime_ns for p in (data / "assets").rglob("*.parquet")}
    runs = run_count()
    again = _materialize(root, env)
    assert (
        _row(again, "tiny_hdfs")[-1] == "unchanged" and _row(again, "tiny_bgl")[-1] == "unchanged"
    )
    assert (
        "up to date, not run: tiny_hdfs, tiny_bgl, all sources labels+models, "
        "tiny_hdfs models+reports, tiny_bgl models+reports, all sources reports" in again.stdout
    )
    assert run_count() == runs
    assert {p: p.stat().st_mtime_ns for p in outputs} == outputs

    # One source grows, one is added: their lineages, the line classifier and the scoring run;
    # the unchanged source's ingest and session models stay as they were.
    registry = root / "sources.yaml"
    before = registry.read_text()
    registry.write_text(
        before.replace("lines: 800", "lines: 900")
        + "  - {name: tiny_java, origin: synthetic, kind: javaapp, lines: 600, seed: 13}\n"
    )
    hdfs_splits = data / "assets" / "dataset_splits" / "tiny_hdfs.parquet"
    grown = _materialize(root, env)
    assert _row(grown, "tiny_hdfs")[-1] == "unchanged"
    assert _row(grown, "tiny_bgl")[1] == "900" and _row(grown, "tiny_bgl")[-1] != "unchanged"
    assert _row(grown, "tiny_java")[1] == "600"
    assert hdfs_splits.stat().st_mtime_ns == outputs[hdfs_splits]
    assert len(pd.read_parquet(data / "assets" / "scored_lines" / "tiny_bgl.parquet")) == 900
    assert sources_in(grown) == "3"

    # tiny_java leaves the registry: the line model's next training leaves it out
    registry.write_text(before.replace("lines: 800", "lines: 900"))
    assert sources_in(_materialize(root, env, "tiny_hdfs")) == "2"

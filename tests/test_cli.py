"""End to end: the README's main command on a small embedded default, in a fresh process."""

import os
import re
import subprocess
import sys
from datetime import UTC

import dagster as dg
import pandas as pd
import pytest

from tests.processes import run_logfit


def _materialize(workdir, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", *extra],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _row(result, source: str) -> list[str]:
    return next(line for line in result.stdout.splitlines() if line.startswith(source)).split()


def _run_count(workdir) -> int:
    with dg.DagsterInstance.from_config(str(workdir / "data" / "dagster_home")) as instance:
        return len(instance.get_runs())


def test_logfit_materialize_refuses_unknown_source(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", "nope"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "unknown source(s): nope" in result.stderr


@pytest.mark.faults
def test_commands_starting_at_once_on_a_fresh_folder_find_its_instance_whole(tmp_path):
    """Four processes make the same fresh DAGSTER_HOME at once (as `logfit dev` and `logfit
    materialize` started together do), and a fifth opens it as soon as dagster.yaml shows (as
    the UI or a test does): each opens the instance and reads its runs, and its schema is
    stamped once (Dagster opening a fresh instance twice at once stamps it twice, and every
    later open fails with "more than one head")."""
    import sqlite3
    import time

    home = tmp_path / "home"
    make = (
        "import sys; from logfit_dagster.cli import ensure_dagster_home; import dagster as dg\n"
        "home = ensure_dagster_home()\n"
        "with dg.DagsterInstance.from_config(str(home)) as instance: instance.get_runs()\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    makers = [
        subprocess.Popen([sys.executable, "-c", make], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while not (home / "dagster.yaml").exists():
        assert time.monotonic() < deadline, "no dagster.yaml"
        time.sleep(0.01)
    with dg.DagsterInstance.from_config(str(home)) as instance:  # at once, as a poller does
        assert instance.get_runs() == []
    for maker in makers:
        assert maker.wait(timeout=120) == 0, maker.stderr.read()[-2000:]
    with sqlite3.connect(home / "history" / "runs.db") as db:
        assert len(db.execute("SELECT * FROM alembic_version").fetchall()) == 1
    assert not list(home.glob(".config-*"))  # the staged copy is gone


@pytest.mark.slow
def test_logfit_dev_takes_host_and_port_and_stops_everything_on_sigterm(workdir):
    """Started as a shell starts a background job (SIGINT ignored), ``logfit dev`` serves on the
    port it was given, and one SIGTERM to it stops every process it started."""
    import signal
    import time
    import urllib.request

    import psutil

    from tests.processes import free_port, stop

    port = free_port()
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    log = open(workdir / "dev.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "logfit_dagster.cli", "dev", "-h", "127.0.0.1", "--port", str(port)]
        + ["--", "-m", "logfit_dagster.definitions"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (workdir / "dev.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (workdir / "dev.log").read_text()[-3000:]
                time.sleep(1)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 3  # dagster dev, its webserver, its daemon (and code servers)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "superseded" not in (workdir / "dev.log").read_text()
        _, alive = psutil.wait_procs(started, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        stop(proc)
        log.close()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["classify", "-"], "- is not a regular file"),
        (["classify", "/dev/stdin"], "/dev/stdin is not a regular file"),
        (["classify", "x.log", "--threshold", "5"], "5 is not between 0 and 1"),
        (["classify", "x.log", "--threshold", "nan"], "nan is not between 0 and 1"),
    ],
)
@pytest.mark.faults
def test_classify_refuses_what_it_cannot_read_or_mean(workdir, argv, words):
    (workdir / "data" / "models").mkdir(parents=True)
    (workdir / "data" / "models" / "look_skip_champion.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", *argv],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2 and words in result.stderr, result.stderr[-2000:]


@pytest.mark.faults
@pytest.mark.slow
def test_one_bad_source_fails_alone_and_one_good_source_is_enough(workdir):
    """A source whose files are missing fails its own run, named, and so does an invalid
    registry entry; the only good source runs the whole lineage, the overview included, and the
    line model says why one source trains nothing. With the bad entries gone, the registry of
    one source exits 0."""
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
        "  - {name: broken, origin: files, path: missing/*.log}\n"
        "  - {name: badfmt, origin: files, path: x.log, format: '[<Level>] <Content>'}\n"
    )
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "[broken] FAILED" in result.stderr and "no file matches" in result.stderr
    assert "[badfmt] FAILED" in result.stderr and "field 'format'" in result.stderr
    assert _row(result, "tiny_hdfs")[1] == "1500"
    assert "look_skip_model: not trained: labelled lines from 1 source(s)" in result.stdout
    assert (workdir / "data" / "assets" / "dataset_splits" / "tiny_hdfs.parquet").exists()
    # only the two bad sources failed: every all-sources step ran on the one good source
    failed = {
        line.split("] FAILED:")[0].rpartition("[")[2]
        for line in result.stderr.splitlines()
        if "] FAILED:" in line
    }
    assert failed == {"broken", "badfmt"}, result.stderr[-3000:]
    overview = pd.read_parquet(workdir / "data" / "assets" / "metrics_overview" / "all.parquet")
    assert set(overview["unit"]) >= {"session"} and "line" not in set(overview["unit"])

    (workdir / "sources.yaml").write_text(
        "sources:\n  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
    )
    again = _materialize(workdir)
    assert _row(again, "tiny_hdfs")[1] == "1500"


@pytest.mark.faults
@pytest.mark.slow
def test_a_killed_materialize_leaves_no_run_started(workdir):
    """kill -9 of `logfit materialize` mid-run: the next command (or the nightly schedule)
    marks the run FAILURE, and the schedule requests the source again."""
    import signal
    import time
    from datetime import datetime

    from logfit_dagster.runs import fail_orphaned_runs
    from logfit_dagster.schedules import nightly_ingest_and_label

    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", "tiny_hdfs"]
        + ["--job", "nightly_job"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    home = str(workdir / "data" / "dagster_home")
    started = dg.DagsterRunStatus.STARTED
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, "the command ended before it could be killed"
            assert time.monotonic() < deadline, "no run started"
            if (workdir / "data" / "dagster_home" / "dagster.yaml").exists():
                with dg.DagsterInstance.from_config(home) as instance:
                    if instance.get_runs(filters=dg.RunsFilter(statuses=[started])):
                        break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with dg.DagsterInstance.from_config(home) as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(statuses=[started]))
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now(UTC)
        ) as tick:
            requests = nightly_ingest_and_label(tick)  # fails the orphan, then requests
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert [r.partition_key for r in requests] == ["tiny_hdfs"]
        assert fail_orphaned_runs(instance) == []


def test_materialize_out_of_process_rebuilds_each_job_in_its_processes(workdir):
    result = _materialize(workdir, "tiny_hdfs", "--job", "ingest_job", "--executor", "multiprocess")
    assert _row(result, "tiny_hdfs")[1] == "1500"
    assert (workdir / "data" / "assets" / "dataset_splits" / "tiny_hdfs.parquet").exists()
    with dg.DagsterInstance.from_config(str(workdir / "data" / "dagster_home")) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "ingest_job" and run.status == dg.DagsterRunStatus.SUCCESS


@pytest.mark.slow
@pytest.mark.faults
def test_a_run_killed_mid_stream_leaves_no_spill_or_temporary_file_after_the_next(workdir):
    """kill -9 while a streaming step writes: the next materialize runs, and what the killed
    process left beside the outputs (a spill folder, a temporary file) is gone."""
    import signal
    import time

    from logfit_dagster.core.synthetic import generate

    (workdir / "big.log").write_text("\n".join(generate("hdfs", 600_000, 5).lines) + "\n")
    (workdir / "sources.yaml").write_text(
        "sources:\n  - {name: big, origin: files, path: big.log, format: HDFS, "
        "session: {by: block_id}}\n"
    )
    assets = workdir / "data" / "assets"

    def litter() -> list:
        if not assets.exists():
            return []
        return [p for p in assets.rglob("*") if p.name.startswith(".")]

    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", "big", "--job", "ingest_job"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while not litter():
            assert proc.poll() is None, "the command ended before it could be killed"
            assert time.monotonic() < deadline, "no step wrote anything"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert litter(), "the kill left something to clean"
    result = _materialize(workdir, "big", "--job", "ingest_job")
    assert _row(result, "big")[1] == "600000"
    assert litter() == []
    assert (assets / "dataset_splits" / "big.parquet").exists()


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize(
    ("registry", "body", "words"),
    [
        ("nope.yaml", None, "source registry not found:"),
        ("sources.yaml", "", "the registry is empty"),
        ("sources.yaml", "- {name: a}\n", "must be a mapping with key 'sources'"),
        ("sources.yaml", "sources: []\n", "no source to materialize"),
    ],
)
def test_materialize_refuses_a_registry_that_names_nothing_with_exit_2(
    workdir, registry, body, words
):
    path = workdir / registry
    if body is not None:
        path.write_text(body)
    result = run_logfit(workdir, "materialize", env={"LOGFIT_SOURCES": str(path)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


# a source whose ingest takes a few seconds: a command is still in its first run when signalled
BIG = "  - {name: big, origin: synthetic, kind: hdfs, lines: 300000, seed: 3}\n"


def _start_materialize(workdir, *extra: str) -> subprocess.Popen:
    env = {**os.environ}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", *extra],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the test's Ctrl-C goes to it alone
    )


def _wait_for_run(workdir, proc, status=dg.DagsterRunStatus.STARTED, timeout=180):
    import time

    home = str(workdir / "data" / "dagster_home")
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no run started"
        if (workdir / "data" / "dagster_home" / "dagster.yaml").exists():
            with dg.DagsterInstance.from_config(home) as instance:
                runs = instance.get_runs(filters=dg.RunsFilter(statuses=[status]))
                if runs:
                    return runs[0]
        time.sleep(0.2)


def _ctrl_c(workdir, presses: int, runs: int = 1):
    """``logfit materialize`` given Ctrl-C ``presses`` times, as a terminal sends it (SIGINT to
    its process group) once ``runs`` runs have begun and one of them is going; the process,
    the ids of the runs there were when the first press was sent, its stderr."""
    import signal
    import time

    proc = _start_materialize(workdir)
    try:
        _wait_for_run(workdir, proc)
        with dg.DagsterInstance.from_config(str(workdir / "data" / "dagster_home")) as instance:
            while len(instance.get_runs()) < runs:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            time.sleep(1.0)
            pressed = {r.run_id for r in instance.get_runs()}
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, pressed, err


@pytest.mark.faults
@pytest.mark.slow
def test_ctrl_c_stops_materialize_marks_its_run_and_starts_nothing_else(workdir):
    """A terminal's Ctrl-C (SIGINT to the command's process group) while the first source
    ingests (the other's ingest beside it, in the other worker, or alone where there is one
    CPU): its run ends failed or canceled, no other run starts, the summary says what was
    interrupted, and the command exits 130."""
    from logfit_dagster.core.models.threads import available_cpus

    (workdir / "sources.yaml").write_text(
        f"sources:\n{BIG}"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
    )
    proc, pressed, err = _ctrl_c(workdir, presses=1, runs=2 if available_cpus() > 1 else 1)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted (Ctrl-C) during big" in err and "nothing after it was started" in err
    # Dagster's own helper processes may print their KeyboardInterrupt; logfit prints none
    assert not re.search(r"logfit_dagster/(cli\.py|commands/)", err)
    with dg.DagsterInstance.from_config(str(workdir / "data" / "dagster_home")) as instance:
        runs = instance.get_runs()
    assert {r.run_id for r in runs} == pressed, "a run started after the Ctrl-C"
    (big,) = [r for r in runs if r.tags.get("dagster/partition") == "big"]
    assert big.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    # none left open; the small source's ingest ended either way, and nothing after it ran
    assert all(r.is_finished for r in runs)
    assert not (workdir / "data" / "assets" / "scored_lines" / "tiny_bgl.parquet").exists()


@pytest.mark.faults
@pytest.mark.slow
def test_ctrl_c_stops_the_runs_in_the_workers_and_marks_them(workdir):
    """A terminal's Ctrl-C while two runs train in the workers (the line models, the template
    model's pretraining), every later run waiting: both runs end failed, no run is left open or
    started after, and the command exits 130."""
    import signal
    import time

    from logfit_dagster.core.models.threads import available_cpus

    if available_cpus() < 2:
        pytest.skip("one CPU: the runs go one at a time")
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
        "  - {name: tiny_java, origin: synthetic, kind: javaapp, lines: 600, seed: 13}\n"
    )
    proc = _start_materialize(workdir, "--parallel", "2")
    home = str(workdir / "data" / "dagster_home")
    training = {
        dg.AssetKey(name) for name in ("look_skip_model", "template_lm_pretrained", "template_lm")
    }

    def running() -> list:
        with dg.DagsterInstance.from_config(home) as instance:
            return [
                r
                for r in instance.get_runs(
                    filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
                )
                if training & set(r.asset_selection or ())
            ]

    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no two runs ever trained at once"
            if (workdir / "data" / "dagster_home" / "dagster.yaml").exists():
                if len(running()) == 2:
                    break
            time.sleep(0.2)
        time.sleep(1.0)
        side = running()
        pressed = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted (Ctrl-C) during" in err
    assert "the runs go 2 at a time to worker processes" in err
    assert stopped_in < 30, f"stopped {stopped_in:.0f} s after the Ctrl-C"
    assert side, "no run was training when Ctrl-C was pressed"
    with dg.DagsterInstance.from_config(home) as instance:
        runs = instance.get_runs()
        by_id = {r.run_id: r for r in runs}
        assert all(by_id[r.run_id].status == dg.DagsterRunStatus.FAILURE for r in side)
        open_ = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)
        assert not [r.run_id for r in runs if r.status in open_], "a run left open"
        # nothing after them: the all-source reports never ran
        assert not any(dg.AssetKey("metrics_overview") in (r.asset_selection or ()) for r in runs)
    import psutil

    def worker(process) -> bool:
        try:
            return process.cwd() == str(workdir) and "multiprocessing" in " ".join(
                process.cmdline()
            )
        except psutil.Error:
            return False

    assert not [p.pid for p in psutil.process_iter() if worker(p)], "a worker outlived it"


@pytest.mark.faults
@pytest.mark.slow
def test_a_second_ctrl_c_forces_materialize_to_stop_at_once(workdir):
    (workdir / "sources.yaml").write_text(f"sources:\n{BIG}")
    proc, _, err = _ctrl_c(workdir, presses=2)
    assert proc.returncode == 130, err[-3000:]


@pytest.mark.faults
@pytest.mark.slow
def test_a_second_materialize_on_one_data_folder_refuses_naming_the_first(workdir):
    import signal

    (workdir / "sources.yaml").write_text(f"sources:\n{BIG}")
    first = _start_materialize(workdir)
    try:
        _wait_for_run(workdir, first)
        second = run_logfit(workdir, "materialize", "big")
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is being materialized by pid {first.pid}" in second.stderr
        assert "logfit materialize" in second.stderr and "--wait" in second.stderr
        with dg.DagsterInstance.from_config(str(workdir / "data" / "dagster_home")) as instance:
            assert len(instance.get_runs()) == 1, "the second command started a run"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.faults
@pytest.mark.slow
def test_a_tampered_miner_state_fails_its_source_alone_and_runs_nothing(workdir):
    import json

    marker = workdir / "ran"
    state = workdir / "data" / "sources" / "tiny_bgl" / "drain_state.json"
    state.parent.mkdir(parents=True)
    payload = {"py/reduce": [{"py/function": "os.system"}, {"py/tuple": [f"touch {marker}"]}]}
    state.write_text(json.dumps({"profile": "x", "drain": json.dumps(payload)}))
    result = run_logfit(workdir, "materialize", "--job", "ingest_job")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"[tiny_bgl] FAILED: {state}: drain: holds 'py/reduce'" in result.stderr
    assert _row(result, "tiny_hdfs")[1] == "1500"
    assert not marker.exists()

"""The Celery executor for real: a Redis broker and two dagster-celery workers on 127.0.0.1.

Three log sources run their whole lineage (ingest, labels, session models and their MLflow
runs, reports) at once, each as a run of its own launched the way an operator would (``dagster job execute`` with ``LOGFIT_EXECUTOR=celery``);
every step must have run inside one of the two worker processes, and both workers must have
taken work.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dagster_celery")
psutil = pytest.importorskip("psutil")

import dagster as dg  # noqa: E402

from .processes import free_port, stop  # noqa: E402

REDIS = shutil.which("redis-server")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
    ),
]

SOURCES = ("tiny_hdfs", "tiny_bgl", "tiny_hdfs_b")
BIN = Path(sys.executable).parent


def _wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture
def celery_cluster(workdir, tmp_path, monkeypatch):
    """Redis, a Dagster instance, two workers; yields (env, worker processes by name)."""
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
        "  - {name: tiny_hdfs_b, origin: synthetic, kind: hdfs, lines: 1200, seed: 13}\n"
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {
        **os.environ,
        "LOGFIT_EXECUTOR": "celery",
        "LOGFIT_CELERY_BROKER": broker,
        "LOGFIT_LABELER": "rule",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Create the instance's storage once, before two workers race to create it.
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("log_source", list(SOURCES))
    config = tmp_path / "celery.yaml"
    config.write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")

    procs = []
    redis = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(redis)
    workers = {}
    try:
        _wait_for_port(port)
        for name in ("w1", "w2"):
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            workers[name] = subprocess.Popen(
                [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
                + ["-y", str(config), "-n", name, "--", "--pool=solo"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(workers[name])
        _wait_for_workers(env, broker, tmp_path)
        yield env, workers
    finally:
        for proc in reversed(procs):
            stop(proc)


def _wait_for_workers(env, broker: str, tmp_path: Path, timeout: float = 60) -> None:
    """Until both workers answer a ping through the broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [str(BIN / "celery"), "-b", broker, "inspect", "ping", "--json", "--timeout", "2"],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and "w1@" in out.stdout and "w2@" in out.stdout:
            return
        time.sleep(1)
    logs = "\n".join((tmp_path / f"{n}.log").read_text()[-2000:] for n in ("w1", "w2"))
    raise TimeoutError(f"the celery workers did not answer within {timeout}s:\n{logs}")


def test_source_lineage_of_three_sources_runs_in_the_celery_workers(celery_cluster, tmp_path):
    env, workers = celery_cluster
    launches = {
        source: subprocess.Popen(
            [str(BIN / "dagster"), "job", "execute", "-m", "logfit_dagster.definitions"]
            + ["-j", "source_lineage_job", "--tags", json.dumps({"dagster/partition": source})],
            env=env,
            stdout=open(tmp_path / f"run_{source}.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for source in SOURCES
    }
    try:
        for source, proc in launches.items():
            assert proc.wait(timeout=600) == 0, (tmp_path / f"run_{source}.log").read_text()[-4000:]
    finally:
        for proc in launches.values():
            stop(proc)

    worker_pids = {
        name: {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        for name, proc in workers.items()
    }
    launcher_pids = {proc.pid for proc in launches.values()}
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(SOURCES)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        steps_by_worker = {name: 0 for name in workers}
        hostnames = set()
        for run in runs:
            starts = [
                e.dagster_event
                for e in instance.all_logs(run.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
            ]
            assert {s.step_key for s in starts} >= {
                "raw_logs",
                "llm_labels",
                "session_model",
                "metrics_report",
            }
            for start in starts:
                owner = [n for n, pids in worker_pids.items() if start.pid in pids]
                assert owner, f"{start.step_key} ran in pid {start.pid}, not in a worker"
                assert start.pid not in launcher_pids and start.pid != os.getpid()
                steps_by_worker[owner[0]] += 1
            hostnames |= {
                str(e.dagster_event.engine_event_data.metadata["Celery worker"].value)
                for e in instance.all_logs(run.run_id)
                if e.dagster_event
                and e.dagster_event.event_type_value == "ENGINE_EVENT"
                and "Celery worker" in e.dagster_event.engine_event_data.metadata
            }
            materialized = instance.get_latest_materialization_event(dg.AssetKey("dataset_splits"))
            assert materialized is not None
    assert all(count > 0 for count in steps_by_worker.values()), steps_by_worker
    assert {h.split("@")[0] for h in hostnames} == {"w1", "w2"}

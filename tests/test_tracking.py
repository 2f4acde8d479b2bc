"""The MLflow store the tracker opens: several processes starting on a fresh data folder."""

import os
import subprocess
import sys

import pytest

OPEN_STORE = (
    "from logfit_dagster.resources.tracking import ExperimentTracker\n"
    "print(ExperimentTracker().champion('logfit-look-skip'))\n"
)


@pytest.mark.faults
def test_processes_opening_a_fresh_store_at_once_all_succeed(workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(p.wait(timeout=180), p.communicate()) for p in procs]
    failures = [err[-1500:] for code, (_, err) in outcomes if code != 0]
    assert not failures, failures
    assert all(out.strip() == "None" for _, (out, _) in outcomes)
    assert (workdir / "data" / "mlflow" / "mlflow.db").exists()

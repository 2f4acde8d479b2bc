"""End to end: the README's main command on a small embedded default, in a fresh process."""

import os
import subprocess
import sys

import pandas as pd


def test_logfit_materialize_prints_summary_and_writes_outputs(workdir):
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
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("source"))
    for column in ("lines", "parse failures", "templates", "sessions", "anomalous sessions"):
        assert column in header
    row = next(line for line in lines if line.startswith("tiny_hdfs")).split()
    assert row[1] == "1500" and row[2] == "0"
    data = workdir / "data"
    assert (data / "dagster_home" / "dagster.yaml").exists(), "the instance lives under data/"
    splits = pd.read_parquet(data / "assets" / "dataset_splits" / "tiny_hdfs.parquet")
    assert set(splits["split"]) == {"train", "dev", "test"}
    # the whole lineage: labels, the line classifier and its champion, every source scored
    assert "look_skip_model: leave-sources-out LOOK F1" in result.stdout
    assert (data / "models" / "look_skip_champion.json").exists()
    for source in ("tiny_hdfs", "tiny_bgl"):
        scored = pd.read_parquet(data / "assets" / "scored_lines" / f"{source}.parquet")
        assert scored["probability"].between(0, 1).all()
    assert (data / "mlflow" / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_logfit_materialize_refuses_unknown_source(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", "materialize", "nope"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "unknown source(s): nope" in result.stderr

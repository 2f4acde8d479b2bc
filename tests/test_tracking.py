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
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=180), p.communicate()) for p in procs]
    failures = [err[-1500:] for code, (_, err) in outcomes if code != 0]
    assert not failures, failures
    assert all(out.strip() == "None" for _, (out, _) in outcomes)
    assert (workdir / "data" / "mlflow" / "mlflow.db").exists()


def test_a_registered_version_hands_back_its_folder_and_scores_as_its_model(
    workdir, tmp_path, monkeypatch
):
    import mlflow.pyfunc

    from logfit_dagster.core.errors import ModelFileError
    from logfit_dagster.core.models.base import read_manifest, train
    from logfit_dagster.core.models.session_counts import SessionScorer
    from logfit_dagster.resources.tracking import ExperimentTracker
    from tests.test_models import _sessions

    sessions, splits = _sessions(120, anomalous_every=5)
    trained = train("session_counts", (sessions, splits), {}, tmp_path / "counts")
    tracker = ExperimentTracker()
    probe = [[1, 2, 3, 3, 4, 5], [1, 2, 3, 3, 4, 9, 9], [9, 1], [7]]
    for kind in ("logistic_regression", "decision_tree"):
        record = tracker.log_training(
            run_name=kind,
            model_name=f"m-{kind}",
            params={},
            metrics={},
            artifact_folder=trained.folder,
            model_config={"kind": kind},
        )
        folder = tracker.model_files(record.model_name, record.version, tmp_path / record.run_id)
        # a whole model: every file of the manifest there, with its digest
        assert read_manifest(folder, verify=True) == read_manifest(trained.folder)
        # the version is its own model of the folder, through MLflow's loader and logfit's
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri())
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", tracker.uri())
        served = mlflow.pyfunc.load_model(f"models:/m-{kind}/{record.version}")
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.delenv("MLFLOW_REGISTRY_URI")
        expected = SessionScorer(trained.folder, read_manifest(trained.folder), kind).score(probe)
        assert served.predict([" ".join(map(str, p)) for p in probe]) == expected.tolist()
    with pytest.raises(
        ModelFileError, match="m-decision_tree version 9: not in the model registry"
    ):
        tracker.model_files("m-decision_tree", "9", tmp_path / "none")

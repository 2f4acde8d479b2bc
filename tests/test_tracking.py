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


def test_a_registered_version_hands_back_the_folder_it_was_trained_in(workdir, tmp_path):
    from logfit_dagster.core.errors import ModelFileError
    from logfit_dagster.core.models.base import read_manifest, train
    from logfit_dagster.core.models.session_counts import read_training
    from logfit_dagster.resources.tracking import ExperimentTracker
    from tests.test_models import _sessions

    sessions, splits = _sessions(120, anomalous_every=5)
    trained = train("session_counts", (sessions, splits), {}, tmp_path / "counts")
    tracker = ExperimentTracker()
    result = read_training(trained.folder).results[0]
    # the scikit-learn flavour (the folder beside the model) and the pyfunc one (inside it)
    sk = tracker.log_training(
        run_name="sk",
        model_name="m-sk",
        params={},
        metrics={},
        sk_model=result.pipeline,
        artifact_folder=trained.folder,
    )
    py = tracker.log_training(
        run_name="py", model_name="m-py", params={}, metrics={}, artifact_folder=trained.folder
    )
    for record in (sk, py):
        folder = tracker.model_files(record.model_name, record.version, tmp_path / record.run_id)
        # a whole model: every file of the manifest there, with its digest
        assert read_manifest(folder, verify=True) == read_manifest(trained.folder)
    with pytest.raises(ModelFileError, match="m-sk version 9: not in the model registry"):
        tracker.model_files("m-sk", "9", tmp_path / "none")

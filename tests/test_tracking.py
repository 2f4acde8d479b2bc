"""The MLflow store the tracker opens: several processes starting on a fresh data folder, a new
data folder's store copied from the empty one kept for the MLflow version, and the versions the
tracker registers."""

import os
import subprocess
import sys

import pytest

OPEN_STORE = (
    "from logfit_dagster.resources.tracking import ExperimentTracker\n"
    "print(ExperimentTracker().champion('logfit-look-skip'))\n"
)


@pytest.mark.faults
def test_processes_opening_a_fresh_store_at_once_all_succeed(workdir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # no empty store kept yet: MLflow creates this one, with its schema migrations
    env["LOGFIT_CACHE"] = str(tmp_path / "cache")
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


def _runs(tracker) -> list[str]:
    import mlflow

    with tracker._session():
        return list(
            mlflow.search_runs(experiment_names=[tracker.experiment])["tags.mlflow.runName"]
        )


def test_a_new_data_folder_starts_from_the_empty_store_kept_for_the_mlflow_version(
    tmp_path, monkeypatch
):
    import sqlite3

    import mlflow

    from logfit_dagster.resources.tracking import ExperimentTracker

    monkeypatch.setenv("LOGFIT_CACHE", str(tmp_path / "cache"))
    kept = tmp_path / "cache" / "mlflow" / f"empty-{mlflow.__version__}.db"
    for name in ("first", "second"):
        monkeypatch.setenv("LOGFIT_DATA_DIR", str(tmp_path / name))
        ExperimentTracker().log_training(
            run_name=f"run-{name}", model_name="m", params={"a": 1}, metrics={"f1": 0.5}
        )
        if name == "first":  # MLflow created the first store; its empty copy was kept
            assert kept.is_file()
            with sqlite3.connect(kept) as db:
                assert db.execute("select count(*) from runs").fetchone() == (0,)
                db.execute("create table kept_marker (x)")
    # the second folder's store is the kept one (its marker there), and a store of its own:
    # its run only, its artifacts under its folder
    store = tmp_path / "second" / "mlflow" / "mlflow.db"
    with sqlite3.connect(store) as db:
        assert db.execute("select name from sqlite_master where name = 'kept_marker'").fetchone()
    tracker = ExperimentTracker()
    assert _runs(tracker) == ["run-second"]
    with tracker._session():
        location = mlflow.get_experiment_by_name(tracker.experiment).artifact_location
    assert location == (tmp_path / "second" / "mlflow" / "artifacts").resolve().as_uri()


@pytest.mark.parametrize("cache", ["unwritable", "damaged"])
def test_without_a_usable_kept_store_mlflow_creates_it(tmp_path, monkeypatch, cache):
    import mlflow

    from logfit_dagster.resources.tracking import ExperimentTracker

    if cache == "unwritable":  # a file where the cache's folder would be
        (tmp_path / "cache").write_text("")
    else:
        kept = tmp_path / "cache" / "mlflow" / f"empty-{mlflow.__version__}.db"
        kept.parent.mkdir(parents=True)
        kept.write_text("not a database")
    monkeypatch.setenv("LOGFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOGFIT_DATA_DIR", str(tmp_path / "data"))
    tracker = ExperimentTracker()
    tracker.log_training(run_name="r", model_name="m", params={}, metrics={"f1": 0.5})
    assert _runs(tracker) == ["r"]


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

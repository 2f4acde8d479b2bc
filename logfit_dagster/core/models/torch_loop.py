"""The training loop every torch family shares: AdamW with warmup then linear or cosine decay,
early stopping on a dev metric, checkpoints every N steps and resume, progress with an ETA.

A family gives the loop its model, a ``step_loss(indices)`` that returns the loss of a batch of
training rows, and an ``evaluate()`` that scores the dev data at the end of an epoch. The loop
owns the rest:

- the data order of epoch ``e`` is a permutation seeded by ``seed + e``, so a resumed run sees
  the same batches as an uninterrupted one;
- a checkpoint (``checkpoints/step-N/``: weights as safetensors, optimizer, scheduler and random
  state, the loop's state last) every ``checkpoint_every`` steps and at every epoch's end; a run
  started again in the same folder continues from the newest finished checkpoint;
- the best epoch's weights in ``best/``, loaded back into the model when the loop ends.

Needs only torch, numpy and safetensors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from logfit_dagster.core.models.base import Progress, no_progress
from logfit_dagster.core.models.tensor_tree import load_tensor_tree, save_tensor_tree


@dataclass
class LoopSpec:
    rows: int  # training rows; a batch is a list of their indices
    batch_size: int = 32
    max_epochs: int = 10
    patience: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.1  # share of the steps
    schedule: str = "linear"  # after warmup: linear or cosine decay to 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    clip_norm: float = 1.0
    seed: int = 0
    metric: str = "dev_f1"  # the name of what evaluate() returns, higher is better
    # Stop once training has run this long (seconds, this process; 0: no budget): the epoch
    # under way ends there, is evaluated, and the best model so far is kept.
    max_seconds: float = 0.0
    # Stop after this many optimizer steps in all, resumed steps included (0: no budget). Unlike
    # the time budget it gives the same model on any machine; the learning-rate schedule then
    # runs over these steps (or the epochs' steps, if fewer).
    max_steps: int = 0
    # An epoch counts as a gain only when the metric beats the best by this share of the best's
    # size (0: any gain): a dev loss that creeps down by 0.1% an epoch stops training.
    min_improvement: float = 0.0
    # and by at least this much (the metric's units; 0: any gain)
    min_delta: float = 0.0


@dataclass
class LoopResult:
    step: int
    epochs: list[dict]  # per epoch: its step, the dev metric and evaluate()'s extras
    history: list[dict]  # per step: loss
    best_epoch: int
    best_metric: float
    best_extra: dict
    stopped: str
    resumed_from: int
    extra: dict = field(default_factory=dict)


def pick_device(device: str = "auto") -> str:
    """``auto``: cuda, then mps, then cpu."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast(device: str, precision: str = "auto"):
    """The mixed-precision context of a device and its name: bf16 on GPUs that support it
    (``auto``), fp32 on CPUs."""
    import torch

    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported()
    )
    if use_bf16 and device != "cpu":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16), "bf16"
    return contextlib.nullcontext(), "fp32"


def checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints of a folder, oldest first."""
    root = Path(folder) / "checkpoints"
    if not root.is_dir():
        return []
    # state.json is written last; a checkpoint of an older layout (optimizer.pt) is not read
    done = [
        p
        for p in root.glob("step-*")
        if (p / "state.json").is_file() and (p / "optimizer.json").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, keep: int) -> None:
    import torch
    from safetensors.torch import save_model

    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']}"
    tmp = root / f".tmp-step-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # tied weights (an LM head) once
    save_tensor_tree(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "optimizer",
    )
    # state.json last: a checkpoint without it is unfinished and ignored
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    import torch
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"))
    extra = load_tensor_tree(path / "optimizer")
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    if extra["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    return json.loads((path / "state.json").read_text())


def _save_best(model, folder: Path) -> None:
    from safetensors.torch import save_model

    best = folder / "best"
    best.mkdir(parents=True, exist_ok=True)
    tmp = best / ".model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, best / "model.safetensors")


def _schedule(spec: LoopSpec, total: int) -> Callable[[int], float]:
    warmup = max(1, int(spec.warmup * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, total - warmup)
        if spec.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        return max(0.0, 1.0 - done)

    return factor


def run(
    model,
    spec: LoopSpec,
    step_loss: Callable,
    evaluate: Callable[[], tuple[float, dict]] | None,
    folder: Path,
    progress: Progress | None = None,
) -> LoopResult:
    """Train ``model`` in ``folder``, resuming from its newest checkpoint.

    Args:
        step_loss: ``step_loss(indices) -> loss`` for a batch of training row indices (the loop
            calls ``backward``).
        evaluate: ``evaluate() -> (metric, extras)`` on the dev data (higher is better); without
            it every epoch is the best so far and training runs ``max_epochs``.
    """
    import torch
    from safetensors.torch import load_model

    progress = progress or no_progress
    folder = Path(folder)
    steps_per_epoch = math.ceil(spec.rows / spec.batch_size)
    total = steps_per_epoch * spec.max_epochs
    if spec.max_steps:
        total = min(total, spec.max_steps)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=spec.learning_rate,
        weight_decay=spec.weight_decay,
        betas=tuple(spec.betas),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(spec, total))
    state = {
        "step": 0,
        "epoch": 0,
        "best_metric": -math.inf,
        "best_epoch": -1,
        "best_extra": {},
        "bad_epochs": 0,
        "history": [],
        "epochs": [],
        "stopped": "",
    }
    resumed_from = 0
    existing = checkpoints(folder)
    if existing:
        state = _load_checkpoint(existing[-1], model, optimizer, scheduler)
        resumed_from = state["step"]
        progress(state["step"], total, resumed_from=resumed_from)
    started, seen = time.perf_counter(), 0
    over_budget = over_steps = False
    model.train()
    while not state["stopped"] and state["epoch"] < spec.max_epochs:
        epoch = state["epoch"]
        order = np.random.default_rng(spec.seed + epoch).permutation(spec.rows)
        for b in range(state["step"] - epoch * steps_per_epoch, steps_per_epoch):
            if spec.max_steps and state["step"] >= spec.max_steps:
                over_steps = True
                break
            if spec.max_seconds and time.perf_counter() - started >= spec.max_seconds:
                over_budget = True
                break
            idx = order[b * spec.batch_size : (b + 1) * spec.batch_size]
            loss = step_loss(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            seen += len(idx)
            rate = seen / max(time.perf_counter() - started, 1e-9)
            value = float(loss.detach())
            state["history"].append({"step": state["step"], "epoch": epoch, "loss": value})
            progress(
                state["step"],
                total,
                epoch=epoch + 1,
                loss=value,
                lr=scheduler.get_last_lr()[0],
                rows_per_s=rate,
                eta_s=_eta(spec, total - state["step"], rate, time.perf_counter() - started),
            )
            if state["step"] % spec.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                _save_checkpoint(folder, model, optimizer, scheduler, state, spec.keep_checkpoints)
            if spec.max_steps and state["step"] >= spec.max_steps:
                over_steps = True
                break
        record: dict = {"epoch": epoch + 1, "step": state["step"]}
        if evaluate is not None:
            metric, extras = evaluate()
            model.train()
            record.update({spec.metric: metric, **extras})
            best = state["best_metric"]
            margin = spec.min_improvement * abs(best) if math.isfinite(best) else 0.0
            if metric > best + max(margin, spec.min_delta, 1e-9):
                state.update(best_metric=metric, best_epoch=epoch + 1, best_extra=extras)
                state["bad_epochs"] = 0
                _save_best(model, folder)
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= spec.patience:
                    state["stopped"] = (
                        f"early stop: no {spec.metric} gain in {spec.patience} epochs"
                    )
        else:
            state.update(best_epoch=epoch + 1)
            _save_best(model, folder)
        if over_steps and not state["stopped"]:
            state["stopped"] = f"step budget ({spec.max_steps}) reached"
        if over_budget and not state["stopped"]:
            state["stopped"] = (
                f"time budget ({spec.max_seconds:g} s) reached at step {state['step']} of {total}"
            )
        state["epochs"].append(record)
        progress(state["step"], total, **{k: v for k, v in record.items() if k != "step"})
        state["epoch"] += 1
        _save_checkpoint(folder, model, optimizer, scheduler, state, spec.keep_checkpoints)
    if not state["stopped"]:
        state["stopped"] = f"max_epochs ({spec.max_epochs}) reached"
    load_model(model, str(folder / "best" / "model.safetensors"))
    model.eval()
    return LoopResult(
        step=state["step"],
        epochs=state["epochs"],
        history=state["history"],
        best_epoch=state["best_epoch"],
        best_metric=state["best_metric"],
        best_extra=state["best_extra"],
        stopped=state["stopped"],
        resumed_from=resumed_from,
    )


def _eta(spec: LoopSpec, steps_left: int, rows_per_s: float, elapsed: float) -> float:
    """Seconds left: the steps left at the current rate, or the budget left if that is less."""
    eta = steps_left * spec.batch_size / rows_per_s
    return min(eta, max(0.0, spec.max_seconds - elapsed)) if spec.max_seconds else eta


def clear_training_state(folder: Path) -> None:
    """Checkpoints and best weights go once the model is written."""
    for name in ("checkpoints", "best"):
        shutil.rmtree(Path(folder) / name, ignore_errors=True)

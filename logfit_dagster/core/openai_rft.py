"""OpenAI reinforcement fine-tuning (RFT) of a model that judges sessions, never started twice.

The files are uploaded and the job created once; its id is journaled before anything waits on
it, so a process that dies while the job runs is followed up by the next one, which finds the
job in the journal and polls it instead of paying for a second. Events and reward metrics
stream to a callback; a failed or cancelled job raises with OpenAI's own message.

OpenAI has announced that its fine-tuning platform closes to new users (new jobs end in January
2027): this route keeps working for accounts that still have it; the local route (SFT and GRPO
with LoRA) is the default way to reinforce a model on sessions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from logfit_dagster.core.errors import BudgetExceededError, LogfitError
from logfit_dagster.core.llm_sessions import ANSWER_SCHEMA, estimate_tokens
from logfit_dagster.core.reading import atomic_path

DONE = ("succeeded", "failed", "cancelled")


class FineTuningJobError(LogfitError):
    """A fine-tuning job failed or was cancelled (OpenAI's message says why)."""


@dataclass(frozen=True)
class RFTParams:
    """The job's model and hyperparameters; ``"auto"`` leaves a value to OpenAI."""

    base_model: str = "o4-mini-2025-04-16"
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    reasoning_effort: str = "low"
    eval_interval: int | str = "auto"
    eval_samples: int | str = "auto"
    suffix: str = "logfit-sessions"
    seed: int = 0


@dataclass
class RFTResult:
    """What the job ended with."""

    job_id: str
    status: str
    fine_tuned_model: str | None
    resumed: bool
    trained_tokens: int | None = None
    checkpoints: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)


def job_key(train: Path, valid: Path, grader: dict, params: RFTParams) -> str:
    """What makes a job the same job: the files' bytes, the grader and the parameters."""
    digest = hashlib.sha256()
    for path in (train, valid):
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps([grader, asdict(params)], sort_keys=True).encode())
    return digest.hexdigest()[:24]


def estimated_training_tokens(train: Path, params: RFTParams) -> int:
    """Prompt tokens of the training file times the epochs (3 when left to OpenAI)."""
    tokens = sum(estimate_tokens(line) for line in Path(train).read_text().splitlines())
    epochs = params.n_epochs if isinstance(params.n_epochs, int) else 3
    return tokens * epochs


class Journal:
    """The job a key started, in a small JSON file written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def write(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(json.dumps(entry, indent=1))


def run_rft(
    client,
    train: Path,
    valid: Path,
    grader: dict,
    params: RFTParams,
    journal: Journal,
    *,
    max_cost_usd: float | None = None,
    usd_per_million_training_tokens: float | None = None,
    poll_seconds: float = 10.0,
    max_poll_seconds: float = 300.0,
    log: Callable[[str], None] = lambda _: None,
    on_metrics: Callable[[dict], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RFTResult:
    """Start (or follow) the RFT job of these files, grader and parameters, until it ends.

    Raises:
        BudgetExceededError: before uploading, when the estimated cost exceeds the cap.
        FineTuningJobError: when the job fails or is cancelled.
    """
    key = job_key(train, valid, grader, params)
    entry = journal.read()
    resumed = entry.get("key") == key and bool(entry.get("job_id"))
    if resumed:
        job_id, files = entry["job_id"], entry.get("files")
        log(f"following fine-tuning job {job_id}, started by an earlier run")
    else:
        tokens = estimated_training_tokens(train, params)
        if max_cost_usd is not None and usd_per_million_training_tokens is not None:
            estimate = tokens * usd_per_million_training_tokens / 1e6
            if estimate > max_cost_usd:
                raise BudgetExceededError(
                    f"the RFT job would train on about {tokens:,} tokens, about ${estimate:.2f} "
                    f"at ${usd_per_million_training_tokens}/M, over the cap of "
                    f"${max_cost_usd:.2f}: nothing was uploaded"
                )
        files = entry.get("files") if entry.get("key") == key else None
        if not files:
            files = {}
            for role, path in (("training", train), ("validation", valid)):
                with open(path, "rb") as handle:
                    files[role] = client.files.create(file=handle, purpose="fine-tune").id
            journal.write({"key": key, "files": files})
        job = client.fine_tuning.jobs.create(
            model=params.base_model,
            training_file=files["training"],
            validation_file=files["validation"],
            suffix=params.suffix,
            seed=params.seed,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": grader,
                    "response_format": {"type": "json_schema", "json_schema": ANSWER_SCHEMA},
                    "hyperparameters": {
                        k: getattr(params, k)
                        for k in (
                            "n_epochs",
                            "batch_size",
                            "learning_rate_multiplier",
                            "reasoning_effort",
                            "eval_interval",
                            "eval_samples",
                        )
                    },
                },
            },
        )
        job_id = job.id
        # journaled before anything waits on it: a run that dies now is followed up, not redone
        journal.write({"key": key, "files": files, "job_id": job_id})
        log(f"created fine-tuning job {job_id} on {params.base_model}")
    metrics: list[dict] = []
    # OpenAI lists a job's events newest first: each poll reads the latest page and keeps the
    # events not seen yet (their ids journaled, so a resumed run does not log them twice)
    seen = list(entry.get("seen_events", [])) if resumed else []
    wait = poll_seconds
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        page = client.fine_tuning.jobs.list_events(job_id, limit=100)
        fresh = sorted(
            (e for e in page.data if e.id not in seen), key=lambda e: (e.created_at, e.id)
        )
        for event in fresh:
            log(f"[{job_id}] {event.message}")
            data = getattr(event, "data", None) or {}
            if event.type == "metrics" and isinstance(data, dict):
                metrics.append(data)
                on_metrics(data)
        if fresh:
            seen = (seen + [e.id for e in fresh])[-1000:]
            journal.write({"key": key, "files": files, "job_id": job_id, "seen_events": seen})
            wait = poll_seconds
        if job.status in DONE:
            break
        sleep(wait)
        wait = min(wait * 2, max_poll_seconds)
    if job.status != "succeeded":
        error = getattr(job, "error", None)
        message = getattr(error, "message", None) or "no message"
        raise FineTuningJobError(f"fine-tuning job {job_id} {job.status}: {message}")
    checkpoints = [
        {"id": c.id, "step": c.step_number, "model": c.fine_tuned_model_checkpoint}
        for c in client.fine_tuning.jobs.checkpoints.list(job_id).data
    ]
    return RFTResult(
        job_id=job_id,
        status=job.status,
        fine_tuned_model=job.fine_tuned_model,
        resumed=resumed,
        trained_tokens=getattr(job, "trained_tokens", None),
        checkpoints=checkpoints,
        metrics=metrics,
    )

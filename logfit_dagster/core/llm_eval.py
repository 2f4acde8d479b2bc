"""Any chat model behind an OpenAI-compatible API judges test sessions; nothing is paid twice.

``base_url`` reaches OpenAI, vLLM, llama.cpp or Ollama through the ``openai`` SDK. Each answer
is cached under the model, the prompt version and the session's messages, so a re-run (or a
run that died half-way) pays only for what it has not asked yet. 429 and 5xx replies are
retried with backoff by the SDK; an answer that is not the schema is counted as unparseable,
never guessed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from logfit_dagster.core.errors import BudgetExceededError
from logfit_dagster.core.labeling.base import price_of
from logfit_dagster.core.labeling.openai_chat import ChatModel, ChatReply, chat
from logfit_dagster.core.llm_sessions import ANSWER_SCHEMA, LABELS, parse_answer
from logfit_dagster.core.scores import confusion_counts, rates
from logfit_dagster.core.sqlite_files import named_errors

OUTPUT_TOKENS_PER_ANSWER = 60


_REMEDY = "move it aside to start an empty cache (its sessions are then judged again)"


class AnswerCache:
    """Replies by key in a SQLite file: written as each reply arrives, read before asking."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with (
            named_errors(self.path, "the cache of judged sessions", _REMEDY),
            self._connect() as db,
        ):
            db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT, "
                "input_tokens INTEGER, output_tokens INTEGER)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get_many(self, keys: list[str]) -> dict[str, ChatReply]:
        found = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = db.execute(
                    f"SELECT key, text, input_tokens, output_tokens FROM answers WHERE key IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update({k: ChatReply(t, i, o) for k, t, i, o in rows})
        return found

    def put(self, key: str, answer: ChatReply) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                (key, answer.text, answer.input_tokens, answer.output_tokens),
            )


def answer_key(model: str, prompt_version: str, messages: str) -> str:
    """The cache key of a session's answer: the model, the prompt version, the messages."""
    payload = json.dumps([model, prompt_version, messages], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class SessionJudge(ChatModel):
    """A chat model asked for ``{"label", "reason"}``, a few sessions at a time.

    Args:
        max_tokens: the longest answer (None: the server's default); a local model judged
            in-process and through a server answers alike with the same cap.
        server: a :class:`~logfit_dagster.core.serving.LocalServer` the judge asks, stopped
            when the judge is closed.
        name: what answers are cached and reported under (default: the model): a served
            folder's name and digest, where the server knows the model by its path.
        logit_bias: token id -> bias sent with every request: how an llm_lora adapter
            decides at its dev threshold (``llm_lora.decision_bias``).
    """

    key_owner = "the session judge"
    key_variable = "the variable named in the config"

    def __init__(
        self,
        *,
        max_tokens: int | None = None,
        server=None,
        name: str = "",
        logit_bias: dict[int, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_tokens, self.server = max_tokens, server
        self.name = name or self.model
        self.logit_bias = logit_bias or {}

    def ask(self, messages: list[dict]) -> ChatReply:
        response_format = (
            {"type": "json_schema", "json_schema": ANSWER_SCHEMA}
            if self.structured_output
            else None
        )
        return chat(
            self.client,
            self.model,
            messages,
            response_format,
            max_tokens=self.max_tokens,
            logit_bias=self.logit_bias,
        )

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.server is not None:
                self.server.close()


@dataclass
class EvalStats:
    """What one evaluation asked, got and cost."""

    sessions: int = 0
    cached: int = 0
    asked: int = 0
    failed: int = 0
    unparseable: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    problems: list[str] = field(default_factory=list)


def evaluate_sessions(
    test: pd.DataFrame,
    judge: SessionJudge,
    cache: AnswerCache,
    *,
    max_cost_usd: float | None = None,
    prices: dict | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[pd.DataFrame, dict, EvalStats]:
    """Ask the judge about every test session it has not answered yet, and score the answers.

    Args:
        test: examples (``session_id``, ``label``, ``messages``, ``prompt_version``,
            ``est_tokens``) of the test split.

    Returns:
        Per session its answer, predicted label (missing where unparseable or failed) and
        whether it came from the cache; the metrics (precision, recall, F1, accuracy and the
        confusion matrix over the answered sessions, and how many were not); the stats.

    Raises:
        BudgetExceededError: before anything is sent, when the estimated cost of the sessions
            still to ask exceeds ``max_cost_usd``.
    """
    stats = EvalStats(sessions=len(test))
    keys = [
        answer_key(judge.name, str(v), str(m))
        for v, m in zip(test["prompt_version"], test["messages"], strict=True)
    ]
    answers = cache.get_many(keys)
    stats.cached = sum(1 for k in keys if k in answers)
    todo = [i for i, k in enumerate(keys) if k not in answers]
    price = price_of(judge.model, prices)
    if todo and max_cost_usd is not None and price is not None:
        tin = int(test["est_tokens"].iloc[todo].sum())
        estimate = (tin * price[0] + len(todo) * OUTPUT_TOKENS_PER_ANSWER * price[1]) / 1e6
        if estimate > max_cost_usd:
            raise BudgetExceededError(
                f"asking {judge.model} about {len(todo)} session(s) would cost about "
                f"${estimate:.2f}, over the cap of ${max_cost_usd:.2f}: nothing was sent"
            )
    if todo:
        log(f"asking {judge.name} about {len(todo)} session(s) ({stats.cached} cached)")
    with ThreadPoolExecutor(judge.max_concurrency, thread_name_prefix="session-judge") as pool:
        futures = {pool.submit(judge.ask, json.loads(test["messages"].iloc[i])): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            answer = future.result()
            stats.asked += 1
            if answer.error:
                stats.failed += 1
                stats.problems.append(f"{test['session_id'].iloc[i]}: {answer.error}")
                continue
            cache.put(keys[i], answer)  # paid for: kept at once
            answers[keys[i]] = answer
            stats.input_tokens += answer.input_tokens
            stats.output_tokens += answer.output_tokens
    stats.cost_usd = (
        (stats.input_tokens * price[0] + stats.output_tokens * price[1]) / 1e6 if price else None
    )
    rows = []
    for i, key in enumerate(keys):
        answer = answers.get(key)
        predicted = parse_answer(answer.text) if answer else None
        if answer is not None and predicted is None:
            stats.unparseable += 1
        rows.append(
            {
                "session_id": test["session_id"].iloc[i],
                "label": int(test["label"].iloc[i]),
                "answer": answer.text if answer else None,
                "predicted": None if predicted is None else int(predicted == LABELS[0]),
                "cached": i not in todo,
            }
        )
    frame = pd.DataFrame(rows)
    answered = frame[frame["predicted"].notna()]
    tp, fp, fn, tn = confusion_counts(
        answered["label"].astype(int).to_numpy(), answered["predicted"].astype(int).to_numpy()
    )
    metrics = {
        **rates(tp, fp, fn, tn, empty=0.0),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "answered": len(answered),
        "unanswered": len(frame) - len(answered),
    }
    return frame, metrics, stats

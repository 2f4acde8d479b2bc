"""The labeler interface, and the run that labels a source incrementally through the cache.

Two kinds of labeler: a :class:`BatchLabeler` submits many requests at once and collects them
later (the Message Batches API); a :class:`DirectLabeler` answers requests as they are made
(chat completions, recorded labels, rules). :func:`label_source` drives either: it cuts the
source into windows, takes what the cache has, collects batches a killed run left in flight,
checks the budget, asks for the rest, asks once more for lines a reply left out, and returns
one row per line with what it cost.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd

from logfit_dagster.core.errors import BudgetExceededError
from logfit_dagster.core.labeling.cache import CachedWindow, LabelCache, cache_key
from logfit_dagster.core.labeling.prompt import PromptSpec, Window, cut_windows, parse_reply

# USD per million input and output tokens, before any batch discount.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-opus-4-1": (15.0, 75.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}

# Rough token estimates for the budget check, made before anything is sent.
CHARS_PER_TOKEN = 3.5
PROMPT_OVERHEAD_TOKENS = 450
OUTPUT_TOKENS_PER_LINE = 30


@dataclass
class Request:
    """One ask: some lines (``asked``, window numbering) of one window."""

    custom_id: str
    key: str
    window: Window
    asked: list[int]
    followup: bool

    def meta(self) -> dict:
        """What the batch journal keeps to apply a reply without the window's text."""
        return {
            "key": self.key,
            "asked": self.asked,
            "start": self.window.start,
            "n": len(self.window.lines),
            "followup": self.followup,
        }


@dataclass
class Reply:
    """A model's answer to a request, or why there is none."""

    custom_id: str
    payload: object = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retryable: bool = False


class Labeler:
    """Labels windows of lines LOOK or SKIP."""

    name: str = "labeler"
    model: str = ""
    #: Priced at the batch discount.
    batch: bool = False
    #: Calls a paid API: the budget cap applies.
    paid: bool = False
    #: Lines a reply left out are asked once more.
    asks_again: bool = True

    def close(self) -> None:
        """Release clients; called once the run is over."""


class DirectLabeler(Labeler, ABC):
    @abstractmethod
    def label(self, requests: list[Request], prompt: PromptSpec) -> Iterator[Reply]:
        """Answer each request, yielding replies as they complete (any order)."""


class BatchLabeler(Labeler, ABC):
    batch = True
    max_resubmits: int = 2

    @abstractmethod
    def chunks(self, requests: list[Request], prompt: PromptSpec) -> Iterable[list[Request]]:
        """Split requests into batches the API accepts."""

    @abstractmethod
    def submit(self, requests: list[Request], prompt: PromptSpec) -> str:
        """Create a batch; return its id."""

    @abstractmethod
    def collect(self, batch_id: str) -> Iterator[Reply]:
        """Wait for a batch to end and stream its results."""


@dataclass
class LabelStats:
    """What one labeling run did and cost."""

    windows: int = 0
    cache_hits: int = 0
    requests: int = 0
    followup_requests: int = 0
    resubmitted_requests: int = 0
    failed_requests: int = 0
    batches_submitted: int = 0
    batches_resumed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost_usd: float = 0.0
    price_known: bool = True
    repairs: int = 0
    problems: list[str] = field(default_factory=list)
    unlabeled_lines: int = 0
    lines: int = 0


def price_of(
    model: str, prices: dict[str, tuple[float, float]] | None
) -> tuple[float, float] | None:
    table = {**DEFAULT_PRICES, **(prices or {})}
    if model in table:
        return tuple(table[model])
    for name, price in table.items():  # dated snapshots: claude-haiku-4-5-20251001
        if model.startswith(name):
            return tuple(price)
    return None


def estimate_cost(
    requests: list[Request],
    prompt: PromptSpec,
    labeler: Labeler,
    prices: dict | None,
    batch_discount: float,
) -> tuple[int, int, float | None]:
    """Estimated input tokens, output tokens and USD of sending ``requests``."""
    tin = tout = 0
    for request in requests:
        chars = len(prompt.system) + sum(
            len(request.window.lines[i - 1]) + 6 for i in request.asked
        )
        tin += int(chars / CHARS_PER_TOKEN) + PROMPT_OVERHEAD_TOKENS
        tout += OUTPUT_TOKENS_PER_LINE * len(request.asked)
    price = price_of(labeler.model, prices)
    if price is None:
        return tin, tout, None
    factor = batch_discount if labeler.batch else 1.0
    return tin, tout, (tin * price[0] + tout * price[1]) / 1e6 * factor


class _Run:
    """The state of one labeling run: cache, stats and the requests in flight."""

    def __init__(self, labeler, prompt, cache, prices, batch_discount, log):
        self.labeler = labeler
        self.prompt = prompt
        self.cache = cache
        self.prices = prices
        self.batch_discount = batch_discount
        self.log = log
        self.stats = LabelStats(
            price_known=not labeler.paid or price_of(labeler.model, prices) is not None
        )

    def key(self, window: Window) -> str:
        return cache_key(
            self.labeler.name, self.labeler.model, self.prompt.version, window.content_hash
        )

    def apply(self, meta: dict, reply: Reply) -> None:
        """Store a reply in the cache; applying the same reply twice changes nothing."""
        stats = self.stats
        stats.input_tokens += reply.input_tokens
        stats.output_tokens += reply.output_tokens
        price = price_of(self.labeler.model, self.prices)
        if price is not None:
            factor = self.batch_discount if self.labeler.batch else 1.0
            stats.estimated_cost_usd += (
                (reply.input_tokens * price[0] + reply.output_tokens * price[1]) / 1e6 * factor
            )
        current = self.cache.get_many([meta["key"]]).get(meta["key"])
        if (current is not None and not meta["followup"]) or (current and current.followed_up):
            return  # already applied (a batch collected twice after a crash)
        if meta["followup"] and current is None:
            return
        asked = list(meta["asked"])
        if reply.error is not None:
            stats.failed_requests += 1
            stats.problems.append(f"{reply.custom_id}: {reply.error}")
            if not meta["followup"]:
                return  # not cached: the next run asks again
            parsed_labels, missing = {}, asked
        else:
            shape = Window("", meta["start"], ("",) * meta["n"], 0)
            parsed = parse_reply(reply.payload, shape, asked)
            stats.repairs += len(parsed.repairs)
            stats.problems.extend(f"{reply.custom_id}: {p}" for p in parsed.problems)
            parsed_labels, missing = parsed.labels, parsed.missing(asked)
        if meta["followup"]:
            labels = {**current.labels, **parsed_labels}
            entry = CachedWindow(
                labels,
                [i for i in current.missing if i not in labels],
                True,
                current.requests + 1,
                current.input_tokens + reply.input_tokens,
                current.output_tokens + reply.output_tokens,
            )
        else:
            entry = CachedWindow(
                parsed_labels, missing, False, 1, reply.input_tokens, reply.output_tokens
            )
        self.cache.put(
            meta["key"],
            labeler=self.labeler.name,
            model=self.labeler.model,
            prompt_version=self.prompt.version,
            content_hash=meta.get("content_hash", ""),
            window=entry,
        )

    def resume_open_batches(self) -> None:
        """Collect batches that a previous run submitted but did not collect."""
        if not isinstance(self.labeler, BatchLabeler):
            return
        open_batches = self.cache.open_batches(
            self.labeler.name, self.labeler.model, self.prompt.version
        )
        for batch_id, metas in open_batches.items():
            self.log.info(f"collecting batch {batch_id} left in flight by an earlier run")
            self.stats.batches_resumed += 1
            for reply in self.labeler.collect(batch_id):
                meta = metas.get(reply.custom_id)
                if meta is not None and not (reply.error and reply.retryable):
                    self.apply(meta, reply)
            self.cache.close_batch(batch_id)

    def send(self, requests: list[Request]) -> None:
        if not requests:
            return
        self.stats.requests += len(requests)
        self.stats.followup_requests += sum(r.followup for r in requests)
        labeler = self.labeler
        if isinstance(labeler, DirectLabeler):
            by_id = {r.custom_id: r for r in requests}
            for reply in labeler.label(requests, self.prompt):
                self.apply(_meta(by_id[reply.custom_id]), reply)
            return
        todo = requests
        for round_ in range(labeler.max_resubmits + 1):
            failed: list[tuple[Request, Reply]] = []
            for chunk in labeler.chunks(todo, self.prompt):
                by_id = {r.custom_id: r for r in chunk}
                batch_id = labeler.submit(chunk, self.prompt)
                self.cache.record_batch(
                    batch_id,
                    labeler.name,
                    labeler.model,
                    self.prompt.version,
                    {r.custom_id: _meta(r) for r in chunk},
                )
                self.stats.batches_submitted += 1
                self.log.info(f"submitted batch {batch_id} with {len(chunk)} request(s)")
                seen = set()
                for reply in labeler.collect(batch_id):
                    request = by_id.get(reply.custom_id)
                    if request is None:
                        continue
                    seen.add(reply.custom_id)
                    if reply.error and reply.retryable:
                        failed.append((request, reply))
                    else:
                        self.apply(_meta(request), reply)
                for custom_id in by_id.keys() - seen:
                    failed.append(
                        (by_id[custom_id], Reply(custom_id, error="no result", retryable=True))
                    )
                self.cache.close_batch(batch_id)
            if not failed:
                return
            if round_ < labeler.max_resubmits:
                self.stats.resubmitted_requests += len(failed)
                self.log.warning(f"resubmitting {len(failed)} request(s) that did not succeed")
                todo = [request for request, _ in failed]
        for request, reply in failed:
            self.apply(_meta(request), reply)


def _meta(request: Request) -> dict:
    return {**request.meta(), "content_hash": request.window.content_hash}


def label_source(
    source: str,
    lines: list[str],
    labeler: Labeler,
    *,
    cache: LabelCache,
    prompt: PromptSpec | None = None,
    window_size: int = 50,
    max_cost_usd: float | None = None,
    prices: dict | None = None,
    batch_discount: float = 0.5,
    log: logging.Logger | None = None,
) -> tuple[pd.DataFrame, LabelStats]:
    """Label every line of ``source``, paying only for windows the cache does not have.

    Returns one row per line (``label`` is missing where no usable answer came) and the stats.
    Raises :class:`BudgetExceededError` before sending anything when the estimated cost of
    what is left to ask exceeds ``max_cost_usd``.
    """
    prompt = prompt or PromptSpec()
    log = log or logging.getLogger(__name__)
    run = _Run(labeler, prompt, cache, prices, batch_discount, log)
    windows = cut_windows(source, lines, window_size)
    keys = [run.key(w) for w in windows]
    run.stats.windows = len(windows)
    run.stats.lines = len(lines)

    try:
        run.resume_open_batches()
        cached = cache.get_many(keys)

        def final(entry: CachedWindow) -> bool:
            return entry.final or not labeler.asks_again

        run.stats.cache_hits = sum(1 for k in keys if k in cached and final(cached[k]))
        first = [
            Request(f"w-{w.content_hash}", k, w, list(range(1, len(w.lines) + 1)), False)
            for w, k in zip(windows, keys, strict=True)
            if k not in cached
        ]
        followups = [
            Request(f"f-{w.content_hash}", k, w, cached[k].missing, True)
            for w, k in zip(windows, keys, strict=True)
            if k in cached and not final(cached[k])
        ]
        pending = _unique(first + followups)
        if labeler.paid and max_cost_usd is not None and pending:
            tin, tout, cost = estimate_cost(pending, prompt, labeler, prices, batch_discount)
            if cost is not None and cost > max_cost_usd:
                raise BudgetExceededError(
                    f"labeling {len(pending)} window(s) of {source} with {labeler.name} "
                    f"({labeler.model}) would cost about ${cost:.2f} (~{tin:,} input and "
                    f"~{tout:,} output tokens), over the limit of ${max_cost_usd:.2f} per run; "
                    "nothing was submitted. Raise max_cost_usd to go ahead."
                )
        run.send(_unique(first))
        fresh = cache.get_many(keys)
        followups = [
            Request(f"f-{w.content_hash}", k, w, fresh[k].missing, True)
            for w, k in zip(windows, keys, strict=True)
            if k in fresh and not final(fresh[k])
        ]
        run.send(_unique(followups))
    finally:
        labeler.close()

    frame = _rows(windows, keys, cache.get_many(keys), labeler, prompt)
    run.stats.unlabeled_lines = int(frame["label"].isna().sum())
    return frame, run.stats


def _unique(requests: list[Request]) -> list[Request]:
    """One request per window content: identical windows share one answer."""
    seen: dict[str, Request] = {}
    for request in requests:
        seen.setdefault(request.custom_id, request)
    return list(seen.values())


def _rows(windows, keys, cached: dict[str, CachedWindow], labeler, prompt) -> pd.DataFrame:
    line_numbers, raws, labels, reasons, window_keys = [], [], [], [], []
    for window, key in zip(windows, keys, strict=True):
        entry = cached.get(key)
        for i, raw in enumerate(window.lines, start=1):
            label, reason = entry.labels.get(i, (None, None)) if entry else (None, None)
            line_numbers.append(window.start + i - 1)
            raws.append(raw)
            labels.append(label)
            reasons.append(reason)
            window_keys.append(window.content_hash)
    frame = pd.DataFrame(
        {
            "line_number": pd.array(line_numbers, dtype="int64"),
            "raw": pd.array(raws, dtype="string"),
            "label": pd.array(labels, dtype="string"),
            "reason": pd.array(reasons, dtype="string"),
            "window_key": pd.array(window_keys, dtype="string"),
        }
    )
    frame["labeler"] = labeler.name
    frame["model"] = labeler.model
    frame["prompt_version"] = prompt.version
    return frame

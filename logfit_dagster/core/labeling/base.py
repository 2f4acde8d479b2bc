"""The labeler interface, and the run that labels a source incrementally through the cache.

Two kinds of labeler: a :class:`BatchLabeler` submits many requests at once and collects them
later (the Message Batches API); a :class:`DirectLabeler` answers requests as they are made
(chat completions, recorded labels, rules). :func:`label_source` drives either: it plans the
requests (every line in windows, or one line per new shape: see ``distinct.py``), takes what
the cache has, collects batches a killed run left in flight, checks the budget, asks for the
rest, asks once more for lines a reply left out, and returns one row per line with what it
cost.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.errors import BudgetExceededError
from logfit_dagster.core.labeling.cache import CachedWindow, LabelCache, ShapeAnswer, cache_key
from logfit_dagster.core.labeling.prompt import (
    PromptSpec,
    Window,
    cut_windows,
    parse_reply,
    render_window,
)

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
    """One ask: some lines (``asked``, window numbering) of one window.

    ``context``: the whole window is shown and only ``asked`` are to be labelled (the
    ``distinct`` plan); ``shapes`` maps each asked line to its ``[shape hash, shape, line
    hash, source line number]``, so that the answers are recorded per shape too.
    """

    ident: str
    key: str
    window: Window
    asked: list[int]
    followup: bool = False
    context: bool = False
    shapes: dict[int, list] | None = None

    @property
    def custom_id(self) -> str:
        return ("f-" if self.followup else "w-") + self.ident

    def again(self, missing: list[int]) -> Request:
        """The follow-up ask for the lines a reply left out."""
        return Request(self.ident, self.key, self.window, missing, True, self.context, self.shapes)

    def user_message(self) -> str:
        only = self.asked if self.followup or self.context else None
        return render_window(self.window, only, self.context)

    def meta(self) -> dict:
        """What the batch journal keeps to apply a reply without the window's text."""
        meta = {
            "key": self.key,
            "asked": self.asked,
            "start": self.window.start,
            "n": len(self.window.lines),
            "followup": self.followup,
            "content_hash": self.window.content_hash,
        }
        if self.window.numbers:
            meta["numbers"] = list(self.window.numbers)
        if self.shapes is not None:
            meta["source"] = self.window.source
            meta["shapes"] = {str(i): v for i, v in self.shapes.items()}
        return meta


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


class ColumnLabeler(DirectLabeler):
    """A labeler whose answer for a line depends on that line alone (rules, recorded labels).

    Besides windows it answers a whole column of lines at once, with no prompt rendered and no
    reply parsed: :func:`label_batches` streams a source through it in bounded memory.
    """

    @abstractmethod
    def label_column(
        self, source: str, line_numbers: np.ndarray, lines: pa.Array
    ) -> tuple[pa.Array, pa.Array]:
        """The label (LOOK, SKIP or null) and reason of every line, as string arrays."""


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
    look_lines: int = 0
    lines: int = 0
    plan: str = "windows"
    # the distinct plan: shapes in the source, those with an answer from an earlier run (of
    # any source), lines labelled by their own answer or by their shape's, and shapes whose
    # answers disagree (their other lines left unlabelled)
    shapes: int = 0
    shapes_answered_before: int = 0
    direct_lines: int = 0
    propagated_lines: int = 0
    conflicted_shapes: int = 0
    conflicted_lines: int = 0


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
        shown = range(1, len(request.window.lines) + 1) if request.context else request.asked
        chars = len(prompt.system) + sum(len(request.window.lines[i - 1]) + 6 for i in shown)
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

    def key(self, window: Window, asked: str = "") -> str:
        """The cache key of a window (and of the lines asked in it, when not all of them)."""
        content = f"{window.content_hash}/{asked}" if asked else window.content_hash
        return cache_key(self.labeler.name, self.labeler.model, self.prompt.version, content)

    def shape_answers(self, shape_hashes: list[str]) -> dict[str, list[ShapeAnswer]]:
        return self.cache.shape_answers(
            self.labeler.name, self.labeler.model, self.prompt.version, shape_hashes
        )

    def final(self, entry: CachedWindow) -> bool:
        return entry.final or not self.labeler.asks_again

    def ask(self, asks: list[Request], source: str, max_cost_usd: float | None) -> None:
        """Send what the cache lacks: first asks, then once more for lines a reply left out."""
        cached = self.cache.get_many([a.key for a in asks])
        self.stats.cache_hits = sum(
            1 for a in asks if a.key in cached and self.final(cached[a.key])
        )
        asks = _unique(asks)
        first = [a for a in asks if a.key not in cached]
        followups = [
            a.again(cached[a.key].missing)
            for a in asks
            if a.key in cached and not self.final(cached[a.key])
        ]
        pending = first + followups
        labeler = self.labeler
        if labeler.paid and max_cost_usd is not None and pending:
            tin, tout, cost = estimate_cost(
                pending, self.prompt, labeler, self.prices, self.batch_discount
            )
            if cost is not None and cost > max_cost_usd:
                raise BudgetExceededError(
                    f"labeling {len(pending)} window(s) of {source} with {labeler.name} "
                    f"({labeler.model}) would cost about ${cost:.2f} (~{tin:,} input and "
                    f"~{tout:,} output tokens), over the limit of ${max_cost_usd:.2f} per run; "
                    "nothing was submitted. Raise max_cost_usd to go ahead."
                )
        self.send(first)
        fresh = self.cache.get_many([a.key for a in asks])
        self.send(
            [
                a.again(fresh[a.key].missing)
                for a in asks
                if a.key in fresh and not self.final(fresh[a.key])
            ]
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
            shape = Window("", meta["start"], ("",) * meta["n"], 0, tuple(meta.get("numbers", ())))
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
        if meta.get("shapes") and (entry.final or not self.labeler.asks_again):
            self.record_shapes(meta, entry)

    def record_shapes(self, meta: dict, entry: CachedWindow) -> None:
        """What a finished request said about each shape it asked (nothing, where it said
        nothing: the shape is then not asked again, like a window's missing line)."""
        answers = []
        for line, (shape_hash, shape, line_hash, source_line) in meta["shapes"].items():
            label, reason = entry.labels.get(int(line), (None, None))
            answers.append(
                ShapeAnswer(
                    shape_hash,
                    meta["key"],
                    shape,
                    label,
                    reason,
                    meta["source"],
                    source_line,
                    line_hash,
                )
            )
        self.cache.put_shape_answers(
            self.labeler.name, self.labeler.model, self.prompt.version, meta["key"], answers
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
            # free answers are stored in one transaction; each paid one is committed alone
            with nullcontext() if labeler.paid else self.cache.deferred():
                for reply in labeler.label(requests, self.prompt):
                    self.apply(by_id[reply.custom_id].meta(), reply)
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
                    {r.custom_id: r.meta() for r in chunk},
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
                        self.apply(request.meta(), reply)
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
            self.apply(request.meta(), reply)


PLANS = ("windows", "distinct")


def label_source(
    source: str,
    lines: list[str],
    labeler: Labeler,
    *,
    cache: LabelCache,
    prompt: PromptSpec | None = None,
    window_size: int = 50,
    plan: str = "windows",
    shape_samples: int = 1,
    context_lines: int = 3,
    max_cost_usd: float | None = None,
    prices: dict | None = None,
    batch_discount: float = 0.5,
    log: logging.Logger | None = None,
    shapes: set[str] | None = None,
) -> tuple[pd.DataFrame, LabelStats]:
    """Label every line of ``source``, paying only for what the cache does not have.

    ``plan``: ``windows`` sends every line, ``window_size`` consecutive lines a request;
    ``distinct`` sends one line per line shape not yet answered (for any source, with this
    labeler, model and prompt version), ``shape_samples`` times in different places, each
    shown with ``context_lines`` real neighbours on either side, at most ``window_size`` lines
    a request, and gives every other line of the shape that answer
    (:mod:`logfit_dagster.core.labeling.distinct`); with ``shapes`` (shape hashes, see
    ``distinct.digest``) only those shapes are asked, and lines of other shapes keep an answer
    only where the cache has one.

    Returns one row per line (``label`` is missing where no usable answer came) and the stats.
    Raises :class:`BudgetExceededError` before sending anything when the estimated cost of
    what is left to ask exceeds ``max_cost_usd``.
    """
    from logfit_dagster.core.labeling import distinct

    if plan not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
    if shape_samples < 1:
        raise ValueError(f"shape_samples must be at least 1, got {shape_samples}")
    prompt = prompt or PromptSpec()
    log = log or logging.getLogger(__name__)
    run = _Run(labeler, prompt, cache, prices, batch_discount, log)
    run.stats.lines = len(lines)
    run.stats.plan = plan
    try:
        run.resume_open_batches()
        if plan == "windows":
            windows = cut_windows(source, lines, window_size)
            asks = [
                Request(w.content_hash, run.key(w), w, list(range(1, len(w.lines) + 1)))
                for w in windows
            ]
        else:
            shaped = distinct.ShapedLines(source, lines)
            known = run.shape_answers(shaped.hashes)
            run.stats.shapes = len(shaped.hashes)
            run.stats.shapes_answered_before = len(known)
            asks = distinct.plan_requests(
                shaped, known, window_size, shape_samples, context_lines, run.key, only=shapes
            )
        run.stats.windows = len(asks)
        run.ask(asks, source, max_cost_usd)
    finally:
        labeler.close()

    if plan == "windows":
        keys = [a.key for a in asks]
        frame = _rows(windows, keys, cache.get_many(keys))
    else:
        frame = distinct.rows(shaped, run.shape_answers(shaped.hashes), run.stats)
    frame["labeler"] = labeler.name
    frame["model"] = labeler.model
    frame["prompt_version"] = prompt.version
    run.stats.unlabeled_lines = int(frame["label"].isna().sum())
    return frame, run.stats


#: The columns of a label set, as both routes write them.
LABEL_SCHEMA = pa.schema(
    [
        ("line_number", pa.int64()),
        ("raw", pa.string()),
        ("label", pa.string()),
        ("reason", pa.string()),
        ("window_key", pa.string()),
        ("label_source", pa.string()),
        ("shape_conflict", pa.bool_()),
        ("labeler", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


def label_batches(
    source: str,
    batches: Iterable[pa.Table],
    labeler: ColumnLabeler,
    prompt_version: str,
    stats: LabelStats,
    on_batch=None,
) -> Iterator[pa.Table]:
    """Label a source batch by batch through a labeler that answers in columns.

    ``batches`` are tables of ``line_number`` and ``raw``; each comes back as a table of
    :data:`LABEL_SCHEMA`, every label ``direct`` (its line's own answer). Nothing is sent or
    cached: such a labeler is free and answers the same way every time. ``stats`` counts as the
    batches pass (``plan`` is ``columns``); ``on_batch`` sees each labelled table.
    """
    stats.plan = "columns"
    for batch in batches:
        n = batch.num_rows
        numbers = batch.column("line_number").combine_chunks()
        raw = batch.column("raw").combine_chunks().cast(pa.string())
        labels, reasons = labeler.label_column(source, numbers.to_numpy(zero_copy_only=False), raw)
        labelled = pc.is_valid(labels)
        table = pa.table(
            [
                numbers.cast(pa.int64()),
                raw,
                labels,
                reasons,
                pa.nulls(n, pa.string()),
                pc.if_else(labelled, pa.scalar("direct"), pa.scalar(None, pa.string())),
                pa.array(np.zeros(n, dtype=bool)),
                pa.repeat(pa.scalar(labeler.name, pa.string()), n),
                pa.repeat(pa.scalar(labeler.model, pa.string()), n),
                pa.repeat(pa.scalar(prompt_version, pa.string()), n),
            ],
            schema=LABEL_SCHEMA,
        )
        stats.lines += n
        stats.direct_lines += int(pc.sum(labelled).as_py() or 0)
        stats.unlabeled_lines += n - int(pc.sum(labelled).as_py() or 0)
        if on_batch is not None:
            on_batch(table)
        yield table


def _unique(requests: list[Request]) -> list[Request]:
    """One request per window content: identical windows share one answer."""
    seen: dict[str, Request] = {}
    for request in requests:
        seen.setdefault(request.custom_id, request)
    return list(seen.values())


def _rows(windows, keys, cached: dict[str, CachedWindow]) -> pd.DataFrame:
    line_numbers, raws, labels, reasons, window_keys = [], [], [], [], []
    for window, key in zip(windows, keys, strict=True):
        entry = cached.get(key)
        for i, raw in enumerate(window.lines, start=1):
            label, reason = entry.labels.get(i, (None, None)) if entry else (None, None)
            line_numbers.append(window.start + i - 1)
            raws.append(raw)
            labels.append(label)
            reasons.append(reason)
        window_keys.extend([window.content_hash] * len(window.lines))
    frame = pd.DataFrame(
        {
            "line_number": pd.array(line_numbers, dtype="int64"),
            "raw": pd.array(raws, dtype="string"),
            "label": pd.array(labels, dtype="string"),
            "reason": pd.array(reasons, dtype="string"),
            "window_key": pd.array(window_keys, dtype="string"),
        }
    )
    frame["label_source"] = pd.array(
        np.where(frame["label"].isna(), None, "direct"), dtype="string"
    )
    frame["shape_conflict"] = False
    return frame

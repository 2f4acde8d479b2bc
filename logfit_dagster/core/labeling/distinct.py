"""The ``distinct`` labeling plan: one answer per line shape, given to every line of that shape.

A log repeats itself: 20,000 HDFS lines have a few dozen shapes (the line classifier's
normalisation, :func:`~logfit_dagster.core.line_features.shape_column`). This plan asks the
model about one line of each shape not answered yet, shown among its real neighbours: the
windows are chosen greedily so that each request covers as many unanswered shapes as it can.
Every other line of the shape takes the answer, marked ``propagated``; the line that was asked
keeps its own, marked ``direct``.

Answers are kept per shape in the label cache, across sources: a shape answered for one source
is not asked again for another with the same labeler, model and prompt version. With
``shape_samples`` above 1 a shape is asked that many times, each in a different window; when
the answers disagree, both are kept, the shape is flagged and its propagated lines stay
unlabelled (never a majority guess).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from logfit_dagster.core.labeling.cache import ShapeAnswer
from logfit_dagster.core.labeling.prompt import Window
from logfit_dagster.core.line_features import shape_column

# Windows offered per unanswered shape and per sample still wanted: centred on occurrences
# spread over the source, so that two samples of a shape come from different places.
CANDIDATES_PER_SAMPLE = 2


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ShapedLines:
    """A source's lines with the index of each line's shape."""

    def __init__(self, source: str, lines: list[str]):
        self.source = source
        self.lines = lines
        shapes, index = shape_column(pa.array(lines, type=pa.large_string()))
        self.shapes: list[str] = shapes.to_pylist()
        self.index = np.asarray(index, dtype=np.int64)
        self.hashes = [digest(shape) for shape in self.shapes]


def plan_requests(
    shaped: ShapedLines,
    known: dict[str, list[ShapeAnswer]],
    size: int,
    samples: int,
    context: int,
    key: Callable[[Window, str], str],
    only: set[str] | None = None,
):
    """The requests that ask each shape still short of ``samples`` answers, greedily few
    (only the shapes whose hash is in ``only``, when given).

    Each asked line is shown with ``context`` lines on either side (an excerpt); excerpts are
    chosen greedily, each covering as many shapes still wanted as it can, then packed in source
    order into requests of at most ``size`` lines, overlapping excerpts merged. ``known`` are
    the answers already recorded per shape hash; ``key(window, asked)`` gives a request's cache
    key. A line asked before (by an earlier run) is not asked again.
    """
    from logfit_dagster.core.labeling.base import Request

    if size < 1:
        raise ValueError(f"window size must be at least 1, got {size}")
    if context < 0:
        raise ValueError(f"context lines must be 0 or more, got {context}")
    context = min(context, (size - 1) // 2)
    index, n = shaped.index, len(shaped.lines)
    asked_before = {
        a.line_number - 1
        for answers in known.values()
        for a in answers
        if a.source == shaped.source
    }
    demand = np.array(
        [
            max(0, samples - len(known.get(h, []))) if only is None or h in only else 0
            for h in shaped.hashes
        ],
        dtype=np.int64,
    )
    if n == 0 or not demand.any():
        return []
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(len(shaped.shapes) + 1))
    centres: set[int] = set()
    for shape in np.flatnonzero(demand):
        where = order[bounds[shape] : bounds[shape + 1]]
        picks = np.unique(
            np.linspace(0, len(where) - 1, min(len(where), CANDIDATES_PER_SAMPLE * demand[shape]))
            .round()
            .astype(np.int64)
        )
        centres.update(int(p) for p in where[picks] if int(p) not in asked_before)

    def span(centre: int) -> tuple[int, int]:
        return max(centre - context, 0), min(centre + context + 1, n)

    # where each shape was asked in this plan: a second sample must come from an excerpt
    # that does not overlap the first (another context, not the same lines again)
    asked_at: dict[int, list[int]] = {}

    def wanted(centre: int) -> np.ndarray:
        first, end = span(centre)
        present = np.unique(index[first:end])
        present = present[demand[present] > 0]
        if asked_at:
            present = np.array(
                [
                    s
                    for s in present
                    if all(abs(centre - c) > 2 * context for c in asked_at.get(int(s), ()))
                ],
                dtype=np.int64,
            )
        return present

    heap = [(-len(wanted(c)), c) for c in sorted(centres)]
    heapq.heapify(heap)
    excerpts: list[tuple[int, int, dict[int, list]]] = []
    while heap:
        negative_gain, centre = heapq.heappop(heap)
        shapes = wanted(centre)
        if not len(shapes):
            continue
        if len(shapes) < -negative_gain:  # gains only fall: re-queue at its true worth
            heapq.heappush(heap, (-len(shapes), centre))
            continue
        first, end = span(centre)
        asked: dict[int, list] = {}
        for shape in shapes:
            # the centre itself for its own shape, else the nearest line of the shape
            for position in sorted(
                first + np.flatnonzero(index[first:end] == shape), key=lambda p: abs(p - centre)
            ):
                position = int(position)
                if position not in asked_before:
                    asked[position] = [
                        shaped.hashes[shape],
                        shaped.shapes[shape],
                        digest(shaped.lines[position]),
                        position + 1,
                    ]
                    asked_before.add(position)
                    asked_at.setdefault(int(shape), []).append(centre)
                    demand[shape] -= 1
                    break
        if asked:
            excerpts.append((first, end, asked))
    return [
        _request(Request, shaped, part, key)
        for part in _pack(sorted(excerpts, key=lambda e: e[0]), size)
    ]


def _pack(excerpts: list, size: int) -> list[list]:
    """Excerpts in source order, into groups of at most ``size`` distinct lines each."""
    groups: list[list] = []
    shown = 0
    last_end = -1
    for excerpt in excerpts:
        first, end, _ = excerpt
        added = end - max(first, last_end) if groups and first < last_end else end - first
        if not groups or shown + added > size:
            groups.append([])
            shown, last_end = 0, -1
            added = end - first
        groups[-1].append(excerpt)
        shown += max(added, 0)
        last_end = max(last_end, end)
    return groups


def _request(request_type, shaped: ShapedLines, excerpts: list, key):
    positions = sorted({p for first, end, _ in excerpts for p in range(first, end)})
    asked = {p: info for _, _, chosen in excerpts for p, info in chosen.items()}
    at = {p: i for i, p in enumerate(positions, start=1)}
    window = Window(
        shaped.source,
        positions[0] + 1,
        tuple(shaped.lines[p] for p in positions),
        len(shaped.lines),
        tuple(p + 1 for p in positions),
    )
    lines = sorted(at[p] for p in asked)
    request_key = key(window, ",".join(map(str, lines)))
    return request_type(
        request_key[:32],
        request_key,
        window,
        lines,
        context=True,
        shapes={at[p]: info for p, info in asked.items()},
    )


def rows(shaped: ShapedLines, answers: dict[str, list[ShapeAnswer]], stats) -> pd.DataFrame:
    """One row per line: its own answer where it was asked, else its shape's (``propagated``),
    else none; ``shape_conflict`` where the shape's answers disagree. Fills ``stats``."""
    n_shapes = len(shaped.shapes)
    label = np.full(n_shapes, None, dtype=object)
    reason = np.full(n_shapes, None, dtype=object)
    answered_by = np.full(n_shapes, None, dtype=object)
    conflict = np.zeros(n_shapes, dtype=bool)
    direct: list[tuple[int, ShapeAnswer]] = []
    for shape, shape_hash in enumerate(shaped.hashes):
        given = [a for a in answers.get(shape_hash, []) if a.label is not None]
        if not given:
            continue
        for a in given:
            if (
                a.source == shaped.source
                and 1 <= a.line_number <= len(shaped.lines)
                and digest(shaped.lines[a.line_number - 1]) == a.line_hash
            ):
                direct.append((a.line_number - 1, a))
        if len({a.label for a in given}) > 1:
            conflict[shape] = True
            reason[shape] = "the model answered this shape differently: " + " / ".join(
                f"{a.label} ({a.source}:{a.line_number}: {a.reason})" for a in given
            )
            continue
        label[shape] = given[0].label
        reason[shape] = given[0].reason
        answered_by[shape] = given[0].request_key
    index = shaped.index
    line_label = label[index] if len(index) else np.array([], dtype=object)
    line_source = np.where(pd.isna(line_label), None, "propagated").astype(object)
    line_conflict = conflict[index] if len(index) else np.array([], dtype=bool)
    line_reason = reason[index] if len(index) else np.array([], dtype=object)
    line_answer = answered_by[index] if len(index) else np.array([], dtype=object)
    for position, a in direct:
        line_label[position] = a.label
        line_reason[position] = a.reason
        line_source[position] = "direct"
        line_answer[position] = a.request_key
    stats.direct_lines = int((line_source == "direct").sum())
    stats.propagated_lines = int((line_source == "propagated").sum())
    stats.conflicted_shapes = int(conflict[np.unique(index)].sum()) if len(index) else 0
    stats.conflicted_lines = int(line_conflict.sum())
    return pd.DataFrame(
        {
            "line_number": pd.array(np.arange(1, len(index) + 1), dtype="int64"),
            "raw": pd.array(shaped.lines, dtype="string"),
            "label": pd.array(line_label, dtype="string"),
            "reason": pd.array(line_reason, dtype="string"),
            "window_key": pd.array(line_answer, dtype="string"),
            "label_source": pd.array(line_source, dtype="string"),
            "shape_conflict": line_conflict,
        }
    )

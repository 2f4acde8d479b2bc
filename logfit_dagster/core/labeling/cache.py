"""The persistent label cache and batch journal, one SQLite file under data/.

``windows`` holds every window ever labelled, keyed by labeler, model, prompt version and the
window's content hash, with the tokens it cost, so no window is paid for twice. ``shapes``
holds, for the ``distinct`` labeling plan, every answer given for a line shape: one row per
(shape, request), with the label (or none, when the request was answered without it), so a
shape answered for one source is not asked again for any other with the same labeler, model and
prompt version, and two answers that disagree are both kept. ``batches``
holds every submitted batch with the requests in it, written before polling starts: a process
killed while a batch is in flight leaves the batch id behind, and the next run collects it
instead of submitting again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from logfit_dagster.core.sqlite_files import named_errors

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    cache_key TEXT PRIMARY KEY,
    labeler TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    labels TEXT NOT NULL,          -- {"<window line>": [label, reason]}
    missing TEXT NOT NULL,         -- [window lines still unlabeled]
    followed_up INTEGER NOT NULL,  -- 1 once missing lines were asked once more
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shapes (
    labeler TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    shape_hash TEXT NOT NULL,
    request_key TEXT NOT NULL,     -- the window cache key of the request that asked it
    shape TEXT NOT NULL,
    label TEXT,                    -- LOOK | SKIP | NULL: asked, no usable answer
    reason TEXT,
    source TEXT NOT NULL,          -- where the line that was asked sits
    line_number INTEGER NOT NULL,
    line_hash TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (labeler, model, prompt_version, shape_hash, request_key)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    labeler TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    requests TEXT NOT NULL,        -- {custom_id: {"cache_key", "content_hash", "asked", "start"}}
    state TEXT NOT NULL,           -- open | collected
    submitted_at REAL NOT NULL,
    collected_at REAL
);
"""


def cache_key(labeler: str, model: str, prompt_version: str, content_hash: str) -> str:
    raw = json.dumps([labeler, model, prompt_version, content_hash])
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


@dataclass
class CachedWindow:
    labels: dict[int, tuple[str, str]]
    missing: list[int]
    followed_up: bool
    requests: int
    input_tokens: int
    output_tokens: int

    @property
    def final(self) -> bool:
        """Nothing more will be asked for this window."""
        return not self.missing or self.followed_up


@dataclass(frozen=True)
class ShapeAnswer:
    """One request's answer for one line shape."""

    shape_hash: str
    request_key: str
    shape: str
    label: str | None
    reason: str | None
    source: str
    line_number: int
    line_hash: str


class LabelCache:
    """Labels per window and the journal of submitted batches."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open: sqlite3.Connection | None = None
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _named(self):
        return named_errors(
            self.path,
            "the label cache",
            "move it aside to start an empty cache (labels in it, paid ones too, are then asked "
            "for again), or restore it from a backup",
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._open is not None:  # inside ``deferred()``: one transaction for all
            yield self._open
            return
        with self._named():
            db = sqlite3.connect(self.path, timeout=60)
            try:
                with db:
                    yield db
            finally:
                db.close()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Every read and write in the block on one connection, committed once at its end.

        For answers that cost nothing to ask again (the rule labeler, recorded labels): tens of
        thousands of windows then take one commit, not one each. Paid answers are committed one
        by one, outside this block, so that a crash never loses one.
        """
        if self._open is not None:
            yield
            return
        with self._named():
            db = sqlite3.connect(self.path, timeout=60)
            self._open = db
            try:
                with db:
                    yield
            finally:
                self._open = None
                db.close()

    def get_many(self, keys: list[str]) -> dict[str, CachedWindow]:
        found: dict[str, CachedWindow] = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = db.execute(
                    "SELECT cache_key, labels, missing, followed_up, requests, input_tokens, "
                    f"output_tokens FROM windows WHERE cache_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for key, labels, missing, followed, requests, tin, tout in rows:
                    found[key] = CachedWindow(
                        {int(k): tuple(v) for k, v in json.loads(labels).items()},
                        json.loads(missing),
                        bool(followed),
                        requests,
                        tin,
                        tout,
                    )
        return found

    def put(
        self,
        key: str,
        *,
        labeler: str,
        model: str,
        prompt_version: str,
        content_hash: str,
        window: CachedWindow,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO windows VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    labeler,
                    model,
                    prompt_version,
                    content_hash,
                    json.dumps({str(k): list(v) for k, v in window.labels.items()}),
                    json.dumps(window.missing),
                    int(window.followed_up),
                    window.requests,
                    window.input_tokens,
                    window.output_tokens,
                    time.time(),
                ),
            )

    # -- shape answers (the distinct plan) --------------------------------------------------

    def put_shape_answers(
        self, labeler: str, model: str, prompt_version: str, request_key: str, answers: list
    ) -> None:
        """Record what one request said about the shapes it asked: ``answers`` holds
        :class:`ShapeAnswer` rows (label None where the reply left the line out)."""
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO shapes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        labeler,
                        model,
                        prompt_version,
                        a.shape_hash,
                        request_key,
                        a.shape,
                        a.label,
                        a.reason,
                        a.source,
                        a.line_number,
                        a.line_hash,
                        now,
                    )
                    for a in answers
                ],
            )

    def shape_answers(
        self, labeler: str, model: str, prompt_version: str, shape_hashes: list[str]
    ) -> dict[str, list[ShapeAnswer]]:
        """Every answer recorded for these shapes, oldest first."""
        found: dict[str, list[ShapeAnswer]] = {}
        with self._connect() as db:
            for start in range(0, len(shape_hashes), 500):
                chunk = shape_hashes[start : start + 500]
                rows = db.execute(
                    "SELECT shape_hash, request_key, shape, label, reason, source, line_number, "
                    "line_hash FROM shapes WHERE labeler = ? AND model = ? AND prompt_version = ? "
                    f"AND shape_hash IN ({','.join('?' * len(chunk))}) ORDER BY updated_at, rowid",
                    [labeler, model, prompt_version, *chunk],
                )
                for row in rows:
                    found.setdefault(row[0], []).append(ShapeAnswer(*row))
        return found

    # -- the batch journal -------------------------------------------------------------------

    def record_batch(
        self, batch_id: str, labeler: str, model: str, prompt_version: str, requests: dict
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,NULL)",
                (
                    batch_id,
                    labeler,
                    model,
                    prompt_version,
                    json.dumps(requests),
                    "open",
                    time.time(),
                ),
            )

    def open_batches(self, labeler: str, model: str, prompt_version: str) -> dict[str, dict]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT batch_id, requests FROM batches WHERE state = 'open' AND labeler = ? "
                "AND model = ? AND prompt_version = ? ORDER BY submitted_at",
                (labeler, model, prompt_version),
            ).fetchall()
        return {batch_id: json.loads(requests) for batch_id, requests in rows}

    def close_batch(self, batch_id: str) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE batches SET state = 'collected', collected_at = ? WHERE batch_id = ?",
                (time.time(), batch_id),
            )

    def batch_count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]

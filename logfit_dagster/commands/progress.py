"""A live view of ``logfit materialize``: which run, which step, how far, how long.

Dagster writes every step's start and end and every message an asset logs to the run's event
log; a thread reads the newest run's events while the CLI's runs execute and shows them: one
line rewritten in place on a terminal, plain lines (a step's end, a training step at most every
few seconds) otherwise. Nothing here changes what runs.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

import dagster as dg

# Progress messages of the training loops ("<family>: step 12/80 (15%) ... eta 0m41s").
_TRAINING_MARK = " eta "
PLAIN_TRAINING_EVERY_SECONDS = 10.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


@dataclass
class _Run:
    """One run the view follows: its label, its assets, and what its events said so far."""

    label: str
    steps_total: int
    partition: str | None = None
    # the assets it runs, where runs of one partition go side by side (parts of a stage)
    keys: frozenset | None = None
    run_id: str | None = None
    cursor: str | None = None
    steps_done: int = 0
    current: str = ""
    training: str = ""
    last_plain_training: float = field(default=0.0)


class RunProgress:
    """Shows the events of the runs now executing while ``with`` holds: one at a time
    (:meth:`begin`), or several side by side (``begin(..., alone=False)`` for each, then
    :meth:`end` as each finishes).

    Args:
        instance: the Dagster instance the runs write to.
        stream: where to write (the terminal's stderr by default).
        tty: rewrite one line in place; None: when ``stream`` is a terminal.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        stream: TextIO | None = None,
        tty: bool | None = None,
        poll_seconds: float = 0.5,
    ):
        self.instance = instance
        self.stream = stream or sys.__stderr__
        self.tty = self.stream.isatty() if tty is None else tty
        self.poll_seconds = poll_seconds
        self.started = time.monotonic()
        self._runs: list[_Run] = []
        self._known_runs: set[str] = set()
        self._width = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        self._known_runs = {r.run_id for r in self.instance.get_runs(limit=50)}
        self._thread = threading.Thread(target=self._loop, name="logfit-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drain()
        self._clear()

    def _drain(self) -> None:
        """The last events of the runs just finished, before the view moves on."""
        try:
            self._poll()
        except Exception:  # noqa: BLE001 - a display must never break the runs it shows
            pass

    def begin(
        self,
        label: str,
        steps: int,
        partition: str | None = None,
        alone: bool = True,
        keys=None,
    ):
        """A new run is about to start: ``label`` names it, ``steps`` is how many assets,
        ``partition`` the source it runs for, ``keys`` its assets (where it tells the run from
        one of the same partition beside it). ``alone``: the runs followed so far have ended."""
        self._drain()
        with self._lock:
            if alone:
                self._forget(list(self._runs))
            selection = frozenset(keys) if keys is not None else None
            self._runs.append(_Run(label, steps, partition, selection))
        if not self.tty:
            self._write_line(f"[{_clock(self._elapsed())}] {label}: {steps} asset(s) to run")

    def end(self, label: str) -> None:
        """The run ``label`` (begun with ``alone=False``) has ended: its last events, then no
        more of it."""
        self._drain()
        with self._lock:
            self._forget([r for r in self._runs if r.label == label])

    def _forget(self, runs: list[_Run]) -> None:
        for run in runs:
            if run.run_id:
                self._known_runs.add(run.run_id)
            self._runs.remove(run)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a display must never break the runs it shows
                continue

    def _poll(self) -> None:
        with self._lock:
            if not self._runs:
                return
            waiting = [r for r in self._runs if r.run_id is None]
            if waiting:
                claimed = self._known_runs | {r.run_id for r in self._runs if r.run_id}
                new = [r for r in self.instance.get_runs(limit=20) if r.run_id not in claimed]
                for run in waiting:
                    # a run is told from a side-by-side one by its partition (its source),
                    # or its assets where both run for every source
                    match = next(
                        (
                            r
                            for r in new
                            if r.tags.get("dagster/partition") == run.partition
                            and (run.keys is None or r.asset_selection == run.keys)
                        ),
                        None,
                    )
                    if match is not None:
                        run.run_id = match.run_id
                        new.remove(match)
            for run in self._runs:
                if run.run_id is None:
                    continue
                connection = self.instance.get_records_for_run(run.run_id, cursor=run.cursor)
                run.cursor = connection.cursor
                for record in connection.records:
                    self._event(run, record.event_log_entry)
            if self.tty:
                self._draw()

    def _event(self, run: _Run, entry) -> None:
        event = entry.dagster_event
        if event is None:
            message = entry.user_message or ""
            if _TRAINING_MARK in message:
                run.training = message.split(" - ")[-1].strip()
                now = time.monotonic()
                if not self.tty and now - run.last_plain_training >= PLAIN_TRAINING_EVERY_SECONDS:
                    run.last_plain_training = now
                    self._write_line(f"[{_clock(self._elapsed())}] {run.label}: {run.training}")
            return
        step = event.step_key or ""
        if event.event_type == dg.DagsterEventType.STEP_START:
            run.current, run.training = step, ""
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            run.steps_done += 1
            if not self.tty:
                outcome = (
                    "done" if event.event_type == dg.DagsterEventType.STEP_SUCCESS else "FAILED"
                )
                self._write_line(
                    f"[{_clock(self._elapsed())}] {run.label}: {step} {outcome} "
                    f"({run.steps_done}/{max(run.steps_total, run.steps_done)})"
                )

    def _draw(self) -> None:
        parts = []
        for run in self._runs:
            total = max(run.steps_total, run.steps_done)
            parts.append(
                f"{run.label}: {run.steps_done}/{total} steps"
                + (f" · {run.current}" if run.current else "")
                + (f" · {eta_first(run.training)}" if run.training else "")
            )
        text = f"[{_clock(self._elapsed())}] " + " | ".join(parts)
        text = text[: max(shutil.get_terminal_size((120, 20)).columns - 1, 20)]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a failure, a skip), kept above the live line."""
        with self._lock:
            self._clear()
            self._write_line(text)


def eta_first(training: str) -> str:
    """A training progress line with its step and ETA ahead of the other figures (loss, rates):
    a line cut at the terminal's width keeps what a person waits on."""
    eta = re.search(r"\beta \S+", training)
    if eta is None:
        return training
    rest = (training[: eta.start()] + training[eta.end() :]).strip()
    step = re.search(r"^(.*?step \d+/\d+(?: \(\d+%\))?)", rest)
    if step is None:
        return f"{eta.group()} · {rest}"
    return f"{step.group(1)} {eta.group()}{rest[step.end() :]}"

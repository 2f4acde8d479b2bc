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
from typing import TextIO

import dagster as dg

# Progress messages of the training loops ("<family>: step 12/80 (15%) ... eta 0m41s").
_TRAINING_MARK = " eta "
PLAIN_TRAINING_EVERY_SECONDS = 10.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class RunProgress:
    """Shows the events of the run now executing while ``with`` holds.

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
        self._label = ""
        self._steps_total = 0
        self._known_runs: set[str] = set()
        self._run_id: str | None = None
        self._cursor: str | None = None
        self._steps_done = 0
        self._current = ""
        self._training = ""
        self._last_plain_training = 0.0
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
        """The last events of the run just finished, before the view moves on."""
        try:
            self._poll()
        except Exception:  # noqa: BLE001 - a display must never break the runs it shows
            pass

    def begin(self, label: str, steps: int) -> None:
        """A new run is about to start: ``label`` names it, ``steps`` is how many assets."""
        self._drain()
        with self._lock:
            self._known_runs |= {self._run_id} if self._run_id else set()
            self._label, self._steps_total = label, steps
            self._run_id, self._cursor = None, None
            self._steps_done, self._current, self._training = 0, "", ""
        if not self.tty:
            self._write_line(f"[{_clock(self._elapsed())}] {label}: {steps} asset(s) to run")

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
            if not self._label:
                return
            if self._run_id is None:
                runs = [
                    r for r in self.instance.get_runs(limit=5) if r.run_id not in self._known_runs
                ]
                if not runs:
                    return
                self._run_id = runs[0].run_id
            connection = self.instance.get_records_for_run(self._run_id, cursor=self._cursor)
            self._cursor = connection.cursor
            for record in connection.records:
                self._event(record.event_log_entry)
            if self.tty:
                self._draw()

    def _event(self, entry) -> None:
        event = entry.dagster_event
        if event is None:
            message = entry.user_message or ""
            if _TRAINING_MARK in message:
                self._training = message.split(" - ")[-1].strip()
                now = time.monotonic()
                if not self.tty and now - self._last_plain_training >= PLAIN_TRAINING_EVERY_SECONDS:
                    self._last_plain_training = now
                    self._write_line(f"[{_clock(self._elapsed())}] {self._label}: {self._training}")
            return
        step = event.step_key or ""
        if event.event_type == dg.DagsterEventType.STEP_START:
            self._current, self._training = step, ""
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            self._steps_done += 1
            if not self.tty:
                outcome = (
                    "done" if event.event_type == dg.DagsterEventType.STEP_SUCCESS else "FAILED"
                )
                self._write_line(
                    f"[{_clock(self._elapsed())}] {self._label}: {step} {outcome} "
                    f"({self._steps_done}/{max(self._steps_total, self._steps_done)})"
                )

    def _draw(self) -> None:
        total = max(self._steps_total, self._steps_done)
        text = (
            f"[{_clock(self._elapsed())}] {self._label}: {self._steps_done}/{total} steps"
            + (f" · {self._current}" if self._current else "")
            + (f" · {eta_first(self._training)}" if self._training else "")
        )
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
    return f"{step.group(1)} {eta.group()}{rest[step.end():]}"

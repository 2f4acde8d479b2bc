"""Runs that ``logfit materialize`` started in its own process, and those it left behind.

A run executed in the command's process has no run launcher and no run worker that Dagster's
run monitoring could watch: when the process is killed (``kill -9``, an OOM kill, a closed
laptop) the run stays STARTED for ever, and the nightly schedule skips its source as "still
running". Each such run carries the host and pid of the process that runs it; a later command
(and the schedule) marks the run FAILURE once that process is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from logfit_dagster.core.reading import process_running

PID_TAG = "logfit/pid"
HOST_TAG = "logfit/host"
STARTED_TAG = "logfit/started_at"
UNFINISHED = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def process_tags() -> dict[str, str]:
    """Tags that name this process as the one running a run."""
    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        STARTED_TAG: f"{time.time():.3f}",
    }


def _alive(pid: int, since: float) -> bool:
    """Whether the process ``pid`` exists and is the one that started at or before ``since``
    (a pid reused by a younger process is not the run's)."""
    if not process_running(pid):
        return False
    started = _start_time(pid)
    return started is None or started <= since + 1


def _start_time(pid: int) -> float | None:
    """When a process started (Linux's /proc), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark FAILURE every unfinished run of this host whose process is gone.

    Returns:
        The ids of the runs marked.
    """
    host = socket.gethostname()
    marked = []
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: host}), limit=200
    )
    for run in runs:
        try:
            pid, since = int(run.tags[PID_TAG]), float(run.tags[STARTED_TAG])
        except (KeyError, ValueError):
            continue
        if _alive(pid, since):
            continue
        instance.report_run_failed(
            run,
            message=f"the process that ran it (pid {pid} on {host}) is gone: killed, or the "
            "machine stopped; marked failed so that its source can run again",
        )
        marked.append(run.run_id)
    return marked


class Interrupted(Exception):
    """Ctrl-C stopped ``logfit materialize``: nothing after ``label`` was started."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class CtrlC:
    """Ctrl-C for a command that runs jobs one after another: the first stops it, the second
    ends the process at once (status 130).

    Dagster swaps SIGINT's Python handler while it executes, and an interrupt that lands in one
    of its deferral windows can be lost. So the signal is watched below Python's handlers: the
    C-level handler writes every signal to a wakeup pipe, which a thread reads. After the first
    Ctrl-C the thread delivers SIGINT to the main thread again each second while a run is
    active, until the run stops (a step interrupted, the run marked failed); between runs
    ``KeyboardInterrupt`` is raised. A second real Ctrl-C ends the process.
    """

    REDELIVER_SECONDS = 1.0

    def __init__(self, stream=None):
        import sys

        self.stream = stream or sys.stderr
        self.requested = False
        self._real = 0
        self._synthetic = 0
        self._run_active = False
        self._acknowledged = False
        self._lock = threading.Lock()
        self._previous = None
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def __enter__(self) -> CtrlC:
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._thread = threading.Thread(target=self._watch, name="logfit-ctrl-c", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # after a first Ctrl-C, one that lands while the command winds up (its summary, its
        # exit) is the second: it ends the process at once, as it does inside
        later = (lambda signum, frame: self._force()) if self.requested else None
        signal.signal(signal.SIGINT, later or self._previous or signal.default_int_handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._closed.set()
        assert self._pipe is not None
        os.close(self._pipe[1])  # ends the watcher's read
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._pipe[0])

    def _handle(self, signum, frame) -> None:
        # between runs: stop here (the watcher counts presses and forces on the second)
        if self._acknowledged:
            return
        self.requested = True
        raise KeyboardInterrupt

    def acknowledge(self) -> None:
        """The command has stopped starting runs: no more interrupts are raised in it."""
        self._acknowledged = True

    @contextmanager
    def run_active(self) -> Iterator[None]:
        """While a run executes: a Ctrl-C is delivered again until the run ends."""
        self._run_active = True
        try:
            yield
        finally:
            self._run_active = False

    def _watch(self) -> None:
        import select

        assert self._pipe is not None
        read = self._pipe[0]
        while not self._closed.is_set():
            ready, _, _ = select.select([read], [], [], self.REDELIVER_SECONDS)
            if ready:
                try:
                    data = os.read(read, 64)
                except OSError:
                    return
                if not data:
                    return
                for signum in data:
                    if signum != signal.SIGINT:
                        continue
                    with self._lock:
                        if self._synthetic:
                            self._synthetic -= 1
                            continue
                        self._real += 1
                    if self._real == 1:
                        self.requested = True
                    else:
                        self._force()
            elif self.requested and self._run_active and not self._acknowledged:
                with self._lock:
                    self._synthetic += 1
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def _force(self) -> None:
        try:
            self.stream.write("\nlogfit: second Ctrl-C: stopped at once\n")
            self.stream.flush()
        finally:
            os._exit(130)


@contextmanager
def data_folder_lock(folder: Path, wait: bool = False, stream=None) -> Iterator[None]:
    """Hold the data folder for one ``logfit materialize`` at a time.

    Two commands on one folder would train the same models into the same folders; the second
    refuses (or, with ``wait``, waits), naming the process that holds the folder. The lock is
    the kernel's (``flock``): a killed holder releases it.

    Raises:
        BusyError: when another process holds the folder and ``wait`` is false.
    """
    import fcntl
    import json
    import sys

    from logfit_dagster.core.errors import BusyError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".materialize.lock"
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the with block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}: "
                f"{holder.get('command', '?')}"
                if holder
                else "another process"
            )
            if not wait:
                raise BusyError(
                    f"{folder} is being materialized by {who}; wait for it to finish (or pass "
                    "--wait to queue behind it), or stop it with Ctrl-C"
                ) from None
            print(f"logfit: waiting for {who} to release {folder}", file=stream or sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.time(),
                    "command": " ".join(["logfit", *sys.argv[1:]]),
                }
            )
        )
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock

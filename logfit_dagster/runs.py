"""Runs that ``logfit materialize`` started in its own process, and those it left behind.

A run executed in the command's process has no run launcher and no run worker that Dagster's
run monitoring could watch: when the process is killed (``kill -9``, an OOM kill, a closed
laptop) the run stays STARTED for ever, and the nightly schedule skips its source as "still
running". Each such run carries the host and pid of the process that runs it; a later command
(and the schedule) marks the run FAILURE once that process is gone.
"""

from __future__ import annotations

import os
import socket
import time
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

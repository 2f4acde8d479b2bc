"""Worker processes end with the call that started them."""

from __future__ import annotations

import multiprocessing
import time


def _fit_in_workers() -> None:
    from joblib import delayed

    from logfit_dagster.core.parallel import run_jobs

    # jobs that last long enough for both workers to be up (as a fold's fit is)
    assert run_jobs((delayed(time.sleep)(0.3) for _ in range(4)), 2) == [None] * 4


def test_a_step_process_exits_when_its_parallel_jobs_are_done():
    """A Dagster step under the multiprocess executor is a ``multiprocessing`` child, which
    joins its own children before it exits: joblib's idle workers (kept 300 s for reuse) held
    it, and the run's step slot, for five minutes after the step had finished."""
    child = multiprocessing.get_context("spawn").Process(target=_fit_in_workers)
    started = time.monotonic()
    child.start()
    child.join(timeout=30)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()
    assert not alive, "the process was still waiting for its workers after 30 s"
    assert child.exitcode == 0
    assert time.monotonic() - started < 30


def test_source_workers_started_for_later_stages_end_at_once_when_given_no_run():
    """``logfit materialize`` starts its workers with the first stage so that their imports
    overlap it; a command whose later stages had nothing to run ends them without waiting for
    those imports, and leaves no process behind."""
    import psutil

    from logfit_dagster.commands.side_by_side import SourceWorkers

    workers = SourceWorkers(2, {}, None)
    workers.start()
    children = []
    deadline = time.monotonic() + 30
    while len(children) < 2 and time.monotonic() < deadline:  # both spawned, importing
        children = multiprocessing.active_children()
        time.sleep(0.05)
    assert len(children) == 2, "the workers did not start"
    pids = [child.pid for child in children]
    ending = time.monotonic()
    workers.close()
    assert time.monotonic() - ending < 5
    assert not [pid for pid in pids if psutil.pid_exists(pid)], "a worker outlived close()"

"""Runs side by side: every run of ``logfit materialize`` (a part of a stage, for one source or
for all) goes to a worker process as soon as the runs it reads from have finished
(``stages.plan_units``): the sources' ingests, then the line models, the template model's
pretraining, and each source's template model, scoring and reports overlap wherever the asset
graph lets them.

Waiting for whole stages left a core of two idle: the ingest of one source at a time, the line
models' selection (single-threaded), and each source's template model waiting for the line
transformer it never reads. The workers are processes, not threads (the steps hold the GIL);
each runs its runs in process, as ``--executor in_process`` does, and keeps its imports from
one run to the next, so the libraries a run needs are imported once per worker, never in the
command's own process. torch in a worker takes its share of the CPUs
(``LOGFIT_STEPS_BESIDE``: the number of workers) unless ``LOGFIT_TORCH_THREADS`` says otherwise.

Ctrl-C: a terminal sends SIGINT to the whole process group. A worker ignores it between runs;
inside one, Dagster stops the step and marks the run failed, as in the command's own process.
The command then ends the workers and marks failed any run a worker left open.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor, wait


class SourceWorkers:
    """``workers`` processes that each run a selection for one source (or for all)."""

    def __init__(self, workers: int, run_config: dict, job: str | None):
        self.workers, self.run_config, self.job = workers, run_config, job
        self._pool: ProcessPoolExecutor | None = None
        self._used = False  # a run was submitted (not only the start)

    def start(self) -> None:
        """Start every worker now, each importing the asset definitions (a few seconds of
        CPU) at once rather than when a run reaches it. Workers that then run nothing are ended
        by :meth:`close` without waiting for them."""
        if self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.workers,),
        )
        # the pool starts a process per task submitted while none is idle: one each
        for _ in range(self.workers):
            self._pool.submit(os.getpid)

    def submit(self, partition: str | None, selection: list) -> Future:
        """The run of ``selection`` for ``partition`` (None: an all-source selection); its
        future gives (success, reason, the run's seconds in its worker)."""
        self.start()
        self._used = True
        keys = [key.to_user_string() for key in selection]
        return self._pool.submit(_run, self.run_config, self.job, partition, keys)

    def stop(self, running: set[Future], grace: float = 5.0) -> None:
        """End the workers after a Ctrl-C: the runs a terminal's Ctrl-C reached stop by
        themselves (their step interrupted, the run marked failed) within ``grace`` seconds;
        then every worker is killed, and the runs still open are the caller's to mark."""
        if self._pool is None:
            return
        wait(running, timeout=grace)
        workers = multiprocessing.active_children()
        for process in workers:
            process.kill()
        for process in workers:
            process.join()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is None:
            return
        if self._used:
            self._pool.shutdown(wait=True)
            self._pool = None
        else:  # started, never given a run: not worth waiting for their imports
            self.stop(set(), grace=0.0)


# What every run in a worker imports, loaded as it starts. The libraries of the models (torch,
# scikit-learn, MLflow: some 10 s of CPU) are imported by the first run that needs
# them, once per worker: loading them all up front only delayed the first ingest.
_PRELOADED = ("logfit_dagster.definitions",)


def _start_worker(workers: int) -> None:
    import importlib
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("LOGFIT_STEPS_BESIDE", str(workers))
    # a command that ends without ending its workers (killed, or a second Ctrl-C, which exits
    # at once) must not leave them behind: the run a worker was in is marked failed by the
    # next command, as a killed command's own run is
    parent = os.getppid()
    threading.Thread(target=_exit_with, args=(parent,), name="logfit-parent", daemon=True).start()
    for module in _PRELOADED:
        try:
            importlib.import_module(module)
        except ImportError:  # an extra not installed: the step that needs it says so
            pass


_instance = None  # the worker's Dagster instance, opened by its first run


def _run(
    run_config: dict, job: str | None, partition: str | None, keys: list[str]
) -> tuple[bool, str, float]:
    import time

    import dagster as dg

    from logfit_dagster.commands.runner import SelectionRunner
    from logfit_dagster.definitions import defs

    global _instance
    if _instance is None:
        _instance = dg.DagsterInstance.get()
    selection = [dg.AssetKey.from_user_string(key) for key in keys]
    started = time.perf_counter()
    ok, _, reason = SelectionRunner("in_process", defs, _instance, run_config, job).run(
        partition, selection
    )
    return ok, reason, time.perf_counter() - started


def _exit_with(parent: int, every: float = 0.5) -> None:
    """End this worker once the process that started it has ended (it is then re-parented)."""
    import time

    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)

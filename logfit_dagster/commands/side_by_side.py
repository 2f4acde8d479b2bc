"""Sources side by side: the runs of one stage of ``logfit materialize`` for several sources at
once, each in a worker process; and the parts of an all-source stage that no edge joins (the
line models beside the template model's pretraining), one in the command's process and the
others in the workers.

A source's steps after the line models are mostly single-threaded: training a template model
keeps one core busy whatever torch's threads, so one source at a time left a core of two idle
for most of that stage. The workers are processes, not threads (the steps hold the GIL); each
runs its runs in process, as ``--executor in_process`` does, and keeps its imports from one run
to the next. torch in a worker takes its share of the CPUs (``LOGFIT_STEPS_BESIDE``: the number
of workers) unless ``LOGFIT_TORCH_THREADS`` says otherwise.

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
    """``workers`` processes that run a stage's selection for one source each."""

    def __init__(self, workers: int, run_config: dict, job: str | None):
        self.workers, self.run_config, self.job = workers, run_config, job
        self._pool: ProcessPoolExecutor | None = None
        self._used = False  # a run was submitted (not only the start)

    def start(self) -> None:
        """Start the workers now, so that their imports (several seconds of CPU each) overlap
        the first stage, whose runs are the command's own and leave the other CPUs idle.
        Workers that then run nothing are ended by :meth:`close` without waiting for them."""
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
        future gives (success, reason)."""
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


# What the steps a worker runs import, loaded as it starts: the asset definitions, and the
# libraries of the models they train, score and log.
_PRELOADED = (
    "logfit_dagster.definitions",
    "torch",
    "transformers.modeling_utils",
    "sklearn.linear_model",
    "mlflow",
)


def _start_worker(workers: int) -> None:
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("LOGFIT_STEPS_BESIDE", str(workers))
    for module in _PRELOADED:
        try:
            importlib.import_module(module)
        except ImportError:  # an extra not installed: the step that needs it says so
            pass


_instance = None  # the worker's Dagster instance, opened by its first run


def _run(
    run_config: dict, job: str | None, partition: str | None, keys: list[str]
) -> tuple[bool, str]:
    import dagster as dg

    from logfit_dagster.commands.runner import SelectionRunner
    from logfit_dagster.definitions import defs

    global _instance
    if _instance is None:
        _instance = dg.DagsterInstance.get()
    selection = [dg.AssetKey.from_user_string(key) for key in keys]
    ok, _, reason = SelectionRunner("in_process", defs, _instance, run_config, job).run(
        partition, selection
    )
    return ok, reason

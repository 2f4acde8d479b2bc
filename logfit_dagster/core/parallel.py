"""Jobs in worker processes that end with the call.

joblib's default backend (loky) keeps its workers for 300 s of idleness so that the next call
reuses them. A process started by ``multiprocessing`` (a Dagster step under the multiprocess
executor) joins its children before it exits, so it waited those 300 s after its step had
finished, holding the run's step slot. Here the workers stop when the jobs are done.
"""

from __future__ import annotations

from collections.abc import Iterable


def run_jobs(jobs: Iterable, n_jobs: int, **options) -> list:
    """``joblib.Parallel(n_jobs, **options)(jobs)``, its worker processes stopped after."""
    from joblib import Parallel

    try:
        return Parallel(n_jobs=n_jobs, **options)(jobs)
    finally:
        if n_jobs != 1:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)

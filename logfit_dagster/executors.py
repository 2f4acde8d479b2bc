"""Where the steps of a run execute, chosen at deploy time by ``LOGFIT_EXECUTOR``.

- ``multiprocess`` (default): one process per step on the machine that runs the run.
- ``in_process``: every step in the run's own process (debugging, small machines).
- ``celery``: steps are Celery tasks on a broker (``LOGFIT_CELERY_BROKER``, e.g.
  ``redis://host:6379/0``; results on ``LOGFIT_CELERY_BACKEND``, else the broker), executed by
  ``dagster-celery worker start`` processes on any machine that shares the Dagster instance and
  the data folder. Needs the ``celery`` extra.
- ``k8s``: one Kubernetes Job per step (``dagster_k8s.k8s_job_executor``), configured from the
  run config; see ``deploy/k8s/``. Needs the ``k8s`` extra.

The choice is read when the code location loads, so every job of a deployment uses one executor
and a launch can still override its config through the run config's ``execution`` block.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")


class ExecutorConfigError(ValueError):
    """LOGFIT_EXECUTOR or one of the variables it needs is wrong or missing."""


def executor_from_env(environ: os._Environ | dict | None = None) -> dg.ExecutorDefinition:
    """The executor that ``LOGFIT_EXECUTOR`` names, configured from the environment."""
    env = os.environ if environ is None else environ
    name = (env.get("LOGFIT_EXECUTOR") or "multiprocess").strip().lower()
    if name == "multiprocess":
        return _multiprocess_executor(env)
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        return _celery_executor(env)
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ExecutorConfigError(
                "LOGFIT_EXECUTOR=k8s needs dagster-k8s: pip install 'logfit-dagster[k8s]'"
            ) from None
        return k8s_job_executor
    raise ExecutorConfigError(f"LOGFIT_EXECUTOR={name!r} is not one of: {', '.join(EXECUTORS)}")


# What a forkserver imports once, so that step processes start with it loaded: the code
# location, and the libraries the training and plotting steps import.
FORKSERVER_PRELOAD = [
    "logfit_dagster.definitions",
    "logfit_dagster.core.line_model",
    "logfit_dagster.core.session_model",
    "logfit_dagster.core.plots",
    "mlflow",
]


def _multiprocess_executor(env) -> dg.ExecutorDefinition:
    """Steps in processes forked from a server that has the code already imported.

    ``LOGFIT_START_METHOD=spawn`` starts each step in a fresh interpreter instead (Dagster's
    default), which costs about a second of imports per step.
    """
    config: dict = {}
    start = (env.get("LOGFIT_START_METHOD") or "forkserver").strip().lower()
    if start == "forkserver":
        config["start_method"] = {"forkserver": {"preload_modules": FORKSERVER_PRELOAD}}
    elif start != "spawn":
        raise ExecutorConfigError(f"LOGFIT_START_METHOD={start!r} is not one of: forkserver, spawn")
    max_concurrent = env.get("LOGFIT_MAX_CONCURRENT_STEPS")
    if max_concurrent:
        try:
            config["max_concurrent"] = int(max_concurrent)
        except ValueError:
            raise ExecutorConfigError(
                f"LOGFIT_MAX_CONCURRENT_STEPS={max_concurrent!r} is not an integer"
            ) from None
    return dg.multiprocess_executor.configured(config) if config else dg.multiprocess_executor


def _celery_executor(env) -> dg.ExecutorDefinition:
    try:
        from dagster_celery import celery_executor
    except ImportError:
        raise ExecutorConfigError(
            "LOGFIT_EXECUTOR=celery needs dagster-celery: pip install 'logfit-dagster[celery]'"
        ) from None
    broker = env.get("LOGFIT_CELERY_BROKER")
    if not broker:
        raise ExecutorConfigError(
            "LOGFIT_EXECUTOR=celery needs LOGFIT_CELERY_BROKER, e.g. redis://127.0.0.1:6379/0"
        )
    backend = env.get("LOGFIT_CELERY_BACKEND") or broker
    return celery_executor.configured(
        {"broker": broker, "backend": backend}, name="celery_executor"
    )

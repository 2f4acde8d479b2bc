"""The experiment tracker: MLflow runs, the model registry and the ``champion`` alias.

The default store is local under data/ (``sqlite:///data/mlflow/mlflow.db``, artifacts in
``data/mlflow/artifacts``): nothing to start. ``MLFLOW_TRACKING_URI`` (or the resource's
``tracking_uri``) points elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.core.errors import StateFileError
from logfit_dagster.core.models.base import copy_model_files
from logfit_dagster.core.sqlite_files import copy_database, is_damaged
from logfit_dagster.paths import cache_dir, data_dir

logger = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass
class TrainingRecord:
    run_id: str
    model_name: str
    version: str | None
    tracking_uri: str


class ExperimentTracker(dg.ConfigurableResource):
    """Logs training runs to MLflow and keeps the registry's champion alias."""

    tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI; empty means $MLFLOW_TRACKING_URI, else a SQLite store "
        "under data/mlflow.",
    )
    experiment: str = Field(default="logfit", description="The MLflow experiment.")

    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        folder = data_dir() / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    @contextmanager
    def _session(self) -> Iterator:
        """MLflow pointed at our store for the duration; the process's own setting restored.

        ``mlflow.set_tracking_uri`` writes ``MLFLOW_TRACKING_URI`` into the environment, so
        without the restore one store would leak into every later run of the process.
        """
        import mlflow

        # no progress bars of artifact copies in the step's log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        local = not self.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")
        uri = self.uri()
        store = data_dir() / "mlflow" / "mlflow.db"
        if local and is_damaged(store):
            raise StateFileError(
                f"{store}: the MLflow store is not a SQLite database (damaged?); move it aside "
                "to start a new one (the runs and registered models in it are then not listed; "
                "the models under data/models stay), or restore it from a backup"
            )
        prior_tracking = os.environ.get("MLFLOW_TRACKING_URI")
        prior_registry = os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        # MLflow prints its registry chatter ("Successfully registered model ...", "Created
        # version ...") to stderr: it goes to this module's logger instead, out of the way of
        # a step's log and of logfit materialize's progress.
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stderr(chatter):
                yield from self._within(mlflow, local, store)
        finally:
            for line in chatter.getvalue().splitlines():
                if line.strip():
                    logger.info(line)
            mlflow.set_tracking_uri(prior_tracking)
            mlflow.set_registry_uri(prior_registry)
            # set_*_uri(None) leaves the variables it wrote: without this, the next store of
            # the process would start from ours
            for name, prior in (
                ("MLFLOW_TRACKING_URI", prior_tracking),
                ("MLFLOW_REGISTRY_URI", prior_registry),
            ):
                if prior is None:
                    os.environ.pop(name, None)

    def _within(self, mlflow, local: bool, store: Path) -> Iterator:
        """The experiment, created on first use (under data/ for the local store).

        The first use of a SQLite store creates its schema; two processes doing that at once
        (two ``logfit materialize`` on a fresh data folder) break it, so the local store is
        opened under a file lock.
        """
        with _store_lock(local):
            fresh = local and not store.exists()
            seeded = fresh and _seed_store(mlflow, store)
            if mlflow.get_experiment_by_name(self.experiment) is None:
                if fresh and not seeded:  # MLflow created it just now, empty: keep a copy
                    _keep_empty_store(mlflow, store)
                location = (
                    (data_dir() / "mlflow" / "artifacts").resolve().as_uri() if local else None
                )
                try:
                    mlflow.create_experiment(self.experiment, artifact_location=location)
                except mlflow.exceptions.MlflowException:
                    pass  # created meanwhile by a concurrent step
            mlflow.set_experiment(self.experiment)
        yield mlflow

    def log_training(
        self,
        *,
        run_name: str,
        model_name: str,
        params: dict,
        metrics: dict,
        artifact_folder: Path | None = None,
        model_config: dict | None = None,
        figures: dict | None = None,
        json_artifacts: dict[str, object] | None = None,
        step_metrics: list[dict] | None = None,
        tags: dict[str, str] | None = None,
    ) -> TrainingRecord:
        """One MLflow run with params, metrics, figures, JSON artifacts and the registered model.

        An ``artifact_folder`` of any family (its manifest names it) is registered through
        ``mlflow.pyfunc``, whose ``predict`` loads the folder with logfit's own loader;
        ``model_config`` reaches that loader (``{"kind": ...}``: which session-count model of
        the folder the version is). ``step_metrics`` (``{"step": n, name: value, ...}``) become
        metric histories: loss curves in the MLflow UI.
        """
        version = None
        with self._session() as mlflow, mlflow.start_run(run_name=run_name, tags=tags or {}) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                }
            )
            if step_metrics:
                _log_histories(mlflow, run.info.run_id, step_metrics)
            for name, figure in (figures or {}).items():
                mlflow.log_figure(figure, f"plots/{name}.png")
            with tempfile.TemporaryDirectory() as tmp:
                for name, payload in (json_artifacts or {}).items():
                    path = Path(tmp) / name
                    path.write_text(json.dumps(payload, indent=1, default=str))
                    mlflow.log_artifact(str(path))
            info = None
            if artifact_folder is not None:
                import mlflow.pyfunc

                with tempfile.TemporaryDirectory() as tmp:
                    clean = Path(tmp) / "artifact"
                    copy_model_files(Path(artifact_folder), clean)
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
                        artifacts={"artifact": str(clean)},
                        registered_model_name=model_name,
                        pip_requirements=["logfit-dagster"],
                        model_config=model_config,
                    )
            if info is not None and info.registered_model_version:
                version = str(info.registered_model_version)
        return TrainingRecord(run.info.run_id, model_name, version, self.uri())

    def _champion_run(self, model_name: str):
        """The champion's version and its run, or None when there is no champion."""
        with self._session() as mlflow:
            client = mlflow.MlflowClient(self.uri(), self.uri())
            try:
                version = client.get_model_version_by_alias(model_name, CHAMPION)
            except mlflow.exceptions.MlflowException:
                return None
            return version, client.get_run(version.run_id)

    def champion(self, model_name: str) -> tuple[str, dict] | None:
        """The champion's version and its run's metrics, or None when there is no champion."""
        found = self._champion_run(model_name)
        return None if found is None else (str(found[0].version), dict(found[1].data.metrics))

    def champion_tag(self, model_name: str, tag: str) -> str | None:
        """A tag of the champion's run (None when there is no champion or no such tag)."""
        found = self._champion_run(model_name)
        return None if found is None else found[1].data.tags.get(tag)

    def model_files(self, model_name: str, version: str, dest: Path) -> Path:
        """The model folder a registered version was logged with, downloaded under ``dest``:
        how a champion asset takes the model it chose from a family, without opening the
        family's own folder: inside the pyfunc model (``artifacts/artifact``), or, for a version an
        older logfit registered through scikit-learn's flavour, beside it (the run's
        ``artifact``)."""
        from logfit_dagster.core.errors import ModelFileError

        with self._session() as mlflow:
            client = mlflow.MlflowClient(self.uri(), self.uri())
            try:
                found = client.get_model_version(model_name, str(version))
            except mlflow.exceptions.MlflowException as exc:
                raise ModelFileError(
                    f"{model_name} version {version}: not in the model registry at {self.uri()} "
                    f"({exc.message})"
                ) from None
            if any(a.path == "artifact" for a in client.list_artifacts(found.run_id)):
                path = mlflow.artifacts.download_artifacts(
                    run_id=found.run_id, artifact_path="artifact", dst_path=str(dest)
                )
                return Path(path)
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version}", dst_path=str(dest)
            )
            folder = Path(path) / "artifacts" / "artifact"
            if not folder.is_dir():
                raise ModelFileError(
                    f"{model_name} version {version}: logged without its model folder"
                )
            return folder

    def promote(self, model_name: str, version: str) -> None:
        with self._session() as mlflow:
            mlflow.MlflowClient(self.uri(), self.uri()).set_registered_model_alias(
                model_name, CHAMPION, version
            )


def _empty_store(mlflow) -> Path:
    """Where the empty store of this MLflow version is kept (``LOGFIT_CACHE``, by default
    ~/.cache/logfit)."""
    return cache_dir() / "mlflow" / f"empty-{mlflow.__version__}.db"


def _seed_store(mlflow, store: Path) -> bool:
    """A new data folder's store copied from the empty one kept for this MLflow version, if
    there is one; whether it was.

    MLflow creates a store by running its schema migrations, some 4 s of CPU in each new data
    folder; the empty store they leave is the same every time, so it is kept (by
    :func:`_keep_empty_store`) and copied."""
    empty = _empty_store(mlflow)
    if not empty.is_file() or is_damaged(empty):
        return False
    try:
        copy_database(empty, store)
    except (OSError, sqlite3.Error) as error:
        logger.info("%s: not copied (%s); MLflow creates the store", empty, error)
        return False
    return True


def _keep_empty_store(mlflow, store: Path) -> None:
    """Keep a copy of ``store``, just created by MLflow, for the next new data folder; where the
    cache cannot be written, nothing is kept (every new store is then created by MLflow)."""
    empty = _empty_store(mlflow)
    try:
        empty.parent.mkdir(parents=True, exist_ok=True)
        copy_database(store, empty)
    except (OSError, sqlite3.Error) as error:
        logger.info("%s: not kept (%s)", empty, error)


@contextmanager
def _store_lock(local: bool) -> Iterator[None]:
    """An exclusive lock on the local MLflow store's folder (nothing for a remote store)."""
    if not local:
        yield
        return
    import fcntl

    folder = data_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".open.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_histories(mlflow, run_id: str, step_metrics: list[dict]) -> None:
    """Per-step metrics in batches (MLflow takes at most 1,000 metrics a call)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(key, float(value), now, int(row["step"]))
        for row in step_metrics
        for key, value in row.items()
        if key != "step" and isinstance(value, int | float) and math.isfinite(value)
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])

"""The experiment tracker: MLflow runs, the model registry and the ``champion`` alias.

The default store is local under data/ (``sqlite:///data/mlflow/mlflow.db``, artifacts in
``data/mlflow/artifacts``): nothing to start. ``MLFLOW_TRACKING_URI`` (or the resource's
``tracking_uri``) points elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.paths import data_dir

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

        local = not self.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")
        uri = self.uri()
        prior_tracking = os.environ.get("MLFLOW_TRACKING_URI")
        prior_registry = os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            if mlflow.get_experiment_by_name(self.experiment) is None:
                location = (
                    (data_dir() / "mlflow" / "artifacts").resolve().as_uri() if local else None
                )
                try:
                    mlflow.create_experiment(self.experiment, artifact_location=location)
                except mlflow.exceptions.MlflowException:
                    pass  # created meanwhile by a concurrent step
            mlflow.set_experiment(self.experiment)
            yield mlflow
        finally:
            mlflow.set_tracking_uri(prior_tracking)
            mlflow.set_registry_uri(prior_registry)

    def log_training(
        self,
        *,
        run_name: str,
        model_name: str,
        params: dict,
        metrics: dict,
        sk_model=None,
        figures: dict | None = None,
        json_artifacts: dict[str, object] | None = None,
        tags: dict[str, str] | None = None,
    ) -> TrainingRecord:
        """One MLflow run with params, metrics, figures, JSON artifacts and the registered model."""
        version = None
        with self._session() as mlflow, mlflow.start_run(run_name=run_name, tags=tags or {}) as run:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and math.isfinite(v)
                }
            )
            for name, figure in (figures or {}).items():
                mlflow.log_figure(figure, f"plots/{name}.png")
            with tempfile.TemporaryDirectory() as tmp:
                for name, payload in (json_artifacts or {}).items():
                    path = Path(tmp) / name
                    path.write_text(json.dumps(payload, indent=1, default=str))
                    mlflow.log_artifact(str(path))
            if sk_model is not None:
                import mlflow.sklearn

                info = mlflow.sklearn.log_model(
                    sk_model,
                    name="model",
                    registered_model_name=model_name,
                    pip_requirements=["scikit-learn", "numpy", "pandas"],
                    # the tree node arrays of models we fitted ourselves, checked on save
                    skops_trusted_types=["sklearn.tree._tree.Tree"],
                )
                version = (
                    str(info.registered_model_version) if info.registered_model_version else None
                )
        return TrainingRecord(run.info.run_id, model_name, version, self.uri())

    def champion(self, model_name: str) -> tuple[str, dict] | None:
        """The champion's version and its run's metrics, or None when there is no champion."""
        with self._session() as mlflow:
            client = mlflow.MlflowClient()
            try:
                version = client.get_model_version_by_alias(model_name, CHAMPION)
            except mlflow.exceptions.MlflowException:
                return None
            run = client.get_run(version.run_id)
            return str(version.version), dict(run.data.metrics)

    def promote(self, model_name: str, version: str) -> None:
        with self._session() as mlflow:
            mlflow.MlflowClient().set_registered_model_alias(model_name, CHAMPION, version)

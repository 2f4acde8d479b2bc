"""The MLflow ``pyfunc`` flavour of a logfit artifact folder: ``mlflow.pyfunc.load_model(uri)``
gives a model whose ``predict`` scores lines (line families) with logfit's own loader.

Logged as code (MLflow's models-from-code), not as a pickled object: this file is the model's
definition, and the folder is its one artifact."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class LogfitModel(mlflow.pyfunc.PythonModel):
    """Loads the folder logged as the ``artifact`` artifact; ``predict`` takes lines and
    returns their LOOK probabilities."""

    def load_context(self, context) -> None:
        from logfit_dagster.core.models.base import load

        self.scorer = load(context.artifacts["artifact"])

    def predict(self, context, model_input: list[str], params=None) -> list[float]:
        return np.asarray(self.scorer.score([str(x) for x in model_input])).tolist()


mlflow.models.set_model(LogfitModel())

"""The MLflow ``pyfunc`` flavour of a logfit artifact folder: ``mlflow.pyfunc.load_model(uri)``
gives a model whose ``predict`` scores with logfit's own loader: lines for a line family,
sessions (each its template ids, space-separated) for the session-count family, the model the
version's ``model_config`` names (``kind``).

Logged as code (MLflow's models-from-code), not as a pickled object: MLflow executes this file
(under a module name of its own) when it logs or loads the model, and the folder is the model's
one artifact. Imported as part of logfit, the file defines nothing heavy and registers nothing.
"""

from __future__ import annotations


def logfit_model():
    """The ``PythonModel`` that loads the ``artifact`` folder and scores lines with it."""
    import mlflow.pyfunc

    class LogfitModel(mlflow.pyfunc.PythonModel):
        """``predict`` takes lines (or sessions) and returns their LOOK probabilities (or
        anomaly scores)."""

        def load_context(self, context) -> None:
            from logfit_dagster.core.models.base import load
            from logfit_dagster.core.models.session_counts import SessionScorer

            self.scorer = load(context.artifacts["artifact"], **(context.model_config or {}))
            self.sessions = isinstance(self.scorer, SessionScorer)

        def predict(self, context, model_input: list[str], params=None) -> list[float]:
            import numpy as np

            items = [str(x) for x in model_input]
            if self.sessions:  # each a session's template ids
                items = [[int(t) for t in x.split()] for x in items]
            return np.asarray(self.scorer.score(items)).tolist()

    return LogfitModel()


if __name__ != "logfit_dagster.resources.mlflow_pyfunc":  # executed by MLflow as model code
    import mlflow.models

    mlflow.models.set_model(logfit_model())

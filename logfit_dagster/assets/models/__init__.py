"""Model assets, one module per family, sharing one gate and champion helper (``_shared``).

The package exports the scikit-learn families (trained in the step, in seconds) and scoring.
Families that train through the ``trainer`` resource are listed in :data:`TRAINER_FAMILIES`
and loaded beside it by the definitions, so that the scikit-learn assets can be materialized
with no trainer bound.
"""

from logfit_dagster.assets.models._shared import (
    TRAINING_POOL,
    champion_model_path,
    line_champion_path,
    models_dir,
)
from logfit_dagster.assets.models.line_tfidf import (
    LINE_MODEL_NAME,
    look_skip_champion,
    look_skip_model,
)
from logfit_dagster.assets.models.scoring import scored_lines
from logfit_dagster.assets.models.session_counts import (
    SESSION_SCORE_COLUMNS,
    session_champion,
    session_model,
    session_model_name,
)

__all__ = [
    "LINE_MODEL_NAME",
    "SESSION_SCORE_COLUMNS",
    "TRAINING_POOL",
    "champion_model_path",
    "line_champion_path",
    "look_skip_champion",
    "look_skip_model",
    "models_dir",
    "scored_lines",
    "session_champion",
    "session_model",
    "session_model_name",
]

#: modules of the families that train through the trainer resource
TRAINER_FAMILIES = (
    "logfit_dagster.assets.models.line_transformer",
    "logfit_dagster.assets.models.template_lm",
    "logfit_dagster.assets.models.llm_lora",
)

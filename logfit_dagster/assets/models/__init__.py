"""Model assets, one module per family, sharing one gate helper (``_shared``); the champions
that choose between families; the scoring that reads them.

Every model asset is exported here, so ``load_assets_from_modules([models])`` holds the whole
model graph (the families that train through the ``trainer`` resource included).
"""

from logfit_dagster.assets.models._shared import (
    TRAINING_POOL,
    champion_model_path,
    line_champion_path,
    models_dir,
)
from logfit_dagster.assets.models.line_adaptation import line_adaptation
from logfit_dagster.assets.models.line_champion import line_champion
from logfit_dagster.assets.models.line_tfidf import (
    LINE_MODEL_NAME,
    look_skip_champion,
    look_skip_model,
)
from logfit_dagster.assets.models.line_transformer import line_transformer_model
from logfit_dagster.assets.models.llm_lora import grpo_adapter, sft_adapter
from logfit_dagster.assets.models.scoring import scored_lines
from logfit_dagster.assets.models.session_champion import session_champion
from logfit_dagster.assets.models.session_counts import (
    SESSION_SCORE_COLUMNS,
    session_model,
    session_model_name,
)
from logfit_dagster.assets.models.template_lm import (
    template_lm,
    template_lm_pretrained,
    template_vocabulary,
)

__all__ = [
    "LINE_MODEL_NAME",
    "SESSION_SCORE_COLUMNS",
    "TRAINING_POOL",
    "champion_model_path",
    "grpo_adapter",
    "line_adaptation",
    "line_champion",
    "line_champion_path",
    "line_transformer_model",
    "look_skip_champion",
    "look_skip_model",
    "models_dir",
    "scored_lines",
    "session_champion",
    "session_model",
    "session_model_name",
    "sft_adapter",
    "template_lm",
    "template_lm_pretrained",
    "template_vocabulary",
]

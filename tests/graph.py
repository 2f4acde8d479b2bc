"""The whole asset graph and a set of resources that runs it offline, for tests that
materialize a selection of it (every input of a selected asset must be in the graph)."""

from __future__ import annotations

import dagster as dg

from logfit_dagster.assets import ASSET_MODULES

ASSETS = dg.load_assets_from_modules(ASSET_MODULES)


def offline_resources(**overrides) -> dict:
    """The rule labeler, the in-process trainer, the local MLflow store and storage under
    ``LOGFIT_DATA_DIR``; ``overrides`` replace any of them."""
    from logfit_dagster.resources.labelers import RuleLabelerResource
    from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
    from logfit_dagster.resources.model_store import ModelStore
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager
    from logfit_dagster.resources.tracking import ExperimentTracker
    from logfit_dagster.resources.trainer import InProcessTrainer

    return {
        "io_manager": ParquetIOManager(),
        "model_store": ModelStore(),
        "sources": LogSources(),
        "labeler": RuleLabelerResource(),
        "tracker": ExperimentTracker(),
        "trainer": InProcessTrainer(),
        "judge": SessionJudgeResource(),
        "fine_tuning": FineTuningResource(),
        **overrides,
    }

"""The one Definitions object of logfit: assets, checks, resources, jobs and sensors."""

import os

import dagster as dg

from logfit_dagster.assets import ASSET_MODULES
from logfit_dagster.executors import executor_from_env
from logfit_dagster.jobs import ALL_JOBS
from logfit_dagster.resources.labelers import ChosenLabelerResource
from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
from logfit_dagster.resources.model_store import ModelStore
from logfit_dagster.resources.sources import LogSources
from logfit_dagster.resources.storage import ParquetIOManager
from logfit_dagster.resources.tracking import ExperimentTracker
from logfit_dagster.resources.trainer import default_trainer
from logfit_dagster.schedules import nightly_ingest_and_label, weekly_retrain_and_report
from logfit_dagster.sensors import incoming_logs_sensor, log_source_registry_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(ASSET_MODULES),
    resources={
        "io_manager": ParquetIOManager(),
        "model_store": ModelStore(),
        "sources": LogSources(),
        # chosen when a run starts (config, else the environment), not when this module loads
        "labeler": ChosenLabelerResource(),
        "tracker": ExperimentTracker(),
        "trainer": default_trainer(),
        "judge": SessionJudgeResource(),
        "fine_tuning": FineTuningResource(),
    },
    jobs=ALL_JOBS,
    executor=executor_from_env(),
    schedules=[nightly_ingest_and_label, weekly_retrain_and_report],
    sensors=[
        log_source_registry_sensor,
        incoming_logs_sensor,
        dg.AutomationConditionSensorDefinition(
            "logfit_automation",
            target=dg.AssetSelection.all(),
            # On unless LOGFIT_AUTOMATION=off (a deployment that only runs what it schedules).
            default_status=(
                dg.DefaultSensorStatus.STOPPED
                if os.environ.get("LOGFIT_AUTOMATION", "").lower() in ("off", "0", "false")
                else dg.DefaultSensorStatus.RUNNING
            ),
            description="Brings models and reports up to date when their inputs change.",
        ),
    ],
)

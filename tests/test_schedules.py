"""Schedules evaluated against a real instance: run keys per day and source, no duplicate runs."""

from datetime import UTC, datetime

import dagster as dg

from logfit_dagster.definitions import defs
from logfit_dagster.jobs import nightly_job
from logfit_dagster.partitions import LOG_SOURCE
from logfit_dagster.schedules import nightly_ingest_and_label, weekly_retrain_and_report

NIGHT = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def _requests(result):
    return result if isinstance(result, list) else []


def test_nightly_requests_one_run_per_source_keyed_by_day():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["b_source", "a_source"])
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=NIGHT) as tick:
            requests = _requests(nightly_ingest_and_label(tick))
        assert [(r.partition_key, r.run_key) for r in requests] == [
            ("a_source", "2026-11-21/a_source"),
            ("b_source", "2026-11-21/b_source"),
        ]


def test_a_source_still_running_is_not_requested_again():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["a_source", "b_source"])
        job = defs.resolve_job_def(nightly_job.name)
        instance.create_run_for_job(
            job, tags={"dagster/partition": "a_source"}, status=dg.DagsterRunStatus.STARTED
        )
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=NIGHT) as tick:
            requests = _requests(nightly_ingest_and_label(tick))
        assert [r.partition_key for r in requests] == ["b_source"]


def test_no_partitions_and_weekly_keys():
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=NIGHT) as tick:
            assert isinstance(nightly_ingest_and_label(tick), dg.SkipReason)
            weekly = weekly_retrain_and_report(tick)
        assert weekly.run_key == "2026-W47"


def test_definitions_hold_jobs_schedules_and_the_automation_sensor():
    repo = defs.get_repository_def()
    assert {"nightly_ingest_and_label", "weekly_retrain_and_report"} <= {
        s.name for s in repo.schedule_defs
    }
    assert "logfit_automation" in {s.name for s in repo.sensor_defs}
    graph = repo.asset_graph
    for key in ("look_skip_model", "session_model", "metrics_report", "metrics_overview"):
        assert graph.get(dg.AssetKey(key)).automation_condition is not None

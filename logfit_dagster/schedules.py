"""Schedules: nightly ingest-and-label of every source, weekly retrain-and-report.

The nightly schedule requests one run per log source with ``run_key`` ``<day>/<source>``, so a
repeated tick of the same day never starts a second run; a source whose previous run is still
queued or going is left out of the tick, with the reason logged.
"""

import dagster as dg

from logfit_dagster.jobs import line_model_job, nightly_job
from logfit_dagster.partitions import LOG_SOURCE
from logfit_dagster.runs import fail_orphaned_runs

IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _in_flight(instance: dg.DagsterInstance, job_name: str, partition: str | None) -> bool:
    tags = {"dagster/partition": partition} if partition else {}
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags=tags), limit=1
    )
    return bool(runs)


@dg.schedule(
    job=nightly_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night: ingest and label every registered source, one run per source.",
)
def nightly_ingest_and_label(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    sources = sorted(context.instance.get_dynamic_partitions(LOG_SOURCE))
    if not sources:
        return dg.SkipReason("no log_source partition yet: the registry sensor adds them")
    for run_id in fail_orphaned_runs(context.instance):
        context.log.warning(f"run {run_id}: its process is gone; marked failed")
    requests, busy = [], []
    for source in sources:
        if _in_flight(context.instance, nightly_job.name, source):
            busy.append(source)
            continue
        requests.append(
            dg.RunRequest(run_key=f"{day}/{source}", partition_key=source, tags={"logfit/day": day})
        )
    if busy:
        context.log.info(
            f"still running from an earlier tick, not requested again: {', '.join(busy)}"
        )
    return requests or dg.SkipReason(f"every source is still running: {', '.join(busy)}")


@dg.schedule(
    job=line_model_job,
    cron_schedule="0 4 * * 0",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every Sunday: retrain the LOOK/SKIP classifier on the latest labels and report.",
)
def weekly_retrain_and_report(context: dg.ScheduleEvaluationContext):
    week = context.scheduled_execution_time.strftime("%G-W%V")
    if _in_flight(context.instance, line_model_job.name, None):
        return dg.SkipReason("the previous retrain is still running")
    return dg.RunRequest(run_key=week, tags={"logfit/week": week})

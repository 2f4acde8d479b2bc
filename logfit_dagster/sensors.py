"""Sensors: registry sources become partitions; files dropped under data/incoming/ trigger runs."""

import json
import os
from pathlib import Path

import dagster as dg

from logfit_dagster.core.errors import RegistryError
from logfit_dagster.core.registry import check_source_name
from logfit_dagster.jobs import ingest_job
from logfit_dagster.partitions import LOG_SOURCE, log_source_partitions
from logfit_dagster.resources.sources import LogSources


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a log_source partition for every source in the registry file.",
)
def log_source_registry_sensor(context: dg.SensorEvaluationContext, sources: LogSources):
    try:
        names = sorted(sources.registered())
        problems = sources.problems()
    except RegistryError as exc:
        return dg.SkipReason(f"registry not readable: {exc}")
    for problem in problems.values():  # the valid entries still get their partitions
        context.log.warning(f"invalid registry entry, left out: {problem}")
    existing = set(context.instance.get_dynamic_partitions(LOG_SOURCE))
    new = [name for name in names if name not in existing]
    if not new:
        return dg.SkipReason("every registered source already has its partition")
    return dg.SensorResult(
        dynamic_partitions_requests=[log_source_partitions.build_add_request(new)]
    )


def _scan(folder: Path) -> dict[str, list[int]]:
    """Size and modification time of every visible file of a source folder."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            found[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    return found


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches data/incoming/<source>/: a new folder adds a partition, a new or grown "
    "file runs the ingest of that partition.",
)
def incoming_logs_sensor(context: dg.SensorEvaluationContext, sources: LogSources):
    incoming = sources.incoming_dir()
    if not incoming.is_dir():
        return dg.SkipReason(f"{incoming} does not exist")
    cursor: dict[str, dict[str, list[int]]] = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(LOG_SOURCE))
    new_partitions, run_requests, skipped = [], [], []
    for folder in sorted(p for p in incoming.iterdir() if p.is_dir()):
        try:
            name = check_source_name(folder.name)
        except RegistryError as exc:
            skipped.append(str(exc))
            continue
        files = _scan(folder)
        unreadable = [f for f in files if not os.access(folder / f, os.R_OK)]
        if unreadable:
            # Leave this folder's cursor where it was, so the file is seen again once readable.
            skipped.append(f"{folder / unreadable[0]} is not readable")
            continue
        if name not in existing:
            new_partitions.append(name)
        seen = cursor.get(name, {})
        changed = sorted(f for f, sig in files.items() if seen.get(f) != sig and f != "source.yaml")
        if changed:
            fingerprint = ",".join(f"{f}:{files[f][0]}:{files[f][1]}" for f in changed)
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{name}|{fingerprint}",
                    partition_key=name,
                    tags={
                        "logfit/trigger": "incoming",
                        "logfit/changed_files": ",".join(changed)[:200],
                    },
                )
            )
        cursor[name] = files
    if not new_partitions and not run_requests:
        return dg.SensorResult(
            skip_reason=dg.SkipReason("; ".join(skipped) or "no new or grown file"),
            cursor=json.dumps(cursor, sort_keys=True),
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [log_source_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=json.dumps(cursor, sort_keys=True),
    )

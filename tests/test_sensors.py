"""Sensors: registry sources become partitions; incoming folders add partitions and request runs."""

import json
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from logfit_dagster.partitions import LOG_SOURCE
from logfit_dagster.resources.sources import LogSources
from logfit_dagster.sensors import incoming_logs_sensor, log_source_registry_sensor
from tests.processes import as_unprivileged_user


def _evaluate(sensor, instance, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"sources": LogSources()}
    ) as context:
        return sensor(context)


def test_registry_sources_become_partitions(workdir):
    with dg.instance_for_test() as instance:
        result = _evaluate(log_source_registry_sensor, instance)
        assert result.dynamic_partitions_requests[0].partition_keys == ["tiny_bgl", "tiny_hdfs"]
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_bgl", "tiny_hdfs"])
        again = _evaluate(log_source_registry_sensor, instance)
        assert isinstance(again, dg.SkipReason)


def test_new_folder_adds_partition_and_requests_a_run(workdir):
    incoming = workdir / "data" / "incoming" / "web"
    incoming.mkdir(parents=True)
    (incoming / "access.log").write_text("2024-01-01T00:00:00Z INFO GET / 200\n")
    with dg.instance_for_test() as instance:
        result = _evaluate(incoming_logs_sensor, instance)
    assert result.dynamic_partitions_requests[0].partition_keys == ["web"]
    assert [r.partition_key for r in result.run_requests] == ["web"]
    assert "access.log" in json.loads(result.cursor)["web"]


def test_grown_file_requests_a_run_unchanged_is_skipped(workdir):
    incoming = workdir / "data" / "incoming" / "web"
    incoming.mkdir(parents=True)
    log = incoming / "access.log"
    log.write_text("2024-01-01T00:00:00Z INFO GET / 200\n")
    with dg.instance_for_test() as instance:
        first = _evaluate(incoming_logs_sensor, instance)
        instance.add_dynamic_partitions(LOG_SOURCE, ["web"])
        unchanged = _evaluate(incoming_logs_sensor, instance, first.cursor)
        assert unchanged.run_requests == [] and unchanged.dynamic_partitions_requests == []
        assert unchanged.cursor == first.cursor
        with log.open("a") as handle:
            handle.write("2024-01-01T00:00:01Z ERROR GET /x 500\n")
        grown = _evaluate(incoming_logs_sensor, instance, first.cursor)
    assert [r.partition_key for r in grown.run_requests] == ["web"]
    assert grown.run_requests[0].run_key != first.run_requests[0].run_key
    assert grown.dynamic_partitions_requests == []


def _unreadable_file_check():
    """The sensor over an incoming folder holding an unreadable file; what it says."""
    with dg.instance_for_test() as instance:
        result = _evaluate(incoming_logs_sensor, instance)
    return result.skip_reason.skip_message if result.skip_reason else None, result.cursor


@pytest.mark.faults
def test_unreadable_file_is_named_and_cursor_not_advanced(monkeypatch):
    # a folder every user can enter (pytest's own temp folders are root's alone), checked as
    # an unprivileged user: root reads any file, and the check would prove nothing
    root = Path(tempfile.mkdtemp(prefix="logfit-unreadable-"))
    try:
        root.chmod(0o755)
        incoming = root / "data" / "incoming" / "web"
        incoming.mkdir(parents=True)
        for folder in (root / "data", root / "data" / "incoming", incoming):
            folder.chmod(0o777)
        (root / "sources.yaml").write_text("sources: []\n")
        (root / "sources.yaml").chmod(0o644)
        monkeypatch.setenv("LOGFIT_DATA_DIR", str(root / "data"))
        monkeypatch.setenv("LOGFIT_SOURCES", str(root / "sources.yaml"))
        readable = incoming / "readable.log"
        readable.write_text("x\n")
        readable.chmod(0o644)
        _unreadable_file_check()  # everything the check needs is imported by now
        readable.unlink()
        log = incoming / "access.log"
        log.write_text("x\n")
        log.chmod(0)
        message, cursor = as_unprivileged_user(_unreadable_file_check)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert message is not None and "access.log is not readable" in message
    assert "web" not in json.loads(cursor)


def test_unsafe_folder_name_is_skipped_with_reason(workdir):
    (workdir / "data" / "incoming" / "bad name").mkdir(parents=True)
    with dg.instance_for_test() as instance:
        result = _evaluate(incoming_logs_sensor, instance)
    assert "not a safe file name" in result.skip_reason.skip_message

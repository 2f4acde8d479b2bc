"""What a re-run recomputes, read from the provenance Dagster records (public APIs only)."""

import dagster as dg
import pytest

from logfit_dagster.commands.freshness import Freshness
from logfit_dagster.definitions import defs
from logfit_dagster.jobs import JOB_SELECTIONS, ingest_job
from logfit_dagster.partitions import LOG_SOURCE


def _run(instance, source: str, selection: list[str] | None = None) -> None:
    job = defs.resolve_job_def(ingest_job.name)
    keys = [dg.AssetKey(name) for name in selection] if selection else None
    result = job.execute_in_process(partition_key=source, instance=instance, asset_selection=keys)
    assert result.success


def _stale(instance, source: str) -> list[str]:
    fresh = Freshness(instance, defs)
    keys = fresh.job_assets(JOB_SELECTIONS[ingest_job.name])
    return [key.to_user_string() for key in fresh.out_of_date(keys, source)]


def test_missing_then_fresh_then_stale_downstream_of_new_data_only(workdir):
    everything = [
        "dataset_splits",
        "ground_truth_labels",
        "log_templates",
        "parsed_logs",
        "raw_logs",
        "sessions",
    ]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs", "tiny_bgl"])
        assert _stale(instance, "tiny_hdfs") == everything  # never materialized
        _run(instance, "tiny_hdfs")
        assert _stale(instance, "tiny_hdfs") == []
        assert _stale(instance, "tiny_bgl") == everything  # one source's runs are its own

        # raw_logs read again from unchanged files: the same data version, nothing moves
        _run(instance, "tiny_hdfs", ["raw_logs"])
        assert _stale(instance, "tiny_hdfs") == []

        # a grown source: raw_logs has a new data version; what reads it, directly or not, is
        # stale until it runs (and only then)
        registry = workdir / "sources.yaml"
        registry.write_text(registry.read_text().replace("lines: 1500", "lines: 1600"))
        _run(instance, "tiny_hdfs", ["raw_logs"])
        assert _stale(instance, "tiny_hdfs") == [n for n in everything if n != "raw_logs"]
        _run(instance, "tiny_hdfs", ["parsed_logs"])
        assert "parsed_logs" not in _stale(instance, "tiny_hdfs")
        assert "sessions" in _stale(instance, "tiny_hdfs")
        _run(instance, "tiny_hdfs")
        assert _stale(instance, "tiny_hdfs") == []

        # a key named in ``also`` runs with everything below it
        fresh = Freshness(instance, defs)
        keys = fresh.job_assets(JOB_SELECTIONS[ingest_job.name])
        also = fresh.out_of_date(keys, "tiny_hdfs", also=[dg.AssetKey("sessions")])
        assert {k.to_user_string() for k in also} == {
            "sessions",
            "ground_truth_labels",
            "dataset_splits",
        }


@pytest.mark.faults
def test_a_deleted_or_damaged_output_is_stale_and_named_and_a_read_names_its_file(workdir):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        _run(instance, "tiny_hdfs")
        assets = workdir / "data" / "assets"
        sessions = assets / "sessions" / "tiny_hdfs.parquet"
        sessions.unlink()
        fresh = Freshness(instance, defs)
        stale = fresh.out_of_date(fresh.job_assets(JOB_SELECTIONS[ingest_job.name]), "tiny_hdfs")
        # the lost output and what reads it, nothing upstream
        assert {k.to_user_string() for k in stale} == {
            "sessions",
            "ground_truth_labels",
            "dataset_splits",
        }
        assert fresh.damaged == {(dg.AssetKey("sessions"), "tiny_hdfs"): f"{sessions} is missing"}
        _run(instance, "tiny_hdfs", [k.to_user_string() for k in stale])
        assert _stale(instance, "tiny_hdfs") == []

        # overwritten in place with garbage: stale, and reading it fails naming the file
        parsed = assets / "parsed_logs" / "tiny_hdfs.parquet"
        parsed.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
        assert "parsed_logs" in _stale(instance, "tiny_hdfs")
        job = defs.resolve_job_def(ingest_job.name)
        result = job.execute_in_process(
            partition_key="tiny_hdfs",
            instance=instance,
            asset_selection=[dg.AssetKey("sessions")],
            raise_on_error=False,
        )
        [failure] = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.user_failure_data.description
        assert str(parsed) in message and "the next `logfit materialize` rebuilds it" in message
        _run(instance, "tiny_hdfs", _stale(instance, "tiny_hdfs"))
        assert _stale(instance, "tiny_hdfs") == []

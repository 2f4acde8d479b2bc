"""What a re-run recomputes, read from the provenance Dagster records (public APIs only)."""

import dagster as dg

from logfit_dagster.definitions import defs
from logfit_dagster.freshness import Freshness
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

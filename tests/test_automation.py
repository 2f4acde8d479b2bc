"""Declarative automation against a real instance: unchanged data requests nothing.

The models and reports use ``on_new_data()``: a re-read of unchanged files re-materializes
``raw_logs`` with the same data version (the source fingerprint), so nothing downstream is
requested; a changed source is.
"""

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from logfit_dagster.definitions import defs
from logfit_dagster.jobs import ingest_job
from logfit_dagster.partitions import LOG_SOURCE

SESSION_MODEL = dg.AssetKey("session_model")


def _ingest(instance, source: str) -> None:
    result = defs.resolve_job_def(ingest_job.name).execute_in_process(
        partition_key=source, instance=instance
    )
    assert result.success


def _version(instance, asset: str) -> tuple[int, str]:
    """The storage id and data version of the latest materialization of tiny_hdfs."""
    record = instance.get_latest_data_version_record(dg.AssetKey(asset), partition_key="tiny_hdfs")
    return record.storage_id, record.asset_materialization.tags[DATA_VERSION_TAG]


def _requested(result, key: dg.AssetKey) -> set[str]:
    return set(result.get_requested_partitions(key))


def test_models_wait_for_new_data_not_for_new_materializations(workdir):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        _ingest(instance, "tiny_hdfs")
        selection = dg.AssetSelection.assets(SESSION_MODEL)

        # The first evaluation only takes stock (Dagster requests nothing on it).
        quiet = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection
        )
        assert quiet.total_requested == 0

        # The nightly re-read of unchanged files: new materializations, the same data versions.
        before = _version(instance, "dataset_splits")
        _ingest(instance, "tiny_hdfs")
        after = _version(instance, "dataset_splits")
        assert after[0] != before[0] and after[1] == before[1]
        same = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=quiet.cursor
        )
        assert same.total_requested == 0

        # The source grows: new data versions, the model is requested again.
        registry = workdir / "sources.yaml"
        registry.write_text(registry.read_text().replace("lines: 1500", "lines: 1600"))
        _ingest(instance, "tiny_hdfs")
        changed = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=same.cursor
        )
        assert _requested(changed, SESSION_MODEL) == {"tiny_hdfs"}


def test_the_line_model_follows_a_new_source_under_automation(workdir):
    """A source registered and labelled later: the automation requests labeled_lines and, in
    the same tick, look_skip_model below it (what the UI's sensor submits)."""
    from logfit_dagster.jobs import labels_job

    labeled, model = dg.AssetKey("labeled_lines"), dg.AssetKey("look_skip_model")
    selection = dg.AssetSelection.assets(labeled, model)

    def ingest_and_label(instance, source: str) -> None:
        _ingest(instance, source)
        assert (
            defs.resolve_job_def(labels_job.name)
            .execute_in_process(partition_key=source, instance=instance)
            .success
        )

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs", "tiny_bgl"])
        for source in ("tiny_hdfs", "tiny_bgl"):
            ingest_and_label(instance, source)
        line_job = defs.resolve_job_def("line_model_job")
        assert line_job.execute_in_process(
            asset_selection=[labeled, model],
            instance=instance,
            run_config={
                "ops": {
                    "look_skip_model": {
                        "config": {
                            "C": [1.0],
                            "char_max_features": [2000],
                            "word_max_features": [1000],
                        }
                    }
                }
            },
        ).success
        stock = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection
        )

        registry = workdir / "sources.yaml"
        registry.write_text(
            registry.read_text()
            + "  - {name: tiny_java, origin: synthetic, kind: javaapp, lines: 600, seed: 13}\n"
        )
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_java"])
        ingest_and_label(instance, "tiny_java")
        first = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=stock.cursor
        )
        # one request for both: the line model follows its training set in the same run
        assert first.get_num_requested(labeled) == 1
        assert first.get_num_requested(model) == 1

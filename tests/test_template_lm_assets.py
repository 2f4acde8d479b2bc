"""The template_lm assets on two synthetic sources: one vocabulary, a model pretrained on the
HDFS-kind source, the OpenStack-kind source fine-tuned from it and trained from scratch, both
scored per session with thresholds from normal dev sessions, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

pytest.importorskip("transformers")

from logfit_dagster.partitions import LOG_SOURCE  # noqa: E402
from logfit_dagster.resources.trainer import PipesTrainer  # noqa: E402
from tests.graph import ASSETS, offline_resources  # noqa: E402

SMALL = {
    "layers": 1,
    "width": 32,
    "heads": 2,
    "context": 16,
    "max_epochs": 3,
    "learning_rate": 3e-3,
}


def _resources():
    return offline_resources()


@pytest.mark.slow  # trains through a Pipes subprocess, end to end
def test_pretrained_on_hdfs_fine_tuned_on_openstack_and_from_scratch(workdir):
    import mlflow

    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: p_hdfs, origin: synthetic, kind: hdfs, lines: 4000, seed: 31}\n"
        "  - {name: p_nova, origin: synthetic, kind: openstack, lines: 4000, seed: 32}\n"
    )
    data = workdir / "data"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["p_hdfs", "p_nova"])
        for source in ("p_hdfs", "p_nova"):
            assert dg.materialize(
                ASSETS,
                selection=[
                    "raw_logs",
                    "parsed_logs",
                    "log_templates",
                    "sessions",
                    "ground_truth_labels",
                    "dataset_splits",
                ],
                partition_key=source,
                instance=instance,
                resources=_resources(),
            ).success
        shared = dg.materialize(  # pretraining in a Pipes subprocess, fine-tuning in process
            ASSETS,
            selection=["template_vocabulary", "template_lm_pretrained"],
            instance=instance,
            resources={**_resources(), "trainer": PipesTrainer()},
            run_config={"ops": {"template_lm_pretrained": {"config": SMALL}}},
        )
        assert shared.success
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in shared.get_asset_materialization_events()
        }
        assert meta["template_lm_pretrained"]["source"].value == "p_hdfs"
        vocabulary = json.loads((data / "models" / "template_vocabulary.json").read_text())
        assert vocabulary["tokens"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]

        # on the pretraining source itself the pretrained model is the source's model (no
        # second pass over the same sessions, no twin), unless its thresholds are asked
        # differently
        own = {}
        for percentile in (99.5, 99.0):
            result = dg.materialize(
                ASSETS,
                selection=["template_lm"],
                partition_key="p_hdfs",
                instance=instance,
                resources=_resources(),
                run_config={
                    "ops": {"template_lm": {"config": {**SMALL, "percentile": percentile}}}
                },
            )
            assert result.success
            own[percentile] = next(iter(result.get_asset_materialization_events())).materialization
            if percentile == 99.5:  # nothing trained
                assert not (data / "models" / "template_lm" / "p_hdfs").exists()
        kept, retrained = own[99.5].metadata, own[99.0].metadata
        assert kept["mode"].value == "the pretrained model, trained on this source"
        assert kept["model_folder"].value == str(data / "models" / "template_lm_pretrained")
        assert "pretraining_gain" not in kept and "scratch_model_folder" not in kept
        assert "fine-tuned" in retrained["mode"].value
        assert retrained["model_folder"].value != kept["model_folder"].value

        runs = {}
        # fine-tuned alone (the default); from scratch; fine-tuned beside a scratch twin (asked,
        # last: the overview below shows both)
        for name, extra in (
            ("default", {}),
            ("scratch", {"from_scratch": True}),
            ("compared", {"compare_with_scratch": True}),
        ):
            result = dg.materialize(
                ASSETS,
                selection=["template_lm"],
                partition_key="p_nova",
                instance=instance,
                resources=_resources(),
                run_config={"ops": {"template_lm": {"config": {**SMALL, **extra}}}},
            )
            assert result.success
            runs[name] = next(iter(result.get_asset_materialization_events())).materialization
        tuned, scratch = runs["compared"].metadata, runs["scratch"].metadata
        alone = runs["default"].metadata
        assert "pretraining_gain" not in alone and "scratch_model_folder" not in alone
        # the same data and params: the twin is trained beside the fine-tuned model found done
        assert alone["model_folder"].value == tuned["model_folder"].value
        assert "fine-tuned" in tuned["mode"].value and "scratch" in scratch["mode"].value
        # the pretrained model reached template_lm as a value: the model store's copy
        stored = data / "models" / "template_lm_pretrained"
        tuned_manifest = json.loads(
            (Path(tuned["model_folder"].value) / "manifest.json").read_text()
        )
        assert tuned_manifest["extra"]["init"] == str(stored)
        assert {"methods", "score_distributions", "loss_by_position"} <= set(tuned)
        # pretrained vs scratch in one report; the twin is the scratch run's folder, reused
        assert "pretraining_gain" in tuned and "pretraining_gain" not in scratch
        assert tuned["scratch_model_folder"].value == scratch["model_folder"].value
        assert "| max_nll f1 " in tuned["pretraining_gain"].value
        frame = pd.read_parquet(data / "assets" / "template_lm" / "p_nova.parquet")
        assert set(frame["method"]) == {"max_nll", "mean_nll", "perplexity", "topg_misses"}
        assert frame["label"].isin([0, 1]).all() and frame["flagged"].dtype == bool

        # the overview shows the template model's methods beside the count-vector models
        overview = dg.materialize(
            ASSETS,
            selection=["session_model", "session_champion", "metrics_report"],
            partition_key="p_nova",
            instance=instance,
            resources=_resources(),
        )
        assert overview.success
        overview_meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in overview.get_asset_materialization_events()
        }
        table = _overview(instance)
        nova = table[table["source"] == "p_nova"]
        assert {
            "template_lm fine-tuned: topg_misses",
            "template_lm scratch: topg_misses",
            "logistic_regression",
        } <= set(nova["model"])

        # logfit sessions scores the file's sessions with the fine-tuned model the asset
        # reports (not its scratch twin): the test sessions get the asset's scores
        folder = tuned["model_folder"].value
        scored, stderr = _cli_sessions(workdir, data, "--model", folder, "--method", "topg_misses")
        assert "flagged by template_lm:topg_misses" in stderr
        stored = frame[frame["method"] == "topg_misses"].set_index("session_id")
        mine = scored.set_index("session_id").loc[stored.index]
        assert (abs(mine["topg_misses"] - stored["score"]) < 1e-6).all()
        assert (mine["topg_misses_flagged"] == stored["flagged"]).all()
        assert (mine["flagged"] == stored["flagged"]).all()
        # by default, with the source's session champion, which the summary names
        scored, stderr = _cli_sessions(workdir, data)
        champion = overview_meta["session_champion"]["champion"].value
        assert f"flagged by {champion}" in stderr and (scored["model"] == champion).all()

        # a pretrained model trained again (another seed) is another starting point: the
        # fine-tuned model is trained again, in a folder of its own
        assert dg.materialize(
            ASSETS,
            selection=["template_lm_pretrained"],
            instance=instance,
            resources=_resources(),
            run_config={"ops": {"template_lm_pretrained": {"config": {**SMALL, "seed": 1}}}},
        ).success
        retuned = dg.materialize(
            ASSETS,
            selection=["template_lm"],
            partition_key="p_nova",
            instance=instance,
            resources=_resources(),
            run_config={"ops": {"template_lm": {"config": SMALL}}},
        )
        folder_after = next(iter(retuned.get_asset_materialization_events())).materialization
        assert folder_after.metadata["model_folder"].value != tuned["model_folder"].value

        # a second vocabulary run keeps every id
        again = dg.materialize(
            ASSETS, selection=["template_vocabulary"], instance=instance, resources=_resources()
        )
        assert again.success
        assert json.loads((data / "models" / "template_vocabulary.json").read_text()) == vocabulary

    client = mlflow.MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    versions = client.search_model_versions("name='logfit-template-lm-p_nova'")
    # fine-tuned, from scratch, fine-tuned beside its twin, fine-tuned from the retrained model
    assert len(versions) == 4
    assert client.get_metric_history(versions[0].run_id, "train_loss")


def _overview(instance) -> pd.DataFrame:
    """metrics_overview over what is stored, its line-model input from the rule labels."""
    from logfit_dagster.paths import data_dir

    for source in ("p_hdfs", "p_nova"):
        assert dg.materialize(
            ASSETS,
            selection=["llm_labels"],
            partition_key=source,
            instance=instance,
            resources=_resources(),
        ).success
    assert dg.materialize(
        ASSETS,
        selection=["labeled_lines", "look_skip_model", "metrics_overview"],
        instance=instance,
        resources=_resources(),
        run_config={
            "ops": {
                "look_skip_model": {
                    "config": {"C": [1.0], "char_max_features": [5000], "word_max_features": [2000]}
                }
            }
        },
    ).success
    return pd.read_parquet(data_dir() / "assets" / "metrics_overview" / "all.parquet")


def _cli_sessions(workdir, data, *options: str) -> tuple[pd.DataFrame, str]:
    import subprocess
    import sys

    log_file = next((data / "sources" / "p_nova").rglob("*.log"))
    out = workdir / "sessions.parquet"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "logfit_dagster.cli",
            "sessions",
            str(log_file),
            "--source",
            "p_nova",
            "--output",
            str(out),
            *options,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return pd.read_parquet(out), done.stderr

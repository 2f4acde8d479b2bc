"""The line_transformer assets end to end on a tiny BERT: trained in a real subprocess through the
Pipes trainer, gated against the TF-IDF model on held-out sources, tracked and registered in a
real MLflow store, promoted to line champion, and used by scored_lines and ``logfit classify``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers")

from logfit_dagster.partitions import LOG_SOURCE  # noqa: E402
from logfit_dagster.resources.trainer import PipesTrainer  # noqa: E402
from tests.graph import ASSETS, offline_resources  # noqa: E402

from .tiny_models import tiny_bert  # noqa: E402

SOURCES = {
    "t_hdfs": "kind: hdfs, lines: 1200, seed: 21",
    "t_bgl": "kind: bgl, lines: 800, seed: 22",
    "t_nova": "kind: openstack, lines: 800, seed: 23",
    "t_java": "kind: javaapp, lines: 600, seed: 24",
}
LINE_ASSETS = [
    "labeled_lines",
    "look_skip_model",
    "look_skip_champion",
    "line_transformer_model",
    "line_champion",
    "metrics_overview",
]


def _resources():
    return offline_resources(trainer=PipesTrainer())


def _line_run(instance, bert, margin: float):
    return dg.materialize(
        ASSETS,
        selection=LINE_ASSETS,
        instance=instance,
        resources=_resources(),
        run_config={
            "ops": {
                "look_skip_model": {
                    "config": {"C": [1.0], "char_max_features": [5000], "word_max_features": [2000]}
                },
                "line_transformer_model": {
                    "config": {
                        "base_model": str(bert),
                        # a random tiny BERT starts to learn after some 15 epochs here, and
                        # a transformer that learned nothing never passes the gate
                        "max_epochs": 20,
                        "patience": 20,
                        "batch_size": 8,
                        "learning_rate": 2e-3,
                        "max_length": 64,
                        "checkpoint_every": 10,
                        "dev_sources": ["t_java"],
                        "test_sources": ["t_bgl"],
                        "champion_margin": margin,
                    }
                },
            }
        },
        raise_on_error=False,
    )


@pytest.mark.slow
def test_the_cascade_trains_through_pipes_is_gated_tracked_promoted_and_scores(workdir):
    bert = tiny_bert(workdir / "bert")
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        + "".join(
            f"  - {{name: {name}, origin: synthetic, {spec}}}\n" for name, spec in SOURCES.items()
        )
    )
    data = workdir / "data"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, list(SOURCES))
        for source in SOURCES:
            result = dg.materialize(
                ASSETS,
                selection=["raw_logs", "llm_labels"],
                partition_key=source,
                instance=instance,
                resources=_resources(),
            )
            assert result.success, source

        # a margin below zero accepts a cascade up to that much worse than the TF-IDF model
        first = _line_run(instance, bert, margin=-1.0)
        assert first.success
        checks = {c.check_name: c.passed for c in first.get_asset_check_evaluations()}
        assert checks["cascade_gate"] is True and checks["champion_gate"] is True
        event = next(
            e
            for e in first.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("line_transformer_model")
        )
        meta = event.materialization.metadata
        assert meta["sources"].value == {
            "train": ["t_hdfs", "t_nova"],
            "dev": ["t_java"],
            "test": ["t_bgl"],
        }
        assert meta["device"].value == "cpu" and 0 <= meta["test_cascade_f1"].value <= 1
        # progress from the training subprocess reached the step's log
        messages = [r.user_message for r in instance.all_logs(first.run_id)]
        assert any("line_transformer: step" in m and "eta" in m for m in messages)
        assert any("line_transformer: trained in" in m for m in messages)

        champion = data / "models" / "line_champion"
        manifest = json.loads((champion / "manifest.json").read_text())
        assert manifest["family"] == "line_transformer" and manifest["extra"]["cascade"]
        overview = pd.read_parquet(data / "assets" / "metrics_overview" / "all.parquet")
        line_models = set(overview.loc[overview["unit"] == "line", "model"])
        assert {
            "look_skip_model (held-out family)",
            "cascade: tfidf then transformer (held-out source)",
            "line_transformer alone (held-out source)",
        } <= line_models

        scored = dg.materialize(
            ASSETS,
            selection=["scored_lines"],
            partition_key="t_bgl",
            instance=instance,
            resources=_resources(),
        )
        scored_meta = next(
            e for e in scored.get_asset_materialization_events()
        ).materialization.metadata
        assert scored_meta["model_family"].value == "line_transformer"
        assert 0 < scored_meta["share_of_lines_to_transformer"].value <= 1
        _check_tracking_pyfunc_and_classify(workdir, data, champion)

        # a margin of 1 demands more than the TF-IDF model can be beaten by: the cascade fails
        # its gate, and line_champion, in the same run, chooses the TF-IDF model
        second = _line_run(instance, bert, margin=1.0)
        checks = {c.check_name: c.passed for c in second.get_asset_check_evaluations()}
        assert checks["cascade_gate"] is False and checks["champion_gate"] is True
        promoted = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
        assert {"look_skip_champion", "line_champion"} <= promoted
        chosen = next(
            e
            for e in second.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("line_champion")
        ).materialization.metadata
        assert chosen["family"].value == "line_tfidf"
        assert "did not beat" in chosen["why"].value and "the TF-IDF model" in chosen["why"].value
        assert json.loads((champion / "manifest.json").read_text())["family"] == "line_tfidf"


def _check_tracking_pyfunc_and_classify(workdir, data, champion):
    import mlflow

    from logfit_dagster.core.line_scorers import load_line_scorer

    uri = f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("logfit-line-transformer", "champion")
    assert str(version.version) == "1"
    history = client.get_metric_history(version.run_id, "train_loss")
    assert len(history) > 2 and history[-1].step > history[0].step
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"plots", "evaluation.json"} <= artifacts
    # the pyfunc flavour loads the folder with logfit's loader: the champion's probabilities,
    # in a process of its own as a user would load it
    lines = ["RAS KERNEL FATAL data storage interrupt", "RAS KERNEL INFO generating core.1"]
    code = (
        "import json, sys, mlflow\n"
        "model = mlflow.pyfunc.load_model('models:/logfit-line-transformer@champion')\n"
        f"print(json.dumps(list(model.predict({lines!r}))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    served = np.array(json.loads(loaded.stdout.strip().splitlines()[-1]))
    assert np.allclose(served, load_line_scorer(champion).score_lines(lines), atol=1e-6)

    scored = pd.read_parquet(data / "assets" / "scored_lines" / "t_bgl.parquet")
    log_file = next((data / "sources" / "t_bgl").rglob("*.log"))
    out = workdir / "scored.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "logfit_dagster.cli",
            "classify",
            str(log_file),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert np.allclose([r["probability"] for r in rows], scored["probability"], atol=1e-6)

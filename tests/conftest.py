"""Shared fixtures: temporary data folders, a small registry, the shared real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Under pytest-xdist each worker process is a step beside the others on the same CPUs, so
# torch in each (and in the processes it starts) takes its share of them: the project's own
# rule (``core/models/threads.py``). Two workers of two torch threads each on 2 CPUs spent
# 2.5 times the CPU in OpenMP's waits (the line and template model tests: 234 s against 91 s).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("LOGFIT_STEPS_BESIDE", os.environ["PYTEST_XDIST_WORKER_COUNT"])


def shared_data_dir() -> Path:
    """``LOGFIT_SHARED_DATA``, else ``../shared/data`` beside the project."""
    return Path(os.environ.get("LOGFIT_SHARED_DATA") or PROJECT_ROOT.parent / "shared" / "data")


@pytest.fixture
def shared_data() -> Path:
    """The shared real data; missing, its tests skip, or fail where
    ``LOGFIT_REQUIRE_SHARED_DATA=1`` says the data must be there (CI sets it)."""
    path = shared_data_dir()
    if not (path / "loghub-2k").is_dir():
        message = f"shared real data not found at {path} (set LOGFIT_SHARED_DATA)"
        if os.environ.get("LOGFIT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; LOGFIT_REQUIRE_SHARED_DATA=1 requires it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A data folder and registry of their own, through the environment variables users set."""
    data = tmp_path / "data"
    data.mkdir()
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        "sources:\n"
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
    )
    monkeypatch.setenv("LOGFIT_DATA_DIR", str(data))
    monkeypatch.setenv("LOGFIT_SOURCES", str(registry))
    monkeypatch.delenv("LOGFIT_LOGHUB_URL", raising=False)
    return tmp_path

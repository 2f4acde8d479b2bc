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


# The end-to-end suite runs a module to each of two processes (``pytest -m slow -n 2 --dist
# loadfile``), a process taking the next module once it has two tests left. pytest-xdist queues
# the modules by their number of tests, which put the two longest (entry points: 421 s, the
# command: 402 s, of 1,394 s in all on 2 cores) in one process while the other idled for the last
# 200 s. Queued longest first, as measured there, they start in the two processes at once and the
# short ones fill the end; a module not listed goes last.
LONGEST_FIRST = (
    "test_entry_points",
    "test_cli",
    "test_webserver",
    "test_mcp",
    "test_line_transformer_assets",
    "test_template_lm_assets",
    "test_distributed",
    "test_llm_serving",
    "test_line_adaptation",
    "test_trainer",
    "test_bad_files",
    "test_line_transformer",
)


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadfile":
        # the controller queues the modules in the order its workers collected them (below),
        # not by number of tests
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    # in every process (a worker's own ``dist`` option reads "no"); a stable sort, so the
    # modules not listed keep their order after the listed ones
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))

"""Where logfit keeps things, resolved at run time (never at import time)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``LOGFIT_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("LOGFIT_DATA_DIR") or "data").resolve()


def registry_path() -> Path:
    """``LOGFIT_SOURCES``, else ``./sources.yaml``."""
    return Path(os.environ.get("LOGFIT_SOURCES") or "sources.yaml").resolve()


def default_dagster_home() -> Path:
    """Dagster's instance under data/ when ``DAGSTER_HOME`` is unset."""
    return data_dir() / "dagster_home"

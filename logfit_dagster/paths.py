"""Where logfit keeps things, resolved at run time (never at import time)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``LOGFIT_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("LOGFIT_DATA_DIR") or "data").resolve()


def cache_dir() -> Path:
    """What logfit keeps across data folders: ``LOGFIT_CACHE``, else ``~/.cache/logfit``."""
    return Path(os.environ.get("LOGFIT_CACHE") or Path.home() / ".cache" / "logfit")


def registry_path() -> Path:
    """``LOGFIT_SOURCES``, else ``./sources.yaml``."""
    return Path(os.environ.get("LOGFIT_SOURCES") or "sources.yaml").resolve()


def default_dagster_home() -> Path:
    """Dagster's instance under data/ when ``DAGSTER_HOME`` is unset."""
    return data_dir() / "dagster_home"


def models_dir() -> Path:
    return data_dir() / "models"


def champion_model_path() -> Path:
    """The TF-IDF champion's portable JSON (one file, no pickle)."""
    return models_dir() / "look_skip_champion.json"


def line_champion_dir() -> Path:
    """The artifact folder of the line champion, whichever family it is: where the model
    store keeps the ``line_champion`` asset."""
    return models_dir() / "line_champion"


def line_champion_path() -> Path:
    """What ``scored_lines`` and ``logfit classify`` load: the line champion's folder, else
    (a data folder from before model families) the TF-IDF champion's JSON."""
    folder = line_champion_dir()
    return (
        folder if folder.exists() or not champion_model_path().exists() else champion_model_path()
    )

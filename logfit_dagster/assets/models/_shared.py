"""What every model family's assets share: where models live, the gate, champion promotion."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import dagster as dg

from logfit_dagster.core.reading import atomic_path
from logfit_dagster.paths import (  # noqa: F401 (where the assets have always found them)
    champion_model_path,
    line_champion_dir,
    line_champion_path,
    models_dir,
)

TRAINING_POOL = "training"


def family_folder(family: str, key: str) -> Path:
    """Where a family trains: keyed by its data and params, so a retried run resumes there."""
    return models_dir() / family / key


def write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload))


def finite(metrics: dict) -> dict:
    return {
        k: dg.MetadataValue.float(round(float(v), 4))
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


TRAINING_DATA_TAG = "training_data"


def gate(
    new_f1: float,
    champion: tuple[str, dict] | None,
    metric: str,
    margin: float,
    data: str = "",
    champion_data: str | None = None,
) -> tuple[bool, dict]:
    """Passes when there is no champion, when the training data changed since the champion's
    (``data`` against ``champion_data``: scores on other data are not comparable, and the model
    follows its data), or when the new F1 is not below the champion's by more than ``margin``."""
    if champion is None:
        return True, {"champion_version": "none", "new_f1": dg.MetadataValue.float(new_f1)}
    version, metrics = champion
    old = float(metrics.get(metric, float("nan")))
    moved = bool(data) and champion_data is not None and champion_data != data
    passed = moved or not math.isfinite(old) or new_f1 >= old - margin
    metadata = {
        "champion_version": version,
        "champion_f1": dg.MetadataValue.float(old),
        "new_f1": dg.MetadataValue.float(new_f1),
        "margin": dg.MetadataValue.float(margin),
    }
    if moved:
        metadata["note"] = (
            "the training data changed since the champion was trained: its score is on other "
            "data, so the new model replaces it"
        )
    return passed, metadata


def data_key(*parts) -> str:
    """A short, stable key of what a model was trained and scored on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def not_trained(check: str, reason: str) -> dg.AssetCheckResult:
    """The gate's result when a model could not be trained: a warning that says why."""
    return dg.AssetCheckResult(
        check_name=check,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reason": reason},
    )

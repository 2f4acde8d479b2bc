"""Loading a line scorer from whatever a user points at: a line family's artifact folder, a
folder adapted to one system (``line_adaptation``), or a TF-IDF JSON export."""

from __future__ import annotations

from pathlib import Path


def load_line_scorer(path: Path):
    """A line scorer from an artifact folder (any line family, or adapted to one system with
    LLM answers) or a TF-IDF JSON export."""
    path = Path(path)
    if path.is_dir():
        from logfit_dagster.core.models.base import (
            ADAPTATION_FILE,
            LINE_FAMILIES,
            load,
            read_manifest,
        )

        if (path / ADAPTATION_FILE).is_file():
            from logfit_dagster.core.line_adaptation import AdaptedScorer

            read_manifest(path)
            return AdaptedScorer.load(path)
        return load(path, LINE_FAMILIES)
    from logfit_dagster.core.line_scoring import LineScorer

    return LineScorer.load(path)

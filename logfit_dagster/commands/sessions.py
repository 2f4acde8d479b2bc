"""``logfit sessions``: score a file's sessions with a source's session champion."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from logfit_dagster.paths import data_dir


def session_champion_dir(source: str) -> Path:
    """Where the model store keeps a source's session champion."""
    return data_dir() / "models" / "session_champion" / source


def _scorer(folder: Path, method: str | None):
    """The champion stored in ``folder``, or a template_lm folder scored by ``method``."""
    from logfit_dagster.core.models.base import load, read_manifest
    from logfit_dagster.core.session_champion import CHAMPION_FILE, ChampionScorer
    from logfit_dagster.core.session_scoring import TemplateFolderScorer

    if (folder / CHAMPION_FILE).is_file():
        champion = ChampionScorer(folder)
        if method and method != champion.model:
            return champion.with_method(method)
        return champion
    if read_manifest(folder).family != "template_lm":
        raise ValueError(
            f"{folder}: give a session champion folder or a template_lm folder as --model"
        )
    return TemplateFolderScorer(load(folder, families=("template_lm",)), method or "topg_misses")


def cmd_sessions(args: argparse.Namespace) -> int:
    """Score the sessions of a log or sequence file with a source's session champion."""
    from logfit_dagster.core.errors import ModelFileError
    from logfit_dagster.core.sequences import read_templates
    from logfit_dagster.core.session_scoring import (
        log_file_sessions,
        score_sessions,
        sequence_file_sessions,
    )
    from logfit_dagster.resources.sources import LogSources

    sources = LogSources()
    spec = sources.get(args.source)
    model = Path(args.model) if args.model else session_champion_dir(spec.name)
    if not model.exists():
        print(
            f"logfit: no session champion of {spec.name} at {model}: materialize "
            f"session_champion for {spec.name} (logfit materialize --source {spec.name}), or "
            "pass --model",
            file=sys.stderr,
        )
        return 2
    try:
        scorer = _scorer(model, args.method)
    except (ModelFileError, ValueError) as exc:
        print(f"logfit: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if spec.is_sequences:
        path = sources.templates_file(spec)
        sessions = sequence_file_sessions(
            Path(args.file),
            spec.layout,
            read_templates(path) if path else None,
            spec.labels,
            spec.name,
        )
    else:
        sessions = log_file_sessions(
            Path(args.file),
            spec.format,
            spec.multiline,
            spec.session,
            sources.miner_state_path(spec.name),
        )
    frame, warnings = score_sessions(sessions, scorer)
    flagged = frame[frame["flagged"].astype(bool)]
    if args.output:
        from logfit_dagster.core.reading import atomic_path

        output = Path(args.output)
        with atomic_path(output) as tmp:
            if output.suffix == ".jsonl":
                frame.to_json(tmp, orient="records", lines=True)
            else:
                frame.to_parquet(tmp)
    else:
        for row in flagged.itertuples():
            print(
                f"{row.session_id}\tlines {row.first_line}-{row.last_line}\t"
                f"{scorer.model} {row.score:.4g}\tunseen {row.unseen_rate:.0%}"
            )
    for warning in warnings:
        print(f"logfit: warning: {warning}", file=sys.stderr)
    print(
        f"{len(frame)} sessions, {len(flagged)} flagged by {scorer.name} (threshold "
        f"{scorer.threshold:.4g}), model {model}, {time.perf_counter() - started:.2f} s"
        + (f" -> {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0

"""``logfit sessions``: score a log file's sessions with a source's template model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from logfit_dagster.paths import data_dir


def latest_template_model(source: str) -> Path | None:
    """The newest finished template model of a source (fine-tuned or from scratch)."""
    from logfit_dagster.assets.models._shared import family_folder

    root = family_folder("template_lm", source)
    manifests = sorted(root.glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return manifests[-1].parent if manifests else None


def cmd_sessions(args: argparse.Namespace) -> int:
    """Score the sessions of a log file with a source's template model."""
    from logfit_dagster.core.models.base import load
    from logfit_dagster.core.session_scoring import score_file_sessions
    from logfit_dagster.resources.sources import LogSources

    sources = LogSources()
    spec = sources.get(args.source)
    model = Path(args.model) if args.model else latest_template_model(spec.name)
    if model is None:
        print(
            f"logfit: no template model of {spec.name} under {data_dir() / 'models'}: "
            f"materialize template_lm for {spec.name}, or pass --model",
            file=sys.stderr,
        )
        return 2
    scorer = load(model, families=("template_lm",))
    started = time.perf_counter()
    frame = score_file_sessions(
        Path(args.file),
        spec.format,
        spec.multiline,
        spec.session,
        sources.miner_state_path(spec.name),
        scorer,
    )
    flagged = frame[frame[f"{args.method}_flagged"]]
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
                f"{args.method} {getattr(row, args.method):.4g}\tunseen {row.unseen_rate:.0%}"
            )
    print(
        f"{len(frame)} sessions, {len(flagged)} flagged by {args.method} (threshold "
        f"{scorer.thresholds[args.method]:.4g} from normal dev sessions), model {model}, "
        f"{time.perf_counter() - started:.2f} s" + (f" -> {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0

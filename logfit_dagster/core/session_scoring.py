"""Scoring the sessions of a log file with a trained template model (``logfit sessions``).

The file is parsed with its source's line format and a copy of the source's Drain3 state (the
source's own state is never changed), grouped into sessions the way the source's sessions are,
and each session's templates are looked up in the model's vocabulary by their text: a template
the model never saw is the unknown token, and counts towards the unseen-template rule.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa

from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.ingest import parse_and_mine
from logfit_dagster.core.models.template_lm import METHODS, UNK, TemplateScorer
from logfit_dagster.core.reading import read_lines
from logfit_dagster.core.registry import SessionSpec
from logfit_dagster.core.sessions import build_sessions
from logfit_dagster.core.templates import TemplateMiner, profile_for


def score_file_sessions(
    path: Path,
    format_name: str,
    multiline: bool,
    session: SessionSpec,
    miner_state: Path | None,
    scorer: TemplateScorer,
) -> pd.DataFrame:
    """Every session of ``path`` with each method's score and flag, and the unseen rate."""
    lines, _ = read_lines(Path(path))
    raw = pa.table(
        {"line_number": pa.array(range(1, len(lines) + 1), pa.int64()), "raw": pa.array(lines)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "drain_state.json"
        if miner_state is not None and Path(miner_state).is_file():
            shutil.copy(miner_state, state)
        miner = TemplateMiner(profile_for(format_name), state)
        parsed, _ = parse_and_mine(raw, get_line_format(format_name, multiline), miner)
    parsed = parsed.to_pandas()
    sessions = build_sessions(parsed, session, format_name)
    text = dict(zip(parsed["template_id"], parsed["template"].astype(str), strict=True))
    index = {t: i for i, t in enumerate(scorer.vocabulary)}
    tokens = [[index.get(text[t], UNK) for t in ids] for ids in sessions["template_ids"]]
    scores = scorer.score(tokens)
    flags = scorer.flags(scores)
    frame = sessions[["session_id", "first_line", "last_line", "n_lines"]].copy()
    for method in METHODS:
        frame[method] = scores[method]
        frame[f"{method}_flagged"] = flags[method]
    frame["unseen_rate"] = scores["unseen_rate"]
    return frame

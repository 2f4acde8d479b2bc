"""Scoring the sessions of a file with a source's session model (``logfit sessions``).

A log file is parsed with its source's line format and a copy of the source's Drain3 state
(the source's own state is never changed) and grouped into sessions the way the source's
sessions are; a sequence file (a ``sequences`` source's layout) is read as its sessions. Either
way each session is its list of template texts, and the model looks templates up by text: a
template it never saw counts towards the session's unseen rate (the template model reads it as
its unknown token, the count vectors leave it out).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.ingest import parse_and_mine
from logfit_dagster.core.models.template_lm import METHODS, UNK, TemplateScorer
from logfit_dagster.core.reading import read_lines
from logfit_dagster.core.registry import SessionSpec
from logfit_dagster.core.sessions import build_sessions
from logfit_dagster.core.templates import TemplateMiner, profile_for

SESSION_COLUMNS = ["session_id", "first_line", "last_line", "n_lines", "templates", "label"]
# when a file's sessions are this short or this unseen, the scores say little: warned
SHORT_SHARE = 0.5
UNSEEN_SHARE = 0.5


def log_file_sessions(
    path: Path, format_name: str, multiline: bool, session: SessionSpec, miner_state: Path | None
) -> pd.DataFrame:
    """The sessions of a log file, each with its template texts in order (labels unknown)."""
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
    frame = sessions[["session_id", "first_line", "last_line", "n_lines"]].copy()
    frame["templates"] = [[text[t] for t in ids] for ids in sessions["template_ids"]]
    frame["label"] = pd.array([pd.NA] * len(frame), dtype="Int8")
    return frame[SESSION_COLUMNS]


def sequence_file_sessions(
    path: Path,
    layout: str,
    templates: dict[str, str] | None,
    rules,
    source: str,
) -> pd.DataFrame:
    """The sessions of a sequence file in a ``sequences`` source's layout, with the labels the
    file or the source's rules give (unknown otherwise)."""
    from logfit_dagster.core.sequences import expand_sequences

    path = Path(path)
    lines, _ = read_lines(path)
    raw = pa.table(
        {
            "line_number": pa.array(range(1, len(lines) + 1), pa.int64()),
            "raw": pa.array(lines),
            "file": pa.array([path.name] * len(lines), pa.string()),
        }
    )
    table, _ = expand_sequences(raw, layout, templates, rules, source=source)
    events = table.select(["line_number", "template", "session", "label", "source_line"])
    frame = events.to_pandas()
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SESSION_COLUMNS})
    frame["template"] = frame["template"].astype(str)
    grouped = frame.groupby("session", sort=False)
    out = pd.DataFrame(
        {
            "session_id": list(grouped.groups),
            # a session is one line of the file: its first and last line are that line
            "first_line": grouped["source_line"].first().to_numpy(),
            "last_line": grouped["source_line"].first().to_numpy(),
            "n_lines": grouped.size().to_numpy(),
            "templates": [g.tolist() for _, g in grouped["template"]],
            "label": pd.array(grouped["label"].first().to_numpy(), dtype="Int8"),
        }
    )
    return out[SESSION_COLUMNS]


class TemplateFolderScorer:
    """A template_lm folder given by path (not a champion): scores by one method."""

    def __init__(self, scorer: TemplateScorer, method: str):
        self._model, self.model, self.family = scorer, method, "template_lm"
        self.threshold = float(scorer.thresholds[method])

    @property
    def name(self) -> str:
        return f"template_lm:{self.model}"

    def with_method(self, method: str) -> TemplateFolderScorer:
        """The same model flagging by another of its scoring methods."""
        return TemplateFolderScorer(self._model, method)

    def score(self, sessions: list[list[str]]) -> pd.DataFrame:
        index = {t: i for i, t in enumerate(self._model.vocabulary)}
        scores = self._model.score([[index.get(t, UNK) for t in s] for s in sessions])
        flags = self._model.flags(scores)
        out = pd.DataFrame(
            {
                "score": scores[self.model],
                "flagged": flags[self.model],
                "unseen_rate": scores["unseen_rate"],
            }
        )
        for method in METHODS:  # every method beside the one that flags
            out[method] = scores[method]
            out[f"{method}_flagged"] = flags[method]
        return out


def score_sessions(sessions: pd.DataFrame, scorer) -> tuple[pd.DataFrame, list[str]]:
    """Every session with its score, flag and unseen rate under ``scorer``, and the warnings a
    user should read before trusting them (sessions too short, templates mostly unseen)."""
    scored = scorer.score(list(sessions["templates"])) if len(sessions) else pd.DataFrame(
        {"score": [], "flagged": [], "unseen_rate": []}
    )
    frame = pd.concat(
        [sessions.drop(columns=["templates"]).reset_index(drop=True), scored], axis=1
    )
    frame["model"] = scorer.name
    warnings = []
    if len(frame):
        short = int((frame["n_lines"] <= 1).sum())
        if short / len(frame) > SHORT_SHARE:
            warnings.append(
                f"{short} of {len(frame)} sessions are one line long: the source's session rule "
                "may not fit this file, and a one-line session's score says little"
            )
        unseen = int((frame["unseen_rate"] > 0.5).sum())
        if unseen / len(frame) > UNSEEN_SHARE:
            warnings.append(
                f"{unseen} of {len(frame)} sessions are mostly templates the model never saw "
                f"(median unseen rate {np.median(frame['unseen_rate']):.0%}): is this file from "
                "the source the model was trained on?"
            )
    return frame, warnings

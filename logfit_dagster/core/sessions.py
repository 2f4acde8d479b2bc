"""Grouping parsed lines into sessions: by an id in the content, or by line or time windows."""

from __future__ import annotations

import pandas as pd

from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.parsing import column_name
from logfit_dagster.core.registry import SessionSpec

BLOCK_ID_PATTERN = r"(blk_-?\d+)"
INSTANCE_ID_PATTERN = (
    r"\[instance: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]"
)

SESSION_COLUMNS = [
    "session_id",
    "first_line",
    "last_line",
    "n_lines",
    "line_numbers",
    "template_ids",
    "text",
]


def line_timestamps(parsed: pd.DataFrame, format_name: str) -> pd.Series:
    """Timestamps of lines from their header columns, for time windows.

    Raises:
        LogfitError: when the format has no timestamp rule or no line's time can be read.
    """
    fmt = get_line_format(format_name)
    if fmt.timestamp_rule is None:
        raise LogfitError(
            f"format {format_name!r} has no timestamp rule: use session 'window' (by line count)"
        )
    columns, rule = fmt.timestamp_rule
    raw = parsed[column_name(columns[0])].astype("string")
    for extra in columns[1:]:
        raw = raw + " " + parsed[column_name(extra)].astype("string")
    if rule == "unix":
        stamps = pd.to_datetime(pd.to_numeric(raw, errors="coerce"), unit="s")
    elif rule == "ISO8601":
        stamps = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    else:
        stamps = pd.to_datetime(raw, errors="coerce", format=rule)
    if stamps.notna().sum() == 0:
        raise LogfitError(f"no line's timestamp could be read with the {format_name} format's rule")
    return stamps


def session_keys(parsed: pd.DataFrame, spec: SessionSpec, format_name: str) -> pd.DataFrame:
    """Map lines to session ids: one row per (line_number, session_id) pair.

    A line that names several ids (an HDFS delete of three blocks) belongs to each of them; a line
    that names none belongs to no id session.
    """
    if spec.by in ("block_id", "instance_id", "regex"):
        pattern = {"block_id": BLOCK_ID_PATTERN, "instance_id": INSTANCE_ID_PATTERN}.get(
            spec.by, spec.pattern
        )
        if "(" not in pattern:
            pattern = f"({pattern})"
        found = parsed["content"].astype("string").str.findall(pattern)
        pairs = pd.DataFrame({"line_number": parsed["line_number"], "session_id": found})
        pairs = pairs.explode("session_id").dropna(subset=["session_id"])
        # findall gives tuples for patterns with groups inside groups; keep the first group.
        pairs["session_id"] = pairs["session_id"].map(lambda v: v[0] if isinstance(v, tuple) else v)
        return pairs.drop_duplicates().reset_index(drop=True)
    if spec.by == "sequence":
        if "session" not in parsed:
            raise LogfitError(
                "session kind 'sequence' needs the 'session' column that origin 'sequences' "
                "writes; other origins group lines by block_id, instance_id, regex or window"
            )
        return pd.DataFrame(
            {
                "line_number": parsed["line_number"].to_numpy(),
                "session_id": parsed["session"].astype("string").to_numpy(),
            }
        )
    if spec.by == "window":
        index = (parsed["line_number"].to_numpy() - 1) // spec.size
        ids = [f"w{int(i):07d}" for i in index]
        return pd.DataFrame({"line_number": parsed["line_number"].to_numpy(), "session_id": ids})
    if spec.by == "time_window":
        stamps = line_timestamps(parsed, format_name).ffill().bfill()
        start = stamps.min()
        index = ((stamps - start).dt.total_seconds() // spec.seconds).astype("int64")
        ids = (start + pd.to_timedelta(index * spec.seconds, unit="s")).dt.strftime(
            "t%Y%m%dT%H%M%S"
        )
        return pd.DataFrame(
            {"line_number": parsed["line_number"].to_numpy(), "session_id": ids.to_numpy()}
        )
    raise LogfitError(f"unknown session kind {spec.by!r}")


def entry_text(parsed: pd.DataFrame) -> pd.Series:
    """Each line as ``<LEVEL> <COMPONENT>: <CONTENT>``, leaving out header parts a format lacks."""
    content = parsed["content"].astype("string").fillna("")
    prefix = pd.Series("", index=parsed.index, dtype="string")
    if "level" in parsed:
        prefix = parsed["level"].astype("string").fillna("")
    if "component" in parsed:
        component = parsed["component"].astype("string").fillna("")
        prefix = (prefix + " " + component).str.strip()
    return (prefix + ": " + content).where(prefix != "", content)


def build_sessions(parsed: pd.DataFrame, spec: SessionSpec, format_name: str) -> pd.DataFrame:
    """Group parsed lines into sessions, in order of first appearance.

    Args:
        parsed: parsed lines with ``line_number``, ``content``, ``template_id`` and header columns.
        spec: how to group.
        format_name: the source's line format (for time windows).

    Returns:
        One row per session: its id, first and last line, line count, the line numbers and
        template-id sequence in order, and its text, one ``<LEVEL> <COMPONENT>: <CONTENT>`` per
        line.
    """
    keys = session_keys(parsed, spec, format_name)
    if keys.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SESSION_COLUMNS})
    lines = pd.DataFrame(
        {
            "line_number": parsed["line_number"].to_numpy(),
            "template_id": parsed["template_id"].to_numpy(),
            "text": entry_text(parsed).to_numpy(),
        }
    )
    joined = keys.merge(lines, on="line_number", how="left").sort_values(
        ["line_number"], kind="stable"
    )
    grouped = joined.groupby("session_id", sort=False)
    sessions = pd.DataFrame(
        {
            "first_line": grouped["line_number"].min(),
            "last_line": grouped["line_number"].max(),
            "n_lines": grouped["line_number"].size(),
            "line_numbers": grouped["line_number"].agg(list),
            "template_ids": grouped["template_id"].agg(list),
            "text": grouped["text"].agg("\n".join),
        }
    ).reset_index()
    return sessions.sort_values("first_line", kind="stable").reset_index(drop=True)[SESSION_COLUMNS]

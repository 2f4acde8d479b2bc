"""Ground-truth anomaly labels per line and per session, from each source's own provider.

Providers:
    synthetic:     the generator's own labels (written beside its log).
    hdfs_blocks:   a ``BlockId,Label`` file (HDFS_v1); ``unlisted: normal`` when the file lists
                   every anomalous block, so that any block not in it is normal.
    alert_field:   BGL/Thunderbird: a header field that is ``-`` for normal lines and an alert
                   category otherwise.
    instance_list: a file of anomalous OpenStack instance ids, one per line.
    sequence_labels: pre-parsed sessions (origin ``sequences``): the label each session's
                   file gave it (a ``Label`` column or the source's file-name rules).
    none:          no labels; nothing is made up.

Labels are 1 (anomalous), 0 (normal) or missing (unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.parsing import column_name
from logfit_dagster.core.registry import GroundTruthSpec

LINE_COLUMNS = ["line_number", "label", "detail"]
SESSION_COLUMNS = ["session_id", "label", "detail"]


@dataclass
class GroundTruth:
    """Line and session labels, and a sentence saying where they came from."""

    lines: pd.DataFrame
    sessions: pd.DataFrame
    provider: str
    note: str

    @property
    def has_labels(self) -> bool:
        return bool(self.lines["label"].notna().any() or self.sessions["label"].notna().any())


def _empty(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    frame["label"] = frame["label"].astype("Int8")
    return frame


def read_block_labels(path: Path) -> pd.DataFrame:
    """Read a ``BlockId,Label`` file, Label in {Normal, Anomaly} (or 0/1)."""
    path = Path(path)
    if not path.is_file():
        raise LogInputError(f"ground-truth file not found: {path}")
    table = pd.read_csv(path, dtype=str)
    if list(table.columns[:1]) != ["BlockId"]:
        raise LogInputError(f"{path}: expected a header 'BlockId,Label', got {list(table.columns)}")
    if "Label" not in table:
        table["Label"] = "Anomaly"
    mapping = {"anomaly": 1, "1": 1, "normal": 0, "0": 0}
    labels = table["Label"].str.strip().str.lower().map(mapping)
    bad = labels.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise LogInputError(
            f"{path}: line {row + 2}: label {table['Label'].iloc[row]!r} is not Normal or Anomaly"
        )
    return pd.DataFrame(
        {"session_id": table["BlockId"].str.strip(), "label": labels.astype("int8").to_numpy()}
    )


def session_labels_from_lines(line_labels: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """A session is anomalous if any line is; normal only if all its lines are known normal."""
    joined = keys.merge(line_labels, on="line_number", how="left")
    grouped = joined.groupby("session_id", sort=False)
    label = grouped["label"].max().astype("Int8")
    unknown = grouped["label"].apply(lambda s: s.isna().any())
    label[(label == 0) & unknown] = pd.NA
    detail = grouped["detail"].agg(lambda s: ",".join(sorted({d for d in s.dropna() if d})))
    return pd.DataFrame(
        {"session_id": label.index, "label": label.to_numpy(), "detail": detail.to_numpy()}
    ).reset_index(drop=True)


def line_labels_from_sessions(session_labels: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """A line is anomalous if any of its sessions is, unknown if none of its sessions is known."""
    joined = keys.merge(session_labels, on="session_id", how="inner")
    grouped = joined.groupby("line_number", sort=True)
    return pd.DataFrame(
        {
            "line_number": grouped["label"].max().index.to_numpy(),
            "label": grouped["label"].max().astype("Int8").to_numpy(),
            "detail": grouped["detail"]
            .agg(lambda s: ",".join(sorted({d for d in s if d})))
            .to_numpy(),
        }
    )


def collect_ground_truth(
    spec: GroundTruthSpec,
    parsed: pd.DataFrame,
    keys: pd.DataFrame,
    synthetic_labels: Path | None = None,
    base_dir: Path | None = None,
) -> GroundTruth:
    """Gather a source's labels.

    Args:
        spec: the source's ground-truth entry.
        parsed: its parsed lines (for field-based labels).
        keys: its (line_number, session_id) pairs.
        synthetic_labels: the generator's labels file, for the ``synthetic`` provider.
        base_dir: where relative ``ground_truth.path`` values are resolved.
    """
    path = Path(spec.path) if spec.path else None
    if path is not None and not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if spec.provider == "none":
        return GroundTruth(
            _empty(LINE_COLUMNS),
            _empty(SESSION_COLUMNS),
            "none",
            "this source has no ground-truth labels; none were made up",
        )
    if spec.provider == "synthetic":
        if synthetic_labels is None or not Path(synthetic_labels).is_file():
            raise LogInputError(f"synthetic labels file not found: {synthetic_labels}")
        lines = pd.read_parquet(synthetic_labels)
        lines = lines[lines["line_number"].isin(parsed["line_number"])][LINE_COLUMNS]
        lines["label"] = lines["label"].astype("Int8")
        sessions = session_labels_from_lines(lines, keys)
        return GroundTruth(
            lines.reset_index(drop=True),
            sessions,
            "synthetic",
            "labels written by the synthetic generator with the lines",
        )
    if spec.provider == "alert_field":
        name = column_name(spec.field)
        if name not in parsed:
            raise LogInputError(f"ground truth field {spec.field!r} is not a column of this format")
        values = parsed[name].astype("string")
        label = (values != spec.normal_value).astype("Int8").where(values.notna(), pd.NA)
        lines = pd.DataFrame(
            {
                "line_number": parsed["line_number"].to_numpy(),
                "label": label.astype("Int8").to_numpy(),
                "detail": values.where(label == 1, "").fillna("").to_numpy(),
            }
        )
        sessions = session_labels_from_lines(lines, keys)
        return GroundTruth(
            lines,
            sessions,
            "alert_field",
            f"field {spec.field!r}: {spec.normal_value!r} = normal, else alert",
        )
    if spec.provider == "sequence_labels":
        if "session" not in parsed or "label" not in parsed:
            raise LogInputError(
                "ground_truth provider 'sequence_labels' needs the parsed events of origin "
                "'sequences' (columns 'session' and 'label')"
            )
        first = parsed.drop_duplicates("session")
        sessions = pd.DataFrame(
            {
                "session_id": first["session"].astype("string").to_numpy(),
                "label": first["label"].astype("Int8").to_numpy(),
                "detail": first["source_file"].map(lambda f: Path(str(f)).name).to_numpy()
                if "source_file" in first
                else "",
            }
        )
        lines = line_labels_from_sessions(sessions.dropna(subset=["label"]), keys)
        return GroundTruth(
            lines,
            sessions.reset_index(drop=True),
            "sequence_labels",
            "session labels from the sequence files (a Label column or the source's file-name "
            "rules); an event takes the label of its session",
        )
    if spec.provider in ("hdfs_blocks", "instance_list"):
        if spec.provider == "hdfs_blocks":
            known = read_block_labels(path)
        else:
            if path is None or not path.is_file():
                raise LogInputError(f"ground-truth file not found: {path}")
            ids = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
            known = pd.DataFrame({"session_id": ids, "label": 1})
        known = known.drop_duplicates("session_id", keep="last")
        seen = pd.DataFrame({"session_id": keys["session_id"].drop_duplicates()})
        sessions = seen.merge(known, on="session_id", how="left")
        if spec.provider == "instance_list" or spec.unlisted == "normal":
            sessions["label"] = sessions["label"].fillna(0)
        sessions["label"] = sessions["label"].astype("Int8")
        sessions["detail"] = ""
        lines = line_labels_from_sessions(sessions.dropna(subset=["label"]), keys)
        return GroundTruth(
            lines,
            sessions,
            spec.provider,
            f"session labels from {path}; a line takes the label of its session(s)",
        )
    raise LogInputError(f"unknown ground-truth provider {spec.provider!r}")

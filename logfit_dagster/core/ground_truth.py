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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.parsing import column_name
from logfit_dagster.core.registry import GroundTruthSpec
from logfit_dagster.core.tables import BATCH_ROWS, StoredTable, TableStream

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


def _truth_path(spec: GroundTruthSpec, base_dir: Path | None) -> Path | None:
    path = Path(spec.path) if spec.path else None
    if path is not None and not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def listed_session_labels(
    spec: GroundTruthSpec, path: Path | None, seen: pd.Series
) -> pd.DataFrame:
    """The labels of the sessions ``seen`` from a file that lists sessions (``hdfs_blocks``: a
    label per block; ``instance_list``: the anomalous instances)."""
    if spec.provider == "hdfs_blocks":
        known = read_block_labels(path)
    else:
        if path is None or not path.is_file():
            raise LogInputError(f"ground-truth file not found: {path}")
        ids = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        known = pd.DataFrame({"session_id": ids, "label": 1})
    known = known.drop_duplicates("session_id", keep="last")
    sessions = pd.DataFrame({"session_id": seen.to_numpy()}).merge(
        known, on="session_id", how="left"
    )
    if spec.provider == "instance_list" or spec.unlisted == "normal":
        sessions["label"] = sessions["label"].fillna(0)
    sessions["label"] = sessions["label"].astype("Int8")
    sessions["detail"] = ""
    return sessions


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
    path = _truth_path(spec, base_dir)
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
        sessions = listed_session_labels(spec, path, keys["session_id"].drop_duplicates())
        lines = line_labels_from_sessions(sessions.dropna(subset=["label"]), keys)
        return GroundTruth(
            lines,
            sessions,
            spec.provider,
            f"session labels from {path}; a line takes the label of its session(s)",
        )
    raise LogInputError(f"unknown ground-truth provider {spec.provider!r}")


# --- the same labels for a source too big to hold whole -----------------------------------------

LINE_SCHEMA = pa.schema(
    [("line_number", pa.int64()), ("label", pa.int8()), ("detail", pa.string())]
)
_UNKNOWN = -1  # no label (for lines: outside every labelled session, or no field value)


@dataclass
class StoredGroundTruth:
    """Labels of a stored source: the line labels as a stream, the session labels whole (one
    row per session), and the counts the asset reports."""

    lines: TableStream
    sessions: pd.DataFrame
    provider: str
    note: str
    labelled_lines: int = 0
    anomalous_lines: int = 0

    @property
    def has_labels(self) -> bool:
        return bool(self.labelled_lines or self.sessions["label"].notna().any())


def collect_stored_ground_truth(
    spec: GroundTruthSpec,
    parsed: StoredTable,
    sessions: StoredTable,
    synthetic_labels: Path | None = None,
    base_dir: Path | None = None,
) -> StoredGroundTruth:
    """``collect_ground_truth`` over stored tables, reading only what the provider needs.

    Session-file providers (``hdfs_blocks``, ``instance_list``) and ``alert_field`` keep one
    small integer per line and go through the sessions in batches, so HDFS_v1's 11M lines and
    575k blocks never become a frame of (line, session) pairs; ``none`` reads nothing. The
    ``synthetic`` and ``sequence_labels`` providers (generated and pre-parsed sources, which are
    built whole anyway) use ``collect_ground_truth``.
    """
    if spec.provider in ("hdfs_blocks", "instance_list"):
        path = _truth_path(spec, base_dir)
        seen = pd.Series(sessions.read(["session_id"]).column("session_id").to_pylist())
        groups = listed_session_labels(spec, path, seen)
        note = f"session labels from {path}; a line takes the label of its session(s)"
        known = groups.dropna(subset=["label"])
        label_of = dict(zip(known["session_id"], known["label"].astype("int8"), strict=True))
        lines = np.full(_max_line(parsed) + 1, _UNKNOWN, dtype=np.int8)
        for batch in sessions.batches(["session_id", "line_numbers"]):
            labels = np.array(
                [label_of.get(s, _UNKNOWN) for s in batch.column("session_id").to_pylist()],
                dtype=np.int8,
            )
            flat, owner = _flatten(batch.column("line_numbers"))
            np.maximum.at(lines, flat, labels[owner])
        return _stored(groups, spec.provider, note, lines, detail_of=None)
    if spec.provider == "alert_field":
        name = column_name(spec.field)
        if name not in parsed.column_names:
            raise LogInputError(f"ground truth field {spec.field!r} is not a column of this format")
        lines = np.full(_max_line(parsed) + 1, _UNKNOWN, dtype=np.int8)
        details: dict[str, int] = {"": 0}
        detail = np.zeros(len(lines), dtype=np.int32)
        for batch in parsed.batches(["line_number", name]):
            number = batch.column("line_number").to_numpy()
            values = pc.cast(batch.column(name), pa.string())
            valid = pc.is_valid(values)
            alert = pc.fill_null(pc.and_(valid, pc.not_equal(values, spec.normal_value)), False)
            valid, alert = (a.to_numpy(zero_copy_only=False) for a in (valid, alert))
            lines[number[valid]] = alert[valid].astype(np.int8)
            for row in np.flatnonzero(alert):
                detail[number[row]] = details.setdefault(values[int(row)].as_py(), len(details))
        words = list(details)
        groups = _session_labels(sessions, lines, detail, words)
        note = f"field {spec.field!r}: {spec.normal_value!r} = normal, else alert"
        return _stored(
            groups, "alert_field", note, lines, detail_of=(detail, words), keep_unknown=parsed
        )
    if spec.provider == "none":
        frame = pd.DataFrame()
    elif spec.provider == "sequence_labels":
        wanted = [c for c in ("session", "label", "source_file") if c in parsed.column_names]
        frame = parsed.read(["line_number", *wanted]).to_pandas()
    else:
        frame = parsed.read(["line_number"]).to_pandas()
    truth = collect_ground_truth(
        spec,
        frame,
        _keys(sessions) if spec.provider != "none" else None,
        synthetic_labels,
        base_dir,
    )
    table = pa.Table.from_pandas(
        truth.lines[LINE_COLUMNS], schema=LINE_SCHEMA, preserve_index=False
    )
    return StoredGroundTruth(
        TableStream([table], LINE_SCHEMA),
        truth.sessions,
        truth.provider,
        truth.note,
        labelled_lines=int(truth.lines["label"].notna().sum()),
        anomalous_lines=int((truth.lines["label"] == 1).sum()),
    )


def _max_line(parsed: StoredTable) -> int:
    top = 0
    for batch in parsed.batches(["line_number"]):
        top = max(top, int(pc.max(batch.column("line_number")).as_py() or 0))
    return top


def _flatten(lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The values of a list column, and the row each came from."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    owner = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    return flat, owner


def _keys(sessions: StoredTable) -> pd.DataFrame:
    """The (line_number, session_id) pairs of small sources, as ``collect_ground_truth`` takes."""
    table = sessions.read(["session_id", "line_numbers"])
    flat, owner = _flatten(table.column("line_numbers"))
    ids = table.column("session_id").to_numpy()
    return pd.DataFrame({"line_number": flat, "session_id": ids[owner]}).astype(
        {"line_number": "int64"}
    )


def _session_labels(
    sessions: StoredTable, lines: np.ndarray, detail: np.ndarray, words: list[str]
) -> pd.DataFrame:
    """``session_labels_from_lines`` from per-line arrays: anomalous if any line is, normal only
    if every line is known normal, details the sorted distinct alerts of its lines."""
    parts = []
    for batch in sessions.batches(["session_id", "line_numbers"]):
        flat, owner = _flatten(batch.column("line_numbers"))
        n = batch.num_rows
        label = np.full(n, _UNKNOWN, dtype=np.int8)
        np.maximum.at(label, owner, lines[flat])
        unknown = np.zeros(n, dtype=bool)
        np.logical_or.at(unknown, owner, lines[flat] == _UNKNOWN)
        text = [""] * n
        alerts = np.flatnonzero(detail[flat])
        found: dict[int, set] = {}
        for i in alerts:
            found.setdefault(int(owner[i]), set()).add(words[detail[flat[i]]])
        for row, values in found.items():
            text[row] = ",".join(sorted(values))
        frame = pd.DataFrame(
            {
                "session_id": batch.column("session_id").to_pylist(),
                "label": pd.array(label, dtype="Int8"),
                "detail": text,
            }
        )
        frame.loc[(label == _UNKNOWN) | ((label == 0) & unknown), "label"] = pd.NA
        parts.append(frame)
    if not parts:
        return _empty(SESSION_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _stored(
    sessions: pd.DataFrame,
    provider: str,
    note: str,
    lines: np.ndarray,
    detail_of: tuple[np.ndarray, list[str]] | None,
    keep_unknown: StoredTable | None = None,
) -> StoredGroundTruth:
    """The labels of a source: its session labels, and the line labels of the per-line array as
    a stream (the labelled lines, or with ``keep_unknown`` every line, unknown ones unlabelled)."""
    chunk = 1 << 20

    def batches():
        if keep_unknown is not None:
            for batch in keep_unknown.batches(["line_number"]):
                yield _line_rows(batch.column("line_number").to_numpy(), lines, detail_of)
            return
        for start in range(0, len(lines), chunk):
            part = lines[start : start + chunk]
            yield _line_rows(np.flatnonzero(part != _UNKNOWN) + start, lines, detail_of)

    return StoredGroundTruth(
        TableStream(batches(), LINE_SCHEMA),
        sessions,
        provider,
        note,
        labelled_lines=int((lines != _UNKNOWN).sum()),
        anomalous_lines=int((lines == 1).sum()),
    )


def _line_rows(numbers: np.ndarray, lines: np.ndarray, detail_of) -> pa.Table:
    labels = lines[numbers]
    if detail_of is None:
        detail = pa.array([""] * len(numbers), pa.string())
    else:
        codes, words = detail_of
        detail = pa.array(np.asarray(words, dtype=object)[codes[numbers]], pa.string())
    return pa.table(
        {
            "line_number": pa.array(numbers, pa.int64()),
            "label": pa.array(labels, pa.int8(), mask=labels == _UNKNOWN),
            "detail": detail,
        },
        schema=LINE_SCHEMA,
    )


class LineTruth:
    """A source's line labels (``ground_truth_labels``' ``lines``), looked up by line number.

    The labels are stored in line order, and their readers (``label_quality``) ask in line
    order: while they do, only the batches of the table that reach the numbers asked are held,
    and those below the last number asked are let go, so memory stays flat in the source's
    length. Asked out of order, it reads the table's two columns whole, once, and answers from
    them.
    """

    def __init__(self, table: StoredTable, rows: int = BATCH_ROWS):
        self._table, self._rows = table, rows
        self._batches = iter(table.batches(["line_number", "label"], rows))
        self._lines = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros(0, dtype=np.int8)
        self._floor: int | None = None  # the highest number asked so far
        self._whole = False

    def codes(self, numbers: np.ndarray) -> np.ndarray:
        """Per line number: 1 (anomalous), 0 (normal) or -1 (no label, or no such line)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if not len(numbers):
            return np.zeros(0, dtype=np.int8)
        ordered = not (np.diff(numbers) < 0).any()
        if not self._whole and (
            not ordered or (self._floor is not None and numbers[0] < self._floor)
        ):
            self._read_whole()
        top = int(numbers.max())
        while not self._whole and (not len(self._lines) or self._lines[-1] < top):
            batch = next(self._batches, None)
            if batch is None:
                break
            lines, codes = _line_codes(batch)
            if (np.diff(lines) < 0).any() or (
                len(self._lines) and len(lines) and lines[0] < self._lines[-1]
            ):
                self._read_whole()
                break
            self._lines = np.concatenate([self._lines, lines])
            self._codes = np.concatenate([self._codes, codes])
        out = np.full(len(numbers), -1, dtype=np.int8)
        if len(self._lines):
            at = np.clip(np.searchsorted(self._lines, numbers), 0, len(self._lines) - 1)
            found = self._lines[at] == numbers
            out[found] = self._codes[at[found]]
        if not self._whole:  # no later (ordered) question reaches below ``top``
            keep = int(np.searchsorted(self._lines, top))
            self._lines, self._codes = self._lines[keep:], self._codes[keep:]
            self._floor = top
        return out

    def _read_whole(self) -> None:
        pieces = [_line_codes(b) for b in self._table.batches(["line_number", "label"], self._rows)]
        lines = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
        codes = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int8)
        order = np.argsort(lines, kind="stable")
        self._lines, self._codes, self._whole = lines[order], codes[order], True


def _line_codes(batch) -> tuple[np.ndarray, np.ndarray]:
    lines = batch.column("line_number").to_numpy(zero_copy_only=False).astype(np.int64)
    label = batch.column("label").cast(pa.float64()).to_numpy(zero_copy_only=False)
    return lines, np.where(np.isnan(label), _UNKNOWN, label).astype(np.int8)

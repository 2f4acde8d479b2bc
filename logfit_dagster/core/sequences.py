"""Pre-parsed session datasets: sessions that a benchmark ships as event-id sequences.

Many public log-anomaly benchmarks ship sessions, not log lines. Three layouts are read:

    ait:      ``<session id>,<event> <event> ...`` (the AIT anomaly-detection-log-datasets
              layout, e.g. ``application_1/container_3,63 92 128``)
    deeplog:  ``<event> <event> ...``, one session per line (DeepLog's and loglizer's
              ``hdfs_train``, ``hdfs_test_normal``, ``hdfs_test_abnormal``); a session's id is
              ``<file name>:<line number>``
    csv:      a header naming a session-id column (``BlockId``, ``SessionId`` or ``session_id``),
              ``EventSequence`` (or loghub's ``Features``) and optionally ``Label``; sequences like ``['E5', 'E22']``,
              ``E5 E22`` or ``5 22`` (loghub's ``Event_traces.csv`` / ``anomaly_label.csv``
              style)

Each event becomes one row of the parsed table (``content`` and ``template`` are the event's
template text, from a templates file when the source names one), with the session it belongs
to in ``session`` and the session's label in ``label``, so that ``sessions``,
``ground_truth_labels`` and ``dataset_splits`` and every model downstream run unchanged.

Labels: the ``Label`` column of a csv file, else the source's ``labels`` rules (a file-name
pattern to ``normal`` or ``anomalous``); a file no rule matches has unknown labels. Nothing is
guessed from a file's name.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.errors import LogInputError

LAYOUTS = ("ait", "deeplog", "csv")
LABEL_WORDS = {"normal": 0, "anomalous": 1}
_CSV_SESSION_COLUMNS = ("BlockId", "SessionId", "session_id", "block_id")
_CSV_SEQUENCE_COLUMNS = ("EventSequence", "Features")
_CSV_LABELS = {
    "normal": 0,
    "0": 0,
    "success": 0,
    "anomaly": 1,
    "anomalous": 1,
    "abnormal": 1,
    "fail": 1,
    "1": 1,
}
# An event token: an id like 63, E5 or a hash like dc2c74b7.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]+$")
_NUMBERED = re.compile(r"^E?(\d+)$")


def read_templates(path: Path) -> dict[str, str]:
    """Event id → template text from a templates file.

    Either a CSV with ``EventId`` and ``EventTemplate`` columns (loghub's ``*_templates.csv``),
    or plain text where line N holds the template of event N (the AIT layout).

    Raises:
        LogInputError: naming the file when it is missing, empty, or lists an id twice.
    """
    path = Path(path)
    if not path.is_file():
        raise LogInputError(f"templates file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        raise LogInputError(f"{path}: the templates file is empty")
    header = next(csv.reader([lines[0]]))
    if "EventId" in header and "EventTemplate" in header:
        templates: dict[str, str] = {}
        for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            event = (row.get("EventId") or "").strip()
            if not event:
                raise LogInputError(f"{path}: line {number}: empty EventId")
            if event in templates:
                raise LogInputError(f"{path}: line {number}: event {event!r} is listed twice")
            templates[event] = (row.get("EventTemplate") or "").strip()
        return templates
    return {str(number): line.strip() for number, line in enumerate(lines, start=1)}


def label_rules(rules: Sequence[tuple[str, str]], where: str) -> list[tuple[str, int]]:
    """Check ``(file-name pattern, normal|anomalous)`` rules; ``where`` names them in errors."""
    checked = []
    for pattern, word in rules:
        if str(word).lower() not in LABEL_WORDS:
            raise LogInputError(
                f"{where}: label {word!r} for files {pattern!r} must be 'normal' or 'anomalous'"
            )
        checked.append((str(pattern), LABEL_WORDS[str(word).lower()]))
    return checked


def file_label(name: str, rules: list[tuple[str, int]]) -> int | None:
    """The label of every session in a file, by the first rule whose pattern matches its name."""
    for pattern, label in rules:
        if fnmatch.fnmatch(name, pattern):
            return label
    return None


def _canonical(event: str) -> str:
    numbered = _NUMBERED.match(event)
    return str(int(numbered.group(1))) if numbered else event


def _tokens(sequence: str, file: str, line: int) -> list[str]:
    tokens = re.sub(r"[\[\]'\",]", " ", sequence).split()
    if not tokens:
        raise LogInputError(f"{file}: line {line}: a session with no events")
    for token in tokens:
        if not _TOKEN.match(token):
            raise LogInputError(f"{file}: line {line}: {token!r} is not an event id")
    return tokens


def _parse_file(
    layout: str, file: str, rows: list[str], rules: list[tuple[str, int]]
) -> tuple[list[str], list[list[str]], list[int | None], list[int]]:
    """Session ids, event tokens, labels and the file line of each session in one file."""
    name = Path(file).name
    default = file_label(name, rules)
    ids: list[str] = []
    events: list[list[str]] = []
    labels: list[int | None] = []
    lines: list[int] = []
    if layout == "csv":
        if not rows:
            raise LogInputError(f"{file}: empty: expected a header line")
        header = next(csv.reader([rows[0]]))
        key = next((c for c in _CSV_SESSION_COLUMNS if c in header), None)
        sequence_column = next((c for c in _CSV_SEQUENCE_COLUMNS if c in header), None)
        if key is None or sequence_column is None:
            raise LogInputError(
                f"{file}: line 1: expected a header with one of {list(_CSV_SESSION_COLUMNS)} "
                f"and 'EventSequence' (and optionally 'Label'), got {header}"
            )
        key_at, seq_at = header.index(key), header.index(sequence_column)
        label_at = header.index("Label") if "Label" in header else None
        for number, row in enumerate(csv.reader(rows[1:]), start=2):
            if len(row) != len(header):
                raise LogInputError(
                    f"{file}: line {number}: {len(row)} field(s), the header has {len(header)}"
                )
            label = default
            if label_at is not None:
                word = row[label_at].strip().lower()
                if word not in _CSV_LABELS:
                    raise LogInputError(
                        f"{file}: line {number}: label {row[label_at]!r} is not Normal or Anomaly"
                    )
                label = _CSV_LABELS[word]
            ids.append(row[key_at].strip())
            events.append(_tokens(row[seq_at], file, number))
            labels.append(label)
            lines.append(number)
        return ids, events, labels, lines
    for number, row in enumerate(rows, start=1):
        if layout == "ait":
            session, comma, sequence = row.partition(",")
            if not comma or not session.strip():
                raise LogInputError(
                    f"{file}: line {number}: expected '<session id>,<event> <event> ...' "
                    f"(layout 'ait'), got {row[:80]!r}"
                )
            ids.append(session.strip())
        else:
            sequence = row
            ids.append(f"{name}:{number}")
        events.append(_tokens(sequence, file, number))
        labels.append(default)
        lines.append(number)
    return ids, events, labels, lines


def expand_sequences(
    raw: pa.Table,
    layout: str,
    templates: dict[str, str] | None,
    rules: Sequence[tuple[str, str]] = (),
    source: str = "",
) -> tuple[pa.Table, dict]:
    """Turn the raw lines of sequence files into one row per event.

    Args:
        raw: ``raw_logs``: ``line_number`` (across files), ``raw`` and ``file``.
        layout: one of :data:`LAYOUTS`.
        templates: event id → template text; without it an event's text is
            ``<source> event <id>`` (so that unrelated datasets never share a template).
        rules: ``(file-name pattern, normal|anomalous)`` for files without a label column.
        source: the source's name, for template texts and errors.

    Returns:
        ``line_number`` (event number from 1), ``content``, ``parse_ok``, ``template_id``,
        ``template``, ``session``, ``label`` (the session's: 0, 1 or null), ``source_file`` and
        ``source_line``; and counts.

    Raises:
        LogInputError: naming the file and line of a malformed line, a session id used twice,
            or an event the templates file does not list.
    """
    if layout not in LAYOUTS:
        raise LogInputError(f"unknown sequence layout {layout!r}; known: {LAYOUTS}")
    checked = label_rules(rules, f"source {source!r}: labels")
    files = raw.column("file").to_pylist() if raw.num_rows else []
    numbers = raw.column("line_number").to_numpy() if raw.num_rows else np.array([], np.int64)
    texts = raw.column("raw").to_pylist()
    session_ids: list[str] = []
    session_events: list[list[str]] = []
    session_labels: list[int | None] = []
    origins: list[tuple[str, int]] = []
    first_seen: dict[str, tuple[str, int]] = {}
    start = 0
    while start < len(files):
        file = files[start]
        end = start
        while end < len(files) and files[end] == file:
            end += 1
        if int(numbers[end - 1] - numbers[start]) != end - start - 1:
            raise LogInputError(f"{file}: lines are not in order in raw_logs")
        ids, events, labels, lines = _parse_file(layout, file, texts[start:end], checked)
        for session, line in zip(ids, lines, strict=True):
            if session in first_seen:
                other_file, other_line = first_seen[session]
                raise LogInputError(
                    f"{file}: line {line}: session {session!r} already appears at "
                    f"{other_file}: line {other_line}"
                )
            first_seen[session] = (file, line)
            origins.append((file, line))
        session_ids += ids
        session_events += events
        session_labels += labels
        start = end

    # ``5`` and ``E5`` name one event: numbered ids match by number.
    vocabulary = {_canonical(k): v for k, v in (templates or {}).items()}
    tokens = sorted({t for seq in session_events for t in seq})
    if templates is not None:
        missing = [t for t in tokens if _canonical(t) not in vocabulary]
        if missing:
            where = next(
                (
                    f"{f}: line {n}"
                    for (f, n), seq in zip(origins, session_events, strict=True)
                    if missing[0] in seq
                ),
                "",
            )
            raise LogInputError(
                f"{where}: event {missing[0]!r} is not in the templates file "
                f"({len(missing)} unknown event id(s) in all)"
            )
    numbered = all(_NUMBERED.match(t) for t in tokens)
    ids_of = {
        token: int(_NUMBERED.match(token).group(1)) if numbered else index + 1
        for index, token in enumerate(tokens)
    }
    text_of = {
        token: vocabulary.get(_canonical(token)) or f"{source or 'sequence'} event {token}"
        for token in tokens
    }
    lengths = np.array([len(seq) for seq in session_events], dtype=np.int64)
    flat = [t for seq in session_events for t in seq]
    n = len(flat)
    labels_arr = pa.array(
        np.repeat(np.array([-1 if v is None else v for v in session_labels], np.int8), lengths)
        if n
        else np.array([], np.int8),
        type=pa.int8(),
    )
    labels_arr = pc.if_else(pc.equal(labels_arr, -1), pa.scalar(None, pa.int8()), labels_arr)
    table = pa.table(
        {
            "line_number": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "content": pa.array([text_of[t] for t in flat], pa.string()),
            "parse_ok": pa.array(np.ones(n, dtype=bool)),
            "template_id": pa.array([ids_of[t] for t in flat], pa.int64()),
            "template": pa.array([text_of[t] for t in flat], pa.string()).dictionary_encode(),
            "session": pa.array(
                np.repeat(np.array(session_ids, dtype=object), lengths), pa.string()
            )
            if n
            else pa.array([], pa.string()),
            "label": labels_arr,
            "source_file": pa.array(
                np.repeat(np.array([f for f, _ in origins], dtype=object), lengths), pa.string()
            )
            if n
            else pa.array([], pa.string()),
            "source_line": pa.array(
                np.repeat(np.array([line for _, line in origins], np.int64), lengths)
            ),
        }
    )
    stats = {
        "sessions": len(session_ids),
        "events": n,
        "event_types": len({_canonical(t) for t in tokens}),  # 5 and E5 are one event
        "anomalous_sessions": sum(1 for v in session_labels if v == 1),
        "normal_sessions": sum(1 for v in session_labels if v == 0),
        "unlabelled_sessions": sum(1 for v in session_labels if v is None),
        "templates_named": len({_canonical(t) for t in tokens} & set(vocabulary)),
    }
    return table, stats

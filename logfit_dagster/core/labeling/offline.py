"""Labelers that need no API: recorded labels, and rules as the honest offline default."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import ColumnLabeler, Reply, Request
from logfit_dagster.core.labeling.prompt import LABELS, PromptSpec

RECORDED_FIELDS = ("system", "line_number", "raw_line", "label")


class RecordedLabeler(ColumnLabeler):
    """Labels recorded earlier, as JSONL ``{"system","line_number","raw_line","label","reason"}``.

    Lines are matched by content: a recorded line of the same system with the same number wins,
    then the same content elsewhere in that system (the nearest line number), then the same
    content in another system. A line never recorded stays unlabeled.
    """

    name = "recorded"
    asks_again = False

    def __init__(self, paths: list[Path], system: str | None = None):
        self.paths = sorted(Path(p) for p in paths)
        if not self.paths:
            raise LabelerError("RecordedLabeler: no recorded label files given")
        self.system = system
        digest = hashlib.sha256()
        self.by_content: dict[str, list[tuple[str, int, str, str]]] = {}
        for path in self.paths:
            if not path.is_file():
                raise LabelerError(f"RecordedLabeler: recorded label file not found: {path}")
            data = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + data)
            for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                record = _record(path, number, line)
                self.by_content.setdefault(record[2], []).append(
                    (record[0], record[1], record[3], record[4])
                )
        self.model = f"recorded-{digest.hexdigest()[:12]}"

    def _match(self, system: str, number: int, raw: str) -> tuple[str, str] | None:
        candidates = self.by_content.get(raw)
        if not candidates:
            return None
        same = [c for c in candidates if c[0] == system] or candidates
        best = min(same, key=lambda c: abs(c[1] - number))
        return best[2], best[3]

    def label(self, requests: list[Request], prompt: PromptSpec) -> Iterator[Reply]:
        for request in requests:
            window = request.window
            system = self.system or window.source
            entries = []
            for i in request.asked:
                found = self._match(system, window.start + i - 1, window.lines[i - 1])
                if found:
                    entries.append(
                        {"line": i, "label": found[0], "reason": f"recorded: {found[1]}"}
                    )
            yield Reply(request.custom_id, entries)

    def label_column(
        self, source: str, line_numbers: np.ndarray, lines: pa.Array
    ) -> tuple[pa.Array, pa.Array]:
        system = self.system or source
        found = [
            self._match(system, int(number), raw)
            for number, raw in zip(line_numbers, lines.to_pylist(), strict=True)
        ]
        return (
            pa.array([f[0] if f else None for f in found], pa.string()),
            pa.array([f"recorded: {f[1]}" if f else None for f in found], pa.string()),
        )


def _record(path: Path, number: int, line: str) -> tuple[str, int, str, str, str]:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabelerError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise LabelerError(f"{where}: expected a JSON object")
    for name in RECORDED_FIELDS:
        if name not in record:
            raise LabelerError(f"{where}: field {name!r} is missing")
    label = str(record["label"]).upper()
    if label not in LABELS:
        raise LabelerError(f"{where}: field 'label' is {record['label']!r}, not LOOK or SKIP")
    if not isinstance(record["line_number"], int):
        raise LabelerError(f"{where}: field 'line_number' is not an integer")
    return (
        str(record["system"]),
        record["line_number"],
        str(record["raw_line"]),
        label,
        str(record.get("reason") or ""),
    )


# The rules, in order; the first that matches gives the reason.
RULES: tuple[tuple[str, re.Pattern], ...] = (
    (
        "stack trace",
        re.compile(
            r"^\s+at [\w$.<>]+\(|Traceback \(most recent call last\)|^Caused by:|Exception in thread"
        ),
    ),
    (
        "severity",
        re.compile(
            r"\b(?:ERROR|ERR|FATAL|CRITICAL|CRIT|SEVERE|ALERT|EMERG|EMERGENCY|PANIC|WARN|WARNING|"
            r"FAILURE|FAILED|FAIL)\b|\b[EFW]/|\s[EFW]\s+\w"
        ),
    ),
    (
        "negative keyword",
        re.compile(
            r"(?i)\b(?:error|errors|exception|fail(?:s|ed|ure|ing)?|unable|cannot|can't|could ?not|"
            r"couldn't|timeout|timed ?out|denied|refused|reject(?:ed)?|panic|oom|out of memory|"
            r"killed|kill|abort(?:ed|ing)?|corrupt(?:ed|ion)?|invalid|unreachable|lost|"
            r"crash(?:ed)?|segfault|segmentation|deadlock|fatal|critical|unexpected|illegal|"
            r"broken pipe|overflow|exceeded|not responding|disconnect(?:ed)?|shutdown|"
            r"shutting down|unknown|unavailable|mismatch|violation|bad|warn(?:ing)?|"
            r"interrupt(?:ed)?|authentication failure|break-in|no such)\b"
        ),
    ),
)


SKIP_REASON = "rule: no severity word, negative keyword or stack trace"
#: the reason of each rule code: ``RULES[i]`` matched for code ``i``; ``len(RULES)``: none did
RULE_REASONS = tuple(f"rule: {reason}" for reason, _ in RULES) + (SKIP_REASON,)


def rule_label(line: str) -> tuple[str, str]:
    """LOOK with the rule that matched, or SKIP."""
    code = _rule_code(line)
    return ("LOOK" if code < len(RULES) else "SKIP"), RULE_REASONS[code]


def _rule_code(line: str) -> int:
    for code, (_, pattern) in enumerate(RULES):
        if pattern.search(line):
            return code
    return len(RULES)


class RuleLabeler(ColumnLabeler):
    """The offline default: severity words, negative keywords and stack traces mean LOOK."""

    name = "rule"
    model = "rules-v1"
    asks_again = False

    def label(self, requests: list[Request], prompt: PromptSpec) -> Iterator[Reply]:
        lines = [request.window.lines[i - 1] for request in requests for i in request.asked]
        answers = iter(rule_labels(lines))
        for request in requests:
            entries = []
            for i in request.asked:
                label, reason = next(answers)
                entries.append({"line": i, "label": label, "reason": reason})
            yield Reply(request.custom_id, entries)

    def label_column(
        self, source: str, line_numbers: np.ndarray, lines: pa.Array
    ) -> tuple[pa.Array, pa.Array]:
        codes = pa.array(rule_codes(lines))
        labels = pa.array(["LOOK"] * len(RULES) + ["SKIP"], pa.string())
        return pc.take(labels, codes), pc.take(pa.array(RULE_REASONS, pa.string()), codes)


def rule_labels(lines: list[str]) -> list[tuple[str, str]]:
    """``rule_label`` of many lines (see :func:`rule_codes`)."""
    return [
        ("LOOK" if code < len(RULES) else "SKIP", RULE_REASONS[code])
        for code in rule_codes(pa.array(lines, pa.string())).tolist()
    ]


def rule_codes(column: pa.Array) -> np.ndarray:
    """The rule code of every line (see :data:`RULE_REASONS`), column-wise: each rule runs once
    over the ASCII lines in RE2 (where ``\\b`` and ``\\w`` mean what Python's mean), the others
    line by line."""
    # RE2's \\s has no vertical tab: such lines (and non-ASCII ones) take Python's regex
    plain = pc.and_(pc.string_is_ascii(column), pc.invert(pc.match_substring(column, "\x0b")))
    ascii_rows = plain.to_numpy(zero_copy_only=False)
    codes = np.full(len(column), len(RULES), dtype=np.int8)
    undecided = np.flatnonzero(ascii_rows)
    for code, (_, pattern) in enumerate(RULES):
        if not len(undecided):
            break
        hit = pc.match_substring_regex(
            column.take(pa.array(undecided)), pattern=pattern.pattern
        ).to_numpy(zero_copy_only=False)
        codes[undecided[hit]] = code
        undecided = undecided[~hit]
    for row in np.flatnonzero(~ascii_rows):
        codes[row] = _rule_code(column[int(row)].as_py())
    return codes

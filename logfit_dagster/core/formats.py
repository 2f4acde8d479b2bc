"""Line formats: Loghub's ``log_format`` convention compiled to regular expressions.

A format such as ``<Date> <Time> <Pid> <Level> <Component>: <Content>`` names header fields in
angle brackets; literal text between them is matched as written, with runs of spaces matching
any whitespace. The pattern is RE2-compatible so that pyarrow can apply it to a whole column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The log_format strings of Loghub's benchmark settings for its 16 systems, plus the formats of
# the synthetic generator. Each value: (log_format, masking rule names, drain sim_th, drain depth).
LOGHUB_FORMATS: dict[str, str] = {
    "HDFS": "<Date> <Time> <Pid> <Level> <Component>: <Content>",
    "Hadoop": r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>",
    "Spark": "<Date> <Time> <Level> <Component>: <Content>",
    "Zookeeper": r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>",
    "BGL": "<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
    "HPC": "<LogId> <Node> <Component> <State> <Time> <Flag> <Content>",
    "Thunderbird": (
        r"<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> "
        r"<Component>(\[<PID>\])?: <Content>"
    ),
    "Windows": "<Date> <Time>, <Level>                  <Component>    <Content>",
    "Linux": r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>",
    "Android": "<Date> <Time>  <Pid>  <Tid> <Level> <Component>: <Content>",
    "HealthApp": r"<Time>\|<Component>\|<Pid>\|<Content>",
    "Apache": r"\[<Time>\] \[<Level>\] <Content>",
    "Proxifier": r"\[<Time>\] <Program> - <Content>",
    "OpenSSH": r"<Date> <Day> <Time> <Component> sshd\[<Pid>\]: <Content>",
    "OpenStack": r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
    "Mac": r"<Month>  <Date> <Time> <User> <Component>\[<PID>\]( \(<Address>\))?: <Content>",
}

# Formats of the synthetic generator that are not a Loghub system's.
EXTRA_FORMATS: dict[str, str] = {
    "JavaApp": r"<Date> <Time> <Level> \[<Thread>\] <Component>: <Content>",
}

# The fallback for unknown formats: an optional leading timestamp and level, the rest content.
GENERIC_FORMAT = "generic"
_GENERIC_PATTERN = (
    r"^(?:(?P<Timestamp>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+)?"
    r"(?:\[?(?P<Level>TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL|SEVERE)\]?:?\s+)?"
    r"(?P<Content>.*)$"
)

# How to read a timestamp out of the header columns, for time-window sessions:
# (columns joined by a space, strptime-style format understood by pandas.to_datetime).
TIMESTAMP_RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "HDFS": (("Date", "Time"), "%y%m%d %H%M%S"),
    "Hadoop": (("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f"),
    "Spark": (("Date", "Time"), "%y/%m/%d %H:%M:%S"),
    "Zookeeper": (("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f"),
    "BGL": (("Time",), "%Y-%m-%d-%H.%M.%S.%f"),
    "HPC": (("Time",), "unix"),
    "Thunderbird": (("Timestamp",), "unix"),
    "Windows": (("Date", "Time"), "%Y-%m-%d %H:%M:%S"),
    "OpenStack": (("Date", "Time"), "%Y-%m-%d %H:%M:%S.%f"),
    "JavaApp": (("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f"),
    GENERIC_FORMAT: (("Timestamp",), "ISO8601"),
}


@dataclass(frozen=True)
class LineFormat:
    """A compiled line format.

    Attributes:
        name: the format's name (a Loghub system, ``generic``, or ``custom``).
        log_format: the Loghub-style format string (empty for ``generic``).
        pattern: the anchored regular expression with one named group per header field.
        fields: the header field names in order; always ends with ``Content``.
        multiline: lines that do not match continue the previous record (stack traces).
    """

    name: str
    log_format: str
    pattern: str
    fields: tuple[str, ...]
    multiline: bool = False
    fast_pattern: str = ""
    timestamp_rule: tuple[tuple[str, ...], str] | None = field(default=None, compare=False)


def compile_log_format(log_format: str) -> tuple[str, tuple[str, ...]]:
    """Turn a Loghub ``log_format`` string into an anchored regex and its field names.

    Raises:
        ValueError: when the format names no ``<Content>`` field or repeats a field.
    """
    pattern, _, fields = _compile(log_format)
    return pattern, fields


def _compile(log_format: str) -> tuple[str, str, tuple[str, ...]]:
    r"""The exact (lazy) pattern, a faster equivalent for most lines, and the field names.

    Loghub's fields are lazy ``.*?`` groups. Where a field is followed by a literal character
    ``c``, the lazy group's first choice is "everything up to the first ``c``", which RE2 matches
    far faster as ``[^c]*``; a field followed by whitespace becomes ``\S*``. When the fast
    pattern matches a line, its captures are the lazy pattern's first choice, hence the same;
    lines it misses are parsed again with the exact pattern.
    """
    parts = re.split(r"(<[^<>]+>)", log_format)
    fields: list[str] = []
    exact = fast = ""
    literals = [
        re.sub(r"(?<!\\)\((?!\?)", "(?:", re.sub(" +", r"\\s+", part)) for part in parts[::2]
    ]
    for index, part in enumerate(parts):
        if index % 2 == 0:
            # RE2 (pyarrow) rejects unnamed capture groups: make the format's own groups,
            # such as Linux's optional ``(\[<PID>\])?``, non-capturing.
            exact += literals[index // 2]
            fast += literals[index // 2]
            continue
        name = part.strip("<>")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"log format {log_format!r}: field name {name!r} is not an identifier")
        if name in fields:
            raise ValueError(f"log format {log_format!r}: field <{name}> appears twice")
        fields.append(name)
        exact += f"(?P<{name}>.*?)"
        following = literals[index // 2 + 1] if index // 2 + 1 < len(literals) else ""
        fast += f"(?P<{name}>{_fast_group(following)})"
    if "Content" not in fields:
        raise ValueError(f"log format {log_format!r} has no <Content> field")
    return f"^{exact}$", f"^{fast}$", tuple(fields)


def _fast_group(following: str) -> str:
    if following == "":
        return ".*"
    if following.startswith(r"\s+"):
        return r"\S*"
    if following[0] == "\\" and len(following) > 1 and not following[1].isalnum():
        return f"[^\\{following[1]}]*"
    if following[0] not in ".^$*+?()[]{}|\\":
        return f"[^{re.escape(following[0])}]*"
    return ".*?"


def _check_compiles(spec: str, fields: tuple[str, ...], *patterns: str) -> None:
    """A format's patterns compile in Python's engine and in RE2 (what parses the lines), with
    a group for every field, so a bad format fails when the registry is read, not after
    raw_logs was written."""
    import pyarrow as pa
    import pyarrow.compute as pc

    advice = "a literal [ ] ( ) around a field is written \\[ \\] \\( \\)"
    for pattern in patterns:
        try:
            groups = set(re.compile(pattern).groupindex)
            pc.extract_regex(pa.array([""], pa.string()), pattern=pattern)
        except (re.error, pa.ArrowInvalid) as exc:
            raise ValueError(
                f"log format {spec!r} does not make a valid regular expression ({exc}); {advice}"
            ) from None
        lost = [f for f in fields if f not in groups]
        if lost:
            raise ValueError(
                f"log format {spec!r} does not make a valid regular expression: field(s) "
                f"{lost} fall inside a bracket and capture nothing; {advice}"
            )


def get_line_format(spec: str, multiline: bool = False) -> LineFormat:
    """Resolve a format by Loghub system name, ``generic``, or a literal ``<Field>`` string."""
    if spec == GENERIC_FORMAT:
        return LineFormat(
            name=GENERIC_FORMAT,
            log_format="",
            pattern=_GENERIC_PATTERN,
            fields=("Timestamp", "Level", "Content"),
            multiline=multiline,
            timestamp_rule=TIMESTAMP_RULES[GENERIC_FORMAT],
        )
    known = {**LOGHUB_FORMATS, **EXTRA_FORMATS}
    if spec in known:
        pattern, fast, fields = _compile(known[spec])
        return LineFormat(
            spec, known[spec], pattern, fields, multiline, fast, TIMESTAMP_RULES.get(spec)
        )
    if "<" in spec and ">" in spec:
        pattern, fast, fields = _compile(spec)
        _check_compiles(spec, fields, pattern, fast)
        return LineFormat("custom", spec, pattern, fields, multiline, fast, None)
    raise ValueError(
        f"unknown line format {spec!r}: use one of {sorted(known)}, 'generic', "
        "or a log_format string such as '<Date> <Time> <Level> <Component>: <Content>'"
    )

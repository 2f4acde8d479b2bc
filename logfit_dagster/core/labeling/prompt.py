"""The LOOK/SKIP prompt, windows of lines, and the validation and repair of replies.

A window is ``size`` consecutive lines of one source. The model sees them numbered from 1 and
answers one ``{"line", "label", "reason"}`` entry per line. Replies are validated strictly:
what is unambiguous is repaired (code fences, prose around the JSON, labels in the wrong case,
line numbers given in the source's numbering instead of the window's); everything else is left
missing, to be asked once more and otherwise left unlabeled, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property

LABELS = ("LOOK", "SKIP")

DEFAULT_PROMPT_VERSION = "look-skip-v1"

DEFAULT_SYSTEM_PROMPT = """\
You triage log lines for an on-call operator. Label every line LOOK or SKIP.

LOOK: the line shows something an operator should see: an error, a failure, an exception or
stack trace, a timeout, a refused or denied request, data loss or corruption, a crash or
restart, resource exhaustion, a security event, or a state change out of the ordinary
(a node going down, a failover, a configuration change, a service stopping).
SKIP: routine operation: heartbeats, successful requests, normal progress, debug chatter.

When in doubt, answer LOOK: a false alarm costs the operator a glance, a missed anomaly can
cost an outage. Judge each line on its own content and its neighbours.

Answer with a JSON array and nothing else, exactly one entry per numbered line, in order:
[{"line": 1, "label": "LOOK" or "SKIP", "reason": "a few words"}, ...]"""

# JSON schema of one reply, for structured output (OpenAI json_schema, Anthropic tool input).
REPLY_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "labels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "line": {"type": "integer"},
                    "label": {"type": "string", "enum": list(LABELS)},
                    "reason": {"type": "string"},
                },
                "required": ["line", "label", "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["labels"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class PromptSpec:
    """What the model is told; ``version`` is part of the cache key: bump it when the text changes."""

    system: str = DEFAULT_SYSTEM_PROMPT
    version: str = DEFAULT_PROMPT_VERSION


@dataclass(frozen=True)
class Window:
    """``lines`` of ``source`` starting at line ``start`` (1-based) of ``total`` lines.

    ``numbers``, when given, are the source line numbers of ``lines``: a window made of
    excerpts from several places (the ``distinct`` plan), numbered 1.. across them.
    """

    source: str
    start: int
    lines: tuple[str, ...]
    total: int
    numbers: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        return self.numbers[-1] if self.numbers else self.start + len(self.lines) - 1

    def source_line(self, i: int) -> int:
        """The source line number of window line ``i`` (1-based)."""
        return self.numbers[i - 1] if self.numbers else self.start + i - 1

    def parts(self) -> list[tuple[int, int]]:
        """Runs of consecutive source lines, as (first, last) window line numbers."""
        runs: list[tuple[int, int]] = []
        for i in range(1, len(self.lines) + 1):
            if runs and self.source_line(i) == self.source_line(i - 1) + 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
        return runs

    @cached_property
    def content_hash(self) -> str:
        """Identifies the window by its source name and its lines, not by where they sit
        (an excerpt window by where its parts break, too)."""
        content: list = [self.source, list(self.lines)]
        if self.numbers:
            content.append([last - first + 1 for first, last in self.parts()])
        payload = json.dumps(content, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cut_windows(source: str, lines: list[str], size: int) -> list[Window]:
    """Cut ``lines`` into windows of ``size`` consecutive lines (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"window size must be at least 1, got {size}")
    total = len(lines)
    return [
        Window(source, start + 1, tuple(lines[start : start + size]), total)
        for start in range(0, total, size)
    ]


# A line longer than this is shown to the model cut, saying how much was left out: a 50 MB
# line would otherwise be a 50 MB request (and its bill).
MAX_PROMPT_LINE_CHARS = 2000


def _cut(line: str) -> str:
    if len(line) <= MAX_PROMPT_LINE_CHARS:
        return line
    return f"{line[:MAX_PROMPT_LINE_CHARS]} … [{len(line) - MAX_PROMPT_LINE_CHARS} more characters]"


def render_window(window: Window, only: list[int] | None = None, context: bool = False) -> str:
    """The user message for a window; ``only`` restricts the ask to some lines.

    Without ``context`` only those lines are shown (a follow-up ask of the ``windows`` plan);
    with it the whole window is shown and the model is told which lines to label (the
    ``distinct`` plan asks one line per new shape, among its real neighbours). A window of
    excerpts shows each part under the source lines it comes from.
    """
    shown = list(range(1, len(window.lines) + 1)) if context or not only else only
    parts = window.parts() if context and window.numbers else [(shown[0], shown[-1])]
    if len(parts) > 1:
        head = (
            f"System: {window.source}\n{len(parts)} excerpts of its {window.total} lines, "
            f"numbered 1-{len(window.lines)} across them:"
        )
    else:
        head = f"System: {window.source}\nLines {window.start}-{window.end} (of {window.total}):"
    if only and context:
        head += (
            f"\nLabel only lines {', '.join(str(i) for i in only)}, keeping their numbers; "
            "the other lines are shown for context and are already labelled."
        )
    elif only:
        head += (
            f"\nLabel only the {len(shown)} line(s) below, keeping their numbers; "
            "the other lines of this window are already labelled."
        )
    if len(parts) == 1:
        return f"{head}\n\n" + "\n".join(_numbered(window, i) for i in shown)
    blocks = [
        f"Lines {window.source_line(first)}-{window.source_line(last)}:\n"
        + "\n".join(_numbered(window, i) for i in range(first, last + 1))
        for first, last in parts
    ]
    return f"{head}\n\n" + "\n\n".join(blocks)


def _numbered(window: Window, i: int) -> str:
    return f"{i}: {_cut(window.lines[i - 1])}"


@dataclass
class ParsedReply:
    """Labels by window line number (1-based), and what had to be repaired or was unusable."""

    labels: dict[int, tuple[str, str]] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def missing(self, asked: list[int]) -> list[int]:
        return [i for i in asked if i not in self.labels]


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def _load_json(text: str, reply: ParsedReply):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    stripped = _FENCE.sub("", text.strip())
    start = min((i for i in (stripped.find("["), stripped.find("{")) if i >= 0), default=-1)
    if start >= 0:
        try:
            value, _ = json.JSONDecoder().raw_decode(stripped[start:])
            reply.repairs.append("extracted the JSON from text around it")
            return value
        except json.JSONDecodeError:
            pass
    reply.problems.append(f"reply is not valid JSON: {text[:80]!r}")
    return None


def parse_reply(payload, window: Window, asked: list[int] | None = None) -> ParsedReply:
    """Validate a reply (text, a list of entries, or ``{"labels": [...]}``) for ``window``.

    ``asked`` are the window line numbers the request asked for (all of them by default).
    Entries for lines outside ``asked``, with unknown labels, or contradicting each other are
    dropped and reported; the lines they were meant for stay missing.
    """
    reply = ParsedReply()
    asked = asked or list(range(1, len(window.lines) + 1))
    value = _load_json(payload, reply) if isinstance(payload, str) else payload
    if isinstance(value, dict):
        value = value.get("labels", value.get("lines"))
    if not isinstance(value, list):
        if value is not None:
            reply.problems.append("reply is not a list of line labels")
        return reply
    entries = [e for e in value if isinstance(e, dict)]
    if len(entries) < len(value):
        reply.problems.append(f"{len(value) - len(entries)} entries are not objects")
    numbers = [_as_int(e.get("line")) for e in entries]
    given = numbers
    absolute = _absolute_numbers(numbers, asked, window)
    if absolute:
        reply.repairs.append(f"line numbers given as source lines {window.start}-{window.end}")
        numbers = [absolute[n] if n is not None else None for n in numbers]
    seen: dict[int, tuple[str, str]] = {}
    conflicted: set[int] = set()
    for entry, number, said in zip(entries, numbers, given, strict=True):
        label = str(entry.get("label", "")).strip().upper()
        if number is None:
            reply.problems.append(f"entry without a line number: {entry!r:.80}")
            continue
        if number not in asked:
            reply.problems.append(f"line {said} is outside the lines asked")
            continue
        if label not in LABELS:
            reply.problems.append(f"line {number}: unknown label {entry.get('label')!r}")
            continue
        if label != str(entry.get("label")):
            reply.repairs.append(f"line {number}: label {entry.get('label')!r} read as {label}")
        reason = str(entry.get("reason") or "")
        if number in seen and seen[number][0] != label:
            conflicted.add(number)
        seen.setdefault(number, (label, reason))
    for number in conflicted:
        reply.problems.append(f"line {number}: contradicting labels")
        del seen[number]
    reply.labels = seen
    return reply


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _absolute_numbers(
    numbers: list[int | None], asked: list[int], window: Window
) -> dict[int, int] | None:
    """Source line -> window line, when every number is a source line of an asked line and
    none a window line: a model that numbered the lines as the source does."""
    valid = [n for n in numbers if n is not None]
    absolute = {window.source_line(a): a for a in asked}
    if not valid or all(k == v for k, v in absolute.items()):
        return None
    if all(n in absolute for n in valid) and not any(n in asked for n in valid):
        return absolute
    return None

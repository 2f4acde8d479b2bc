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
    """``lines`` of ``source`` starting at line ``start`` (1-based) of ``total`` lines."""

    source: str
    start: int
    lines: tuple[str, ...]
    total: int

    @property
    def end(self) -> int:
        return self.start + len(self.lines) - 1

    @property
    def content_hash(self) -> str:
        """Identifies the window by its source name and its lines, not by where they sit."""
        payload = json.dumps([self.source, list(self.lines)], ensure_ascii=False)
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


def render_window(window: Window, only: list[int] | None = None) -> str:
    """The user message for a window; ``only`` restricts it to some lines (a follow-up ask)."""
    numbers = only or list(range(1, len(window.lines) + 1))
    body = "\n".join(f"{i}: {_cut(window.lines[i - 1])}" for i in numbers)
    head = f"System: {window.source}\nLines {window.start}-{window.end} (of {window.total}):"
    if only:
        head += (
            f"\nLabel only the {len(numbers)} line(s) below, keeping their numbers; "
            "the other lines of this window are already labelled."
        )
    return f"{head}\n\n{body}"


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
    shift = _absolute_shift(numbers, asked, window)
    if shift:
        reply.repairs.append(f"line numbers given as source lines {window.start}-{window.end}")
    seen: dict[int, tuple[str, str]] = {}
    conflicted: set[int] = set()
    for entry, number in zip(entries, numbers, strict=True):
        label = str(entry.get("label", "")).strip().upper()
        if number is None:
            reply.problems.append(f"entry without a line number: {entry!r:.80}")
            continue
        number -= shift
        if number not in asked:
            reply.problems.append(f"line {number + shift} is outside the lines asked")
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


def _absolute_shift(numbers: list[int | None], asked: list[int], window: Window) -> int:
    """``start - 1`` when every number is a source line of the window and none a window line."""
    valid = [n for n in numbers if n is not None]
    if not valid or window.start == 1:
        return 0
    absolute = {a + window.start - 1 for a in asked}
    if all(n in absolute for n in valid) and not any(n in asked for n in valid):
        return window.start - 1
    return 0

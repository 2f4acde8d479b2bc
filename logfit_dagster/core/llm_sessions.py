"""LLMs that judge a whole session: the prompts, the examples, and the reward every route shares.

A session (an HDFS block, an OpenStack instance, a window) is shown to the model as its lines,
``<LEVEL> <COMPONENT>: <CONTENT>`` one per line; the model answers with JSON,
``{"label": "anomalous" | "normal", "reason": "..."}``. The same prompt feeds supervised
fine-tuning (the answer as the assistant turn), reinforcement fine-tuning (the prompt alone,
the label for the grader) and evaluation.

:func:`reward` scores a completion against a label. It is written with the standard library
only, so that :func:`python_grader` can hand its source to OpenAI's reinforcement fine-tuning
as a ``python`` grader, and the local GRPO trainer can call it directly: both routes optimise
the same thing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from logfit_dagster.core.reading import atomic_path

PROMPT_VERSION = "sessions-1"
#: how a session is shown, and the prompt version of each form (sessions-2, before it, showed
#: an event never seen in training as a common pattern, unmarked)
PROMPT_FORMS = {"lines": "sessions-1", "templates": "sessions-3"}
LABELS = ("anomalous", "normal")
SYSTEM_PROMPT = (
    "You are an SRE reviewing the logs of one session of a system (a storage block, a virtual "
    "machine's lifecycle, a window of a service's log). Each line is "
    "'<LEVEL> <COMPONENT>: <CONTENT>'. Decide whether the session is anomalous: a failure, an "
    "error path, a missing or out-of-order step, an event a healthy session never shows. "
    'Answer with JSON only: {"label": "anomalous" or "normal", "reason": "<at most 30 words>"}.'
)
SYSTEM_PROMPT_TEMPLATES = (
    "You are an SRE reviewing the events of one session of a system (a storage block, a virtual "
    "machine's lifecycle, a window of a service's log), in order. Each line is one event, "
    "'<LEVEL> <COMPONENT>: <CONTENT>'; 'xN' at its end means it happened N times in a row. "
    "Common events show their pattern (numbers as 0, ids masked); an event seen in few or no "
    "training sessions starts with [rare] and is shown as written. Decide whether the session "
    "is anomalous: a "
    "failure, an error path, a missing or out-of-order step, an event a healthy session never "
    'shows. Answer with JSON only: {"label": "anomalous" or "normal", "reason": "<at most 30 '
    'words>"}.'
)
ANSWER_SCHEMA = {
    "name": "session_label",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(LABELS)},
            "reason": {"type": "string"},
        },
        "required": ["label", "reason"],
        "additionalProperties": False,
    },
}
# A rough count for budgets: log lines with ids and numbers run about 3 characters a token.
CHARS_PER_TOKEN = 3.0
MAX_LINE_CHARS = 500


def estimate_tokens(text: str) -> int:
    """A conservative token estimate (no tokenizer needed): about 3 characters a token."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def session_prompt(text: str, token_budget: int) -> tuple[str, int]:
    """A session's lines as the user turn, cut to ``token_budget`` estimated tokens.

    A long session keeps its head and its tail (where lifecycles start and fail) and says how
    many lines were left out between them; a long line is cut at :data:`MAX_LINE_CHARS`.

    Returns:
        The text and the number of lines left out.
    """
    lines = [_cut(line) for line in text.split("\n")]
    return _fit(lines, [1] * len(lines), token_budget)


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …"


RARE_MARK = "[rare] "


def template_prompt(
    text: str, template_ids: list[int], common: set[int], token_budget: int
) -> tuple[str, int]:
    """A session as its events in order, the ``templates`` form of the user turn.

    A run of lines of one template is one line with ``xN``; a line of a ``common`` template
    (see :func:`common_templates`) is shown as its shape (numbers as 0, ids masked:
    ``line_features.shape_of``), any other (rare in training, or never seen there) as written
    after :data:`RARE_MARK`: one token a small model can learn to read. Cut to
    ``token_budget`` as :func:`session_prompt` cuts, but the rare events are kept first: a cut
    never hides the event that makes a session anomalous while it fits the budget.

    Returns:
        The text and the number of lines left out.
    """
    from logfit_dagster.core.line_features import shape_of

    lines = text.split("\n")
    if len(lines) != len(template_ids):
        raise ValueError(
            f"a session has {len(lines)} lines and {len(template_ids)} template ids: they must "
            "pair up"
        )
    entries, counts, rare = [], [], []
    previous = None
    for line, template in zip(lines, template_ids, strict=True):
        if template == previous:
            counts[-1] += 1
            continue
        previous = template
        rare.append(template not in common)
        entries.append(_cut(RARE_MARK + line if rare[-1] else shape_of(line)))
        counts.append(1)
    shown = [e if n == 1 else f"{e} x{n}" for e, n in zip(entries, counts, strict=True)]
    return _fit(shown, counts, token_budget, rare)


def common_templates(sequences, share: float = 0.01, at_least: int = 3) -> set[int]:
    """Templates found in at least ``share`` of the sessions (``sequences``: each session's
    template ids) and in at least ``at_least`` of them; any other template, seen in training
    or not, is rare."""
    seen: dict[int, int] = {}
    total = 0
    for sequence in sequences:
        total += 1
        for template in set(sequence):
            seen[template] = seen.get(template, 0) + 1
    floor = max(share * total, at_least)
    return {template for template, n in seen.items() if n >= floor}


def common_in_batches(batches, train_ids, share: float = 0.01, at_least: int = 3) -> set[int]:
    """:func:`common_templates` of the training sessions (``train_ids``) among ``batches``
    (Arrow tables of ``session_id`` and ``template_ids``), a batch at a time: the template ids
    stay flat numpy arrays, never a list per session."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(list(train_ids), pa.string())
    seen = np.zeros(0, dtype=np.int64)  # per template id: training sessions that have it
    total = 0
    for batch in batches:
        ids = pc.filter(
            batch.column("template_ids"),
            pc.is_in(pc.cast(batch.column("session_id"), pa.string()), value_set=wanted),
        ).combine_chunks()
        if not len(ids):
            continue
        total += len(ids)
        offsets = ids.offsets.to_numpy()
        lengths = np.diff(offsets)
        values = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        if not len(values):
            continue
        owner = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
        width = int(values.max()) + 1
        distinct = np.unique(owner * width + values) % width  # each template once a session
        counts = np.bincount(distinct, minlength=width)
        if len(counts) > len(seen):
            seen = np.pad(seen, (0, len(counts) - len(seen)))
        seen[: len(counts)] += counts
    floor = max(share * total, at_least)
    return {int(t) for t in np.flatnonzero(seen >= floor)}


def _fit(
    lines: list[str], weights: list[int], token_budget: int, keep: list[bool] | None = None
) -> tuple[str, int]:
    """``lines`` whole when they fit ``token_budget``, else the ``keep`` lines first (in
    order, as many as fit), then the head and tail around them, each run of lines left out
    replaced by a marker saying how many lines (``weights``: the lines each one stands for) it
    held."""
    whole = "\n".join(lines)
    if estimate_tokens(whole) <= token_budget:
        return whole, 0
    marker_chars = 40  # "[... N lines left out ...]" and its newline
    budget_chars = int(token_budget * CHARS_PER_TOKEN) - 60  # room for the marker line
    chosen: set[int] = set()
    used = 0
    for i in [i for i, k in enumerate(keep or []) if k]:
        # a kept line inside a cut may split it in two: room for one more marker
        if used + len(lines[i]) + 1 + marker_chars > budget_chars:
            break
        chosen.add(i)
        used += len(lines[i]) + 1 + marker_chars
    low, high = 0, len(lines) - 1
    take_head = True
    while low <= high:
        i = low if take_head else high
        if i not in chosen:
            if used + len(lines[i]) + 1 > budget_chars:
                break
            chosen.add(i)
            used += len(lines[i]) + 1
        if take_head:
            low += 1
        else:
            high -= 1
        take_head = not take_head
    shown, left_out, gap = [], 0, 0
    for i, line in enumerate(lines):
        if i not in chosen:
            gap += weights[i]
            continue
        if gap:
            shown.append(f"[... {gap} lines left out ...]")
            left_out, gap = left_out + gap, 0
        shown.append(line)
    if gap:
        shown.append(f"[... {gap} lines left out ...]")
        left_out += gap
    return "\n".join(shown), left_out


def messages_for(
    text: str,
    token_budget: int,
    form: str = "lines",
    template_ids: list[int] | None = None,
    common: set[int] | None = None,
) -> tuple[list[dict], int]:
    """The chat messages of a session (system, then the session as the user turn), in the
    ``lines`` form (every line as written) or the ``templates`` form (events in order, repeats
    collapsed, rare events as written: needs each line's template id and the common set)."""
    if form == "templates":
        if template_ids is None:
            raise ValueError("the templates form needs the session's template ids")
        body, left_out = template_prompt(text, list(template_ids), common or set(), token_budget)
        system = SYSTEM_PROMPT_TEMPLATES
    elif form == "lines":
        body, left_out = session_prompt(text, token_budget)
        system = SYSTEM_PROMPT
    else:
        raise ValueError(f"prompt form must be one of {', '.join(PROMPT_FORMS)}, got {form!r}")
    return [{"role": "system", "content": system}, {"role": "user", "content": body}], left_out


def answer_for(label: int) -> str:
    """The reference answer of a labelled session, as the model should write it."""
    word = LABELS[0] if int(label) == 1 else LABELS[1]
    reason = (
        "the session shows an error path or a step a healthy session does not"
        if word == "anomalous"
        else "every step is one a healthy session shows, in order"
    )
    return json.dumps({"label": word, "reason": reason})


@dataclass(frozen=True)
class ExampleParams:
    """How examples are made."""

    token_budget: int = 2000
    normal_per_anomalous: float = 0.0  # training sets only; 0 keeps every normal session
    seed: int = 0
    prompt_version: str = ""  # empty: the form's own (PROMPT_FORMS)
    form: str = "lines"  # or "templates" (see messages_for)
    rare_share: float = 0.01  # templates form: rare below this share of training sessions

    def __post_init__(self):
        if self.form not in PROMPT_FORMS:
            raise ValueError(
                f"prompt form must be one of {', '.join(PROMPT_FORMS)}, got {self.form!r}"
            )
        if not self.prompt_version:
            object.__setattr__(self, "prompt_version", PROMPT_FORMS[self.form])


def build_examples(
    sessions: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, params: ExampleParams
) -> tuple[pd.DataFrame, dict]:
    """One example per labelled session: its messages, label and split.

    Training sessions may be rebalanced (at most ``normal_per_anomalous`` normal sessions per
    anomalous one, drawn with ``seed``); dev and test sessions never are. Unlabelled sessions
    are left out and counted.

    Returns:
        Columns ``session_id``, ``split``, ``label`` (0/1), ``answer``, ``messages`` (JSON),
        ``prompt_version``, ``est_tokens``, ``lines``, ``lines_left_out``; and counts.
    """
    stats: dict = {}
    with_ids = "template_ids" in sessions
    columns = ["session_id", "text", "n_lines"] + (["template_ids"] if with_ids else [])
    parts = list(
        example_batches(
            [sessions[columns]],
            sessions["session_id"],
            labels,
            splits,
            params,
            stats,
            common_of_training(sessions, splits, params) if with_ids else None,
        )
    )
    examples = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EXAMPLE_COLUMNS)
    )
    return examples, stats


def common_of_training(sessions: pd.DataFrame, splits: pd.DataFrame, params: ExampleParams):
    """The common templates of the training sessions (``session_id``, ``template_ids``)."""
    train = set(splits.loc[splits["split"] == "train", "session_id"])
    sequences = sessions.loc[sessions["session_id"].isin(train), "template_ids"]
    return common_templates(sequences, params.rare_share)


def example_batches(
    session_batches,
    session_ids: pd.Series,
    labels: pd.DataFrame,
    splits: pd.DataFrame,
    params: ExampleParams,
    stats: dict,
    common: set[int] | None = None,
):
    """:func:`build_examples` batch by batch: ``session_batches`` are frames of ``session_id``,
    ``text`` and ``n_lines`` (and ``template_ids``, which the ``templates`` form needs) in the
    order of ``session_ids`` (every session's id, which the rebalancing draw needs first);
    ``common``: the common templates of the training sessions. Yields frames of examples and fills
    ``stats`` as they pass; where template ids are given, ``stats`` also holds the estimated
    tokens of both forms (``est_tokens_lines_form``, ``est_tokens_templates_form``).
    """
    frame = (
        pd.DataFrame({"session_id": session_ids.to_numpy()})
        .merge(splits[["session_id", "split"]], on="session_id", how="inner")
        .merge(labels[["session_id", "label"]], on="session_id", how="left")
    )
    unlabelled = int(frame["label"].isna().sum())
    frame = frame[frame["label"].notna()]
    dropped: set = set()
    if params.normal_per_anomalous > 0:
        train = frame["split"] == "train"
        anomalous = int((train & (frame["label"] == 1)).sum())
        normal_ids = frame.loc[train & (frame["label"] == 0), "session_id"].tolist()
        keep = int(params.normal_per_anomalous * anomalous)
        if anomalous and keep < len(normal_ids):
            kept = set(random.Random(params.seed).sample(normal_ids, keep))
            dropped = {sid for sid in normal_ids if sid not in kept}
    # indexed once: each batch's join reuses the index's hash table (a merge would rebuild it
    # for every batch, hundreds of thousands of sessions a time)
    wanted = frame[~frame["session_id"].isin(dropped)][["session_id", "split", "label"]]
    wanted = wanted.set_index("session_id")
    del frame
    stats.update(
        {
            "unlabelled_sessions_left_out": unlabelled,
            "normal_train_sessions_dropped_by_rebalancing": len(dropped),
            "sessions_cut_to_budget": 0,
        }
    )
    for batch in session_batches:
        with_ids = "template_ids" in batch
        if params.form == "templates" and not with_ids:
            raise ValueError("the templates form needs each session's template_ids")
        if with_ids:
            for form in PROMPT_FORMS:
                stats.setdefault(f"est_tokens_{form}_form", 0)
        columns = ["session_id", "text", "n_lines"] + (["template_ids"] if with_ids else [])
        part = batch[columns].join(wanted, on="session_id", how="inner")
        rows = []
        for row in part.itertuples(index=False):
            ids = list(row.template_ids) if with_ids else None
            messages, left_out = messages_for(
                str(row.text), params.token_budget, params.form, ids, common
            )
            if with_ids:  # what each form costs, for the metadata
                for form in PROMPT_FORMS:
                    shown = (
                        messages
                        if form == params.form
                        else messages_for(str(row.text), params.token_budget, form, ids, common)[0]
                    )
                    stats[f"est_tokens_{form}_form"] += sum(
                        estimate_tokens(m["content"]) for m in shown
                    )
            rows.append(
                {
                    "session_id": str(row.session_id),
                    "split": row.split,
                    "label": int(row.label),
                    "answer": answer_for(int(row.label)),
                    "messages": json.dumps(messages, ensure_ascii=False),
                    "prompt_version": params.prompt_version,
                    "est_tokens": sum(estimate_tokens(m["content"]) for m in messages),
                    "lines": int(row.n_lines),
                    "lines_left_out": left_out,
                }
            )
        examples = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
        stats["sessions_cut_to_budget"] += int((examples["lines_left_out"] > 0).sum())
        yield examples


EXAMPLE_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int64()),
        ("answer", pa.string()),
        ("messages", pa.string()),
        ("prompt_version", pa.string()),
        ("est_tokens", pa.int64()),
        ("lines", pa.int64()),
        ("lines_left_out", pa.int64()),
    ]
)
EXAMPLE_COLUMNS = EXAMPLE_SCHEMA.names
# split -> the JSONL files it feeds
SESSION_IDS = "session_ids.json"
FILES = {
    "sft_train.jsonl": "train",
    "sft_valid.jsonl": "dev",
    "rft_train.jsonl": "train",
    "rft_valid.jsonl": "dev",
    "test.jsonl": "test",
}


def write_jsonl(
    examples: pd.DataFrame, folder: Path, names: tuple[str, ...] = tuple(FILES)
) -> dict[str, int]:
    """The OpenAI fine-tuning layouts (``names``: which of :data:`FILES`), each file written
    whole or not at all (see :class:`JsonlFiles`).

    Returns:
        Rows per file.
    """
    with JsonlFiles(folder, names) as files:
        files.write(examples)
    return files.counts


class JsonlFiles:
    """The OpenAI fine-tuning layouts, written batch by batch of examples, each file renamed
    into place only once every batch is in (a failure leaves the previous files):

    - ``sft_*``: ``{"messages": [system, user, assistant]}`` (chat supervised fine-tuning);
    - ``rft_*`` and ``test``: ``{"messages": [system, user], "label", "session_id"}``: the
      conversation ends on the user turn and the grader reads ``label`` (``item.label``).

    ``counts``: rows per file, once closed.
    """

    def __init__(self, folder: Path, names: tuple[str, ...] = tuple(FILES)):
        self.folder = Path(folder)
        self.files = {name: FILES[name] for name in names}
        self.counts = {name: 0 for name in self.files}
        # which sessions each file holds: SFT records carry only messages (OpenAI's layout)
        self.ids: dict[str, list[str]] = {name: [] for name in self.files}

    def __enter__(self) -> JsonlFiles:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stack = ExitStack()
        self._out = {}
        for name in self.files:
            tmp = self._stack.enter_context(atomic_path(self.folder / name))
            self._out[name] = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        return self

    def write(self, examples: pd.DataFrame) -> None:
        for name, split in self.files.items():
            part = examples[examples["split"] == split]
            out = self._out[name]
            for row in part.itertuples(index=False):
                messages = json.loads(row.messages)
                word = LABELS[0] if row.label == 1 else LABELS[1]
                if name.startswith("sft"):
                    record = {"messages": [*messages, {"role": "assistant", "content": row.answer}]}
                else:
                    record = {"messages": messages, "label": word, "session_id": row.session_id}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.counts[name] += len(part)
            self.ids[name] += part["session_id"].astype(str).tolist()

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            for out in self._out.values():
                out.close()
            with atomic_path(self.folder / SESSION_IDS) as tmp:
                Path(tmp).write_text(json.dumps(self.ids), encoding="utf-8")
        self._stack.__exit__(kind, value, traceback)


def _records(path: Path):
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def leaked_test_sessions(folder: Path, test_ids: set[str]) -> list[str]:
    """Session ids of the test split that a training or validation file holds (must be none).

    A leak is the same session on both sides, by id: the RFT files carry it in each record, the
    SFT files in ``session_ids.json`` beside them. Two sessions with the same events in two
    splits are not a leak (data sets repeat sessions): :func:`repeated_test_prompts` counts
    them.
    """
    folder = Path(folder)
    listed = json.loads((folder / SESSION_IDS).read_text(encoding="utf-8"))
    leaked = []
    for name in FILES:
        if name == "test.jsonl":
            continue
        in_file, records = [], 0
        for record in _records(folder / name):
            records += 1
            if record.get("session_id") is not None:
                in_file.append(record["session_id"])
        if len(in_file) < records:  # SFT records: the ids written beside them
            in_file += listed.get(name, [])[: records - len(in_file)]
        leaked += [sid for sid in in_file if sid in test_ids]
    return leaked


def repeated_test_prompts(folder: Path) -> int:
    """Test sessions whose prompt equals a training or validation session's: the data repeats
    sessions (HDFS sequence sets do, hundreds of times). Not a leak; reported, never blocked."""
    folder = Path(folder)

    def user_turn(record: dict) -> bytes:
        text = next(m["content"] for m in record["messages"] if m["role"] == "user")
        return hashlib.sha256(text.encode()).digest()

    seen = {
        user_turn(r)
        for name in ("rft_train.jsonl", "rft_valid.jsonl")
        for r in _records(folder / name)
    }
    return sum(user_turn(r) in seen for r in _records(folder / "test.jsonl"))


# ---- the reward: standard library only, its source is the OpenAI python grader ----

REWARD_WEIGHTS = {
    "correct": 1.0,  # the right label in valid JSON matching the schema
    "format_only": 0.2,  # valid JSON, the wrong label
    "label_only": 0.3,  # the right label, the format broken (prose, extra keys, fences)
    "long_output": 0.5,  # multiplier: more than 600 characters (prose around the answer)
    "repetition": 0.5,  # multiplier: the same line or 4-word run at least 3 times
}


def reward(completion, label, weights=None):
    """Score a completion against a session's label (``"anomalous"`` or ``"normal"``), 0 to 1.

    Full credit for the right label in JSON matching the schema (``label`` and ``reason``,
    nothing else); partial credit for valid JSON with the wrong label, or for the right label
    in a broken format (exactly one of the two words, as a word); nothing for an empty answer.
    Degenerate output (long prose, repetition) multiplies the score down.
    """
    import json as _json
    import re as _re

    w = dict(REWARD_WEIGHTS_DEFAULT)
    w.update(weights or {})
    text = (completion or "").strip()
    if not text:
        return 0.0
    body = _re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    parsed = None
    try:
        parsed = _json.loads(body)
    except ValueError:
        parsed = None
    valid = (
        isinstance(parsed, dict)
        and set(parsed) == {"label", "reason"}
        and parsed["label"] in ("anomalous", "normal")
        and isinstance(parsed["reason"], str)
        and body == text
    )
    if valid:
        score = w["correct"] if parsed["label"] == label else w["format_only"]
    else:
        words = set(_re.findall(r"\b(anomalous|normal)\b", text.lower()))
        score = w["label_only"] if words == {label} else 0.0
    if len(text) > 600:
        score *= w["long_output"]
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    tokens = text.split()[:400]
    runs = [" ".join(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
    repeated = any(lines.count(x) >= 3 for x in set(lines)) or any(
        runs.count(r) >= 3 for r in set(runs)
    )
    if repeated:
        score *= w["repetition"]
    return float(score)


# reward() reads its defaults under this name: python_grader() defines it in the grader's
# source, where REWARD_WEIGHTS (with the config's overrides) is written out as a literal
REWARD_WEIGHTS_DEFAULT = REWARD_WEIGHTS


def python_grader(weights: dict | None = None, name: str = "session_label") -> dict:
    """An OpenAI ``python`` grader whose source is :func:`reward` itself.

    The grader reads the completion from ``sample["output_text"]`` and the label from
    ``item["label"]`` (the ``label`` field of every RFT line).
    """
    merged = {**REWARD_WEIGHTS, **(weights or {})}
    source = (
        f"REWARD_WEIGHTS_DEFAULT = {json.dumps(merged)}\n\n\n"
        + inspect.getsource(reward)
        + "\n\ndef grade(sample, item):\n"
        + '    return reward(sample.get("output_text") or "", item["label"])\n'
    )
    return {"type": "python", "name": name, "source": source}


def multi_grader(weights: dict | None = None, name: str = "session_label") -> dict:
    """A ``multi`` grader of ``string_check``s, where python graders are not available.

    It gives the ``correct`` weight to the right label and the ``format_only`` weight to a
    wrong but valid one; it cannot see a broken format's label or degenerate output, which
    :func:`reward` also scores.
    """
    w = {**REWARD_WEIGHTS, **(weights or {})}

    def check(grader_name: str, reference: str) -> dict:
        return {
            "type": "string_check",
            "name": grader_name,
            "input": "{{ sample.output_json.label }}",
            "reference": reference,
            "operation": "eq",
        }

    return {
        "type": "multi",
        "name": name,
        "graders": {
            "right": check("right", "{{ item.label }}"),
            "is_anomalous": check("is_anomalous", "anomalous"),
            "is_normal": check("is_normal", "normal"),
        },
        "calculate_output": (
            f"{w['correct']} * right + {w['format_only']} * (1 - right) * "
            "(is_anomalous + is_normal)"
        ),
    }


def parse_answer(text: str) -> str | None:
    """The label of an answer in the schema, or None (never guessed from prose)."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", (text or "").strip())
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and parsed.get("label") in LABELS:
        return str(parsed["label"])
    return None

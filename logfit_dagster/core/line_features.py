"""What the LOOK/SKIP line classifier sees of a line: its shape, its normalized words, 17 signals.

A line's **shape** is the raw line with its identifiers and digits masked: UUIDs become
``<uuid>``, hex strings (``0x...`` or 8+ hex digits) ``<hex>``, every digit run ``0``. Lines that
differ only in timestamps, ids or counters share a shape, so a log of a million lines has only
thousands of shapes, and each is scored once. The character n-grams and the 17 handcrafted
features are computed on the shape; the word n-grams on the **normalized** shape, in which IPs,
numbers and paths are placeholders too.

Shapes are computed column-wise: digits are mapped to ``0`` over the whole Arrow data buffer
with numpy, the column is dictionary-encoded, and the RE2 masks run only over its distinct
values. Masking a digit-mapped line gives the same shape as masking the line itself (digits and
``0`` are both hex digits and word characters), so the shortcut changes nothing.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Bumped whenever shapes, normalization or the handcrafted features change; stored in exports.
FEATURE_VERSION = "line-features-1"
# A line's shape is taken from this many characters at most (see shape_column).
MAX_SHAPE_CHARS = 4096

SHAPE_MASKS: tuple[tuple[str, str], ...] = (
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<uuid>"),
    (r"\b0[xX][0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b", "<hex>"),
    (r"\d+", "0"),
)

NORMALIZE_MASKS: tuple[tuple[str, str], ...] = (
    (r"\b0\.0\.0\.0(?::0)?\b", " <ip> "),
    (r"(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}[/\\]?", " <path> "),
    (r"\b0(?:[.,:]0)*\b", " <num> "),
)

NEGATIVE_WORDS = re.compile(
    r"(?i)\b(?:unable|cannot|can't|could not|couldn't|timeout|timed out|denied|refused|"
    r"reject(?:ed)?|panic|oom|out of memory|killed|abort(?:ed)?|corrupt(?:ed)?|invalid|"
    r"unreachable|lost|crash(?:ed)?|segfault|deadlock|unexpected|illegal|broken|overflow|"
    r"exceeded|not found|no such|unavailable|disconnect(?:ed)?|mismatch|violation|"
    r"interrupt(?:ed)?|unknown|bad|error|errors|fail(?:s|ed|ure|ing)?|exception)\b"
)
LEVEL = re.compile(
    r"(?i)\b(?:error|fatal|critical|crit|severe|warn|warning|exception|fail|failed|failure)\b"
)
STACK = re.compile(r"^\s+at [\w$.<>]+|Traceback|Caused by:|Exception in thread")
PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}")
REPEATED_PUNCT = re.compile(r"([!?.\-=*#~])\1{2,}")
KEY_VALUE = re.compile(r"\b\w+\s*[=:]\s*[^\s,;]")
STRUCT_PUNCT = re.compile(r"[{}\[\]()<>|;:=,]")
ALLCAPS = re.compile(r"\b[A-Z][A-Z_]{1,}\b")
EMPHASIS = re.compile(r"!+|\*{2,}|>{3,}")
WORD = re.compile(r"\w+")

HAND_FEATURES = (
    "has_level",
    "has_stack",
    "has_negative",
    "n_negative",
    "has_path",
    "n_hex",
    "has_repeated_punct",
    "n_kv",
    "uppercase_ratio",
    "digit_ratio",
    "struct_punct",
    "word_count",
    "n_allcaps",
    "unique_ratio",
    "leading_ws",
    "n_emphasis",
    "length",
)


def handcrafted(shape: str) -> list[float]:
    """The 17 handcrafted features of one shape, in ``HAND_FEATURES`` order."""
    length = len(shape)
    letters = sum(c.isalpha() for c in shape)
    words = WORD.findall(shape)
    n_negative = len(NEGATIVE_WORDS.findall(shape))
    return [
        float(bool(LEVEL.search(shape))),
        float(bool(STACK.search(shape))),
        float(n_negative > 0),
        float(n_negative),
        float(bool(PATH.search(shape))),
        float(shape.count("<hex>") + shape.count("<uuid>")),
        float(bool(REPEATED_PUNCT.search(shape))),
        float(len(KEY_VALUE.findall(shape))),
        sum(c.isupper() for c in shape) / letters if letters else 0.0,
        shape.count("0") / length if length else 0.0,
        float(len(STRUCT_PUNCT.findall(shape))),
        float(len(words)),
        float(len(ALLCAPS.findall(shape))),
        len(set(words)) / len(words) if words else 0.0,
        float(length - len(shape.lstrip())),
        float(len(EMPHASIS.findall(shape))),
        float(np.log1p(length)),
    ]


def handcrafted_matrix(shapes: list[str]) -> np.ndarray:
    return np.array([handcrafted(s) for s in shapes], dtype=np.float64).reshape(
        len(shapes), len(HAND_FEATURES)
    )


def normalize(shape: str) -> str:
    """The normalized shape the word n-grams are taken from (a single line)."""
    for pattern, token in NORMALIZE_MASKS:
        shape = re.sub(pattern, token, shape)
    return shape


def normalize_column(shapes: pa.Array) -> pa.Array:
    for pattern, token in NORMALIZE_MASKS:
        shapes = pc.replace_substring_regex(shapes, pattern, token)
    return shapes


def _map_digits(array: pa.StringArray) -> pa.StringArray:
    """Every ASCII digit replaced by '0', over the whole data buffer at once."""
    validity, offsets, data = array.buffers()
    if data is None:
        return array
    raw = np.frombuffer(data, dtype=np.uint8).copy()
    np.putmask(raw, (raw - np.uint8(0x31)) < 9, np.uint8(0x30))  # '1'..'9' become '0'
    return pa.StringArray.from_buffers(
        len(array), offsets, pa.py_buffer(raw), validity, array.null_count, array.offset
    )


def shape_column(lines: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """The distinct shapes of ``lines`` and, for each line, the index of its shape.

    A shape is taken from a line's first :data:`MAX_SHAPE_CHARS` characters: what a classifier
    needs is there, and a pathological line (a 50 MB dump on one line) costs no more than that.
    """
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks() if lines.num_chunks != 1 else lines.chunk(0)
    lines = pc.fill_null(lines.cast(pa.large_string()), "")
    lines = pc.utf8_slice_codeunits(lines, 0, MAX_SHAPE_CHARS).cast(pa.string())
    encoded = pc.dictionary_encode(_map_digits(lines))
    distinct = encoded.dictionary
    for pattern, token in SHAPE_MASKS:
        distinct = pc.replace_substring_regex(distinct, pattern, token)
    # masking can merge distinct digit-mapped lines into one shape: encode again
    merged = pc.dictionary_encode(distinct)
    indices = merged.indices.to_numpy(zero_copy_only=False)[
        encoded.indices.to_numpy(zero_copy_only=False)
    ]
    return merged.dictionary, indices


def shape_of(line: str) -> str:
    """The shape of one line (the column-wise path gives the same)."""
    line = line[:MAX_SHAPE_CHARS]
    for pattern, token in SHAPE_MASKS:
        line = re.sub(pattern, token, line)
    return line

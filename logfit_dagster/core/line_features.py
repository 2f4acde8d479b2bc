"""What the LOOK/SKIP line classifier sees of a line: its shape, its normalized words, 17 signals.

A line's **shape** is the raw line with its identifiers and digits masked: UUIDs become
``<uuid>`` (also before an underscore, as in ``<uuid>_del``), hex strings (``0x...``, or 6+ hex
characters with a letter) ``<hex>``, every number ``0`` whatever its length, and runs of blanks
inside the line one space (padded columns).
Lines that differ only in timestamps, ids or counters share a shape, so a log of a million lines has only
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
FEATURE_VERSION = "line-features-3"
# A line's shape is taken from this many characters at most (see shape_column).
MAX_SHAPE_CHARS = 4096

SHAPE_MASKS: tuple[tuple[str, str], ...] = (
    # a UUID ends at a word boundary or an underscore (``/instances/<uuid>_del``): RE2 has no
    # look-ahead and ``\b`` does not fire before ``_``, so the underscore is matched and kept
    (
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(\b|_)",
        "<uuid>\\1",
    ),
    (r"\b0[xX][0-9a-fA-F]+\b", "<hex>"),
    # a number is 0 whatever its length: 7 and 8 digits must not make two shapes
    (r"\b\d+\b", "0"),
    # what is left of 6+ hex characters holds a letter: an id such as 9f4ef63 or a64f992
    (r"\b[0-9a-fA-F]{6,}\b", "<hex>"),
    (r"\d+", "0"),
    # columns padded to a width: a longer number must not shift the shape (leading blanks,
    # the indentation of a stack trace, are kept)
    (r"([^ \t])[ \t]{2,}", "\\1 "),
)

NORMALIZE_MASKS: tuple[tuple[str, str], ...] = (
    (r"\b0\.0\.0\.0(?::0)?\b", " <ip> "),
    (r"(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}[/\\]?", " <path> "),
    (r"\b0(?:[.,:]0)*\b", " <num> "),
)

# The handcrafted features' patterns, run by RE2 over a column of shapes (see handcrafted_matrix).
NEGATIVE_WORDS = (
    r"(?i)\b(?:unable|cannot|can't|could not|couldn't|timeout|timed out|denied|refused|"
    r"reject(?:ed)?|panic|oom|out of memory|killed|abort(?:ed)?|corrupt(?:ed)?|invalid|"
    r"unreachable|lost|crash(?:ed)?|segfault|deadlock|unexpected|illegal|broken|overflow|"
    r"exceeded|not found|no such|unavailable|disconnect(?:ed)?|mismatch|violation|"
    r"interrupt(?:ed)?|unknown|bad|error|errors|fail(?:s|ed|ure|ing)?|exception)\b"
)
LEVEL = r"(?i)\b(?:error|fatal|critical|crit|severe|warn|warning|exception|fail|failed|failure)\b"


def _classes(ascii_only: bool) -> dict[str, str]:
    """The character classes of the patterns below: Unicode ones (letters, digits and the
    underscore of any script, as Python's ``\\w``), or their ASCII equals, which RE2 compiles
    far faster and which match the same in a batch of ASCII shapes (the usual batch)."""
    if ascii_only:
        return {"word": r"[A-Za-z0-9_]", "letter": "[A-Za-z]", "upper": "[A-Z]"}
    return {"word": r"[\pL\pN_]", "letter": r"\pL", "upper": r"\p{Lu}"}


def _word_patterns(word: str) -> dict[str, str]:
    return {
        "stack": rf"^\s+at (?:{word}|[$.<>])+|Traceback|Caused by:|Exception in thread",
        "path": rf"(?:[A-Za-z]:)?(?:[/\\](?:{word}|[.\-])+){{2,}}",
        "key_value": rf"\b{word}+\s*[=:]\s*[^\s,;]",
        "not_word": rf"(?:[^{word[1:-1]}])+",
    }


REPEATED_PUNCT = r"!!!|\?\?\?|\.\.\.|---|===|\*\*\*|###|~~~"
STRUCT_PUNCT = r"[{}\[\]()<>|;:=,]"
ALLCAPS = r"\b[A-Z][A-Z_]{1,}\b"
EMPHASIS = r"!+|\*{2,}|>{3,}"

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


def handcrafted_matrix(shapes: list[str] | pa.Array) -> np.ndarray:
    """The 17 handcrafted features of each shape, in ``HAND_FEATURES`` order, column-wise."""
    column = shapes if isinstance(shapes, pa.Array) else pa.array(list(shapes), pa.string())
    column = pc.fill_null(column, "")

    def number(array) -> np.ndarray:
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)

    def count(pattern: str) -> np.ndarray:
        # matches counted by replacing each with a NUL: pyarrow's count_substring_regex
        # searches again from each match's end without what came before, so a ``\b`` there
        # matches where it should not
        marked = pc.replace_substring_regex(column, f"(?:{pattern})", "\x00")
        return number(pc.count_substring(marked, "\x00")) - nuls

    def has(pattern: str) -> np.ndarray:
        return number(pc.match_substring_regex(column, pattern))

    ascii_only = bool(pc.all(pc.string_is_ascii(column)).as_py() is not False)
    classes = _classes(ascii_only)
    patterns = _word_patterns(classes["word"])
    nuls = number(pc.count_substring(column, "\x00"))
    length = number(pc.utf8_length(column))
    letters = count(classes["letter"])
    words, distinct_words = _word_counts(column, patterns["not_word"])
    n_negative = count(NEGATIVE_WORDS)
    with np.errstate(divide="ignore", invalid="ignore"):
        features = [
            has(LEVEL),
            has(patterns["stack"]),
            (n_negative > 0).astype(np.float64),
            n_negative,
            has(patterns["path"]),
            number(pc.count_substring(column, "<hex>"))
            + number(pc.count_substring(column, "<uuid>")),
            has(REPEATED_PUNCT),
            count(patterns["key_value"]),
            np.where(letters > 0, count(classes["upper"]) / letters, 0.0),
            np.where(length > 0, number(pc.count_substring(column, "0")) / length, 0.0),
            count(STRUCT_PUNCT),
            words,
            count(ALLCAPS),
            np.where(words > 0, distinct_words / words, 0.0),
            length - number(pc.utf8_length(pc.utf8_ltrim_whitespace(column))),
            count(EMPHASIS),
            np.log1p(length),
        ]
    return np.column_stack(features).reshape(len(column), len(HAND_FEATURES))


def _word_counts(column: pa.Array, not_word: str) -> tuple[np.ndarray, np.ndarray]:
    """Words, and distinct words, of each string (words split at runs of ``not_word``)."""
    pieces = pc.split_pattern_regex(column, not_word)
    flat = pc.list_flatten(pieces)
    rows = np.asarray(pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False))
    keep = np.asarray(pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False))
    rows = rows[keep]
    codes = np.asarray(
        pc.dictionary_encode(flat.filter(pa.array(keep))).indices.to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    n = len(column)
    words = np.bincount(rows, minlength=n).astype(np.float64)
    pairs = np.unique(rows.astype(np.int64) * (int(codes.max(initial=0)) + 1) + codes)
    distinct = np.bincount(pairs // (int(codes.max(initial=0)) + 1), minlength=n)
    return words, distinct.astype(np.float64)


def handcrafted(shape: str) -> list[float]:
    """The 17 handcrafted features of one shape (the column-wise path, for one)."""
    return handcrafted_matrix([shape])[0].tolist()


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


def shape_column(
    lines: pa.Array | pa.ChunkedArray, max_chars: int = MAX_SHAPE_CHARS
) -> tuple[pa.Array, np.ndarray]:
    """The distinct shapes of ``lines`` and, for each line, the index of its shape.

    A shape is taken from a line's first ``max_chars`` characters (:data:`MAX_SHAPE_CHARS` by
    default; a model records the cut it was trained with): what a classifier needs is there,
    and a pathological line (a 50 MB dump on one line) costs no more than that.
    """
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks() if lines.num_chunks != 1 else lines.chunk(0)
    lines = pc.fill_null(lines.cast(pa.large_string()), "")
    lines = pc.utf8_slice_codeunits(lines, 0, max_chars).cast(pa.string())
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


def shape_of(line: str, max_chars: int = MAX_SHAPE_CHARS) -> str:
    """The shape of one line (the column-wise path gives the same)."""
    line = line[:max_chars]
    for pattern, token in SHAPE_MASKS:
        line = re.sub(pattern, token, line)
    return line

"""Masking of variable parts of log content, applied column-wise with RE2 through pyarrow.

Masked content is what Drain3 mines: two lines that differ only in a block id, an address or a
number get the same masked form, so real logs collapse to few distinct forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class MaskRule:
    """One masking rule: an RE2 pattern and the token that replaces each match."""

    name: str
    pattern: str
    token: str
    #: Times the rule runs: a rule that consumes the separator after its match needs two
    #: passes to catch every one of several matches joined by single separators.
    passes: int = 1


# Order matters: the specific forms go before the generic number rule that would eat them.
DEFAULT_MASKS: tuple[MaskRule, ...] = (
    MaskRule(
        "uuid",
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
        "<UUID>",
    ),
    MaskRule("block_id", r"blk_-?\d+", "<BLK>"),
    MaskRule("ip", r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b", "<IP>"),
    # numbers joined by underscores (``_task_200811092011_6387_m_000886_0``): RE2 has no
    # look-around and ``\b`` does not fire beside ``_``, so the separator is matched and kept
    MaskRule("underscored_number", r"(_)-?\d+(_|\b)", r"\1<NUM>\2", passes=2),
    MaskRule("hex", r"\b0[xX][0-9a-fA-F]+\b|\b[0-9a-fA-F]{12,}\b", "<HEX>"),
    MaskRule("number", r"\b-?\d+(?:\.\d+)?\b", "<NUM>"),
)


def mask_column(content: pa.Array | pa.ChunkedArray, rules: tuple[MaskRule, ...]) -> pa.Array:
    """Apply every rule, in order, to a string column.

    Args:
        content: the content column (strings; nulls stay null).
        rules: the masking rules.

    Returns:
        The masked column, same length.
    """
    masked = content
    for rule in rules:
        for _ in range(rule.passes):
            masked = pc.replace_substring_regex(
                masked, pattern=rule.pattern, replacement=rule.token
            )
    if isinstance(masked, pa.ChunkedArray):
        masked = masked.combine_chunks()
    return masked


def mask_text(text: str, rules: tuple[MaskRule, ...] = DEFAULT_MASKS) -> str:
    """Mask one string (for interactive use and tests)."""
    return mask_column(pa.array([text]), rules)[0].as_py()

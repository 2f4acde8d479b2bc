"""A pathological line (megabytes on one line) costs what its first few thousand characters
cost wherever lines are turned into features, templates or prompts."""

import pyarrow as pa

from logfit_dagster.core.labeling.prompt import MAX_PROMPT_LINE_CHARS, Window, render_window
from logfit_dagster.core.line_features import MAX_SHAPE_CHARS, shape_column, shape_of
from logfit_dagster.core.templates import MAX_TEMPLATE_CHARS, TemplateMiner, profile_for

LONG = "2024-01-01 10:00:01 ERROR dump " + "abc=123 " * 700_000  # 5.6 MB


def test_a_shape_reads_at_most_its_first_characters():
    shapes, indices = shape_column(pa.array(["INFO ok", LONG, "INFO ok"]))
    assert list(indices) == [0, 1, 0]
    long_shape = shapes[1].as_py()
    assert len(long_shape) <= MAX_SHAPE_CHARS
    assert long_shape == shape_of(LONG)  # the one-line path agrees


def test_a_template_is_mined_from_the_first_characters(tmp_path):
    miner = TemplateMiner(profile_for("generic"), tmp_path / "state.json")
    mined = miner.mine(pa.array(["job 1 started", LONG]))
    assert all(len(t) <= MAX_TEMPLATE_CHARS for t in mined.templates.values())
    assert len(mined.template_ids) == 2


def test_a_prompt_shows_a_long_line_cut_and_says_so():
    window = Window("app", 1, ("INFO ok", LONG), 2)
    text = render_window(window)
    assert "1: INFO ok" in text
    cut = len(LONG) - MAX_PROMPT_LINE_CHARS
    assert f"… [{cut} more characters]" in text
    assert len(text) < MAX_PROMPT_LINE_CHARS + 200

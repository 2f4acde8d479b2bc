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


def _tiny_export(max_chars: int | None = None) -> dict:
    import pandas as pd

    from logfit_dagster.core.line_model import LineModelParams, export_model, fit, training_rows

    lines = pd.DataFrame(
        {
            "source": ["a", "b"] * 10,
            "raw": [
                f"ERROR disk {i} failed" if i % 2 else f"INFO heartbeat {i} ok" for i in range(20)
            ],
            "label": ["LOOK" if i % 2 else "SKIP" for i in range(20)],
        }
    )
    rows = training_rows(lines, max_chars or MAX_SHAPE_CHARS)
    extra = {"max_shape_chars": max_chars} if max_chars else None
    return export_model(fit(rows, LineModelParams(C=1.0)), extra)


def test_classify_scores_a_line_longer_than_the_cut_writes_it_whole_and_counts_it(tmp_path):
    import pyarrow.parquet as pq

    from logfit_dagster.core.classify import classify_file
    from logfit_dagster.core.line_model import LineScorer

    log = tmp_path / "app.log"
    log.write_text(f"INFO heartbeat 1 ok\n{LONG}\nERROR disk 2 failed\n")
    out = tmp_path / "scored.parquet"
    stats = classify_file(log, LineScorer(_tiny_export()), out, max_line_chars=10_000_000)
    table = pq.read_table(out)
    assert stats.lines == 3 and stats.long_lines == 1 and stats.max_chars == MAX_SHAPE_CHARS
    assert table.column("raw")[1].as_py() == LONG  # kept whole
    assert 0.0 <= table.column("probability")[1].as_py() <= 1.0


def test_the_cut_travels_with_the_model():
    from logfit_dagster.core.line_model import LineScorer

    scorer = LineScorer(_tiny_export(max_chars=24))
    assert scorer.max_chars == 24
    # lines that differ only after the 24th character are one shape to this model
    same = scorer.score_lines(
        ["ERROR disk 9 failed xxxx tail one", "ERROR disk 9 failed xxxx other"]
    )
    assert same[0] == same[1] and scorer.shapes_scored == 1
    assert LineScorer(_tiny_export()).max_chars == MAX_SHAPE_CHARS  # older exports: the default


def test_a_line_past_the_read_cap_is_read_through_and_counted_not_held(tmp_path):
    import pyarrow.parquet as pq

    from logfit_dagster.core.classify import classify_file
    from logfit_dagster.core.line_model import LineScorer

    log = tmp_path / "app.log"
    log.write_text(f"INFO heartbeat 1 ok\n{LONG}\nERROR disk 2 failed\n" + "x" * 3000)
    out = tmp_path / "scored.parquet"
    stats = classify_file(log, LineScorer(_tiny_export()), out, max_line_chars=1000)
    table = pq.read_table(out).to_pydict()
    assert stats.lines == 4 and stats.cut_lines == 2 and stats.first_cut_line == 2
    assert table["raw"][1] == LONG[:1000] and table["cut_bytes"][1] == len(LONG) - 1000
    assert table["raw"][3] == "x" * 1000 and table["cut_bytes"][3] == 2000
    assert table["cut_bytes"][0] == table["cut_bytes"][2] == 0
    assert stats.cut_bytes == len(LONG) - 1000 + 2000

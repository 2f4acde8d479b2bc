"""Past the ingest, batch by batch: the labels, the line models' training set and the LLM
examples read and written in batches give what the whole-table route gives, so a source of any
length goes through in bounded memory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from logfit_dagster.core.labeling.base import LABEL_SCHEMA, LabelStats, label_batches, label_source
from logfit_dagster.core.labeling.cache import LabelCache
from logfit_dagster.core.labeling.offline import RecordedLabeler, RuleLabeler
from logfit_dagster.core.line_model import collect_labelled_lines, training_rows
from logfit_dagster.core.synthetic import generate


def _batches(table: pa.Table, rows: int):
    return (table.slice(start, rows) for start in range(0, table.num_rows, rows))


def _source_lines() -> list[str]:
    lines = generate("javaapp", 700, 5).lines + generate("bgl", 600, 6).lines
    # lines the column route hands to Python's regex: non-ASCII, and a vertical tab
    return lines + ["café: connection refused", "vt\x0bERROR here", "plain ü line", ""]


@pytest.mark.parametrize("labeler", ["rule", "recorded"])
def test_labels_in_columns_equal_the_windows_route(tmp_path, labeler):
    lines = _source_lines()
    if labeler == "rule":
        built = RuleLabeler()
    else:
        records = tmp_path / "recorded.jsonl"
        records.write_text(
            "".join(
                json.dumps(
                    {
                        "system": "svc",
                        "line_number": i + 1,
                        "raw_line": line,
                        "label": "LOOK" if i % 3 == 0 else "SKIP",
                        "reason": f"r{i}",
                    }
                )
                + "\n"
                for i, line in enumerate(lines)
                if i % 5  # every fifth line never recorded: it stays unlabelled
            )
        )
        built = RecordedLabeler([records])
    windows, window_stats = label_source(
        "svc", lines, built, cache=LabelCache(tmp_path / "cache.sqlite"), window_size=50
    )
    raw = pa.table(
        {"line_number": pa.array(range(1, len(lines) + 1), pa.int64()), "raw": pa.array(lines)}
    )
    stats = LabelStats()
    seen = []
    columns = pa.concat_tables(
        label_batches("svc", _batches(raw, 97), built, "v1", stats, on_batch=seen.append)
    )
    assert columns.schema == LABEL_SCHEMA and len(seen) == -(-len(lines) // 97)
    got = columns.to_pandas()
    assert _plain(got["label"]) == _plain(windows["label"])
    assert _plain(got["reason"]) == _plain(windows["reason"])
    assert got["line_number"].tolist() == list(range(1, len(lines) + 1))
    assert stats.plan == "columns" and stats.lines == len(lines)
    assert stats.unlabeled_lines == window_stats.unlabeled_lines == int(got["label"].isna().sum())
    labelled = got["label"].notna()
    assert (got.loc[labelled, "label_source"] == "direct").all()
    assert got.loc[~labelled, "label_source"].isna().all()
    assert set(got["labeler"]) == {built.name} and set(got["prompt_version"]) == {"v1"}
    if labeler == "recorded":
        assert stats.unlabeled_lines > 0  # the lines never recorded, not guessed


def _plain(values: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in values]


def _labelled_lines() -> pd.DataFrame:
    rows = []
    for source, kind, n, seed in (("a", "javaapp", 900, 1), ("b", "bgl", 400, 2)):
        log = generate(kind, n, seed)
        for line, bad in zip(log.lines, log.line_labels, strict=True):
            rows.append((source, line, "LOOK" if bad else "SKIP"))
    # one shape labelled both ways: each (shape, label) group keeps its own count
    rows += [
        ("b", f"RAS KERNEL INFO cache parity {i}", "LOOK" if i % 2 else "SKIP") for i in range(60)
    ]
    return pd.DataFrame(rows, columns=["source", "raw", "label"])


def test_collected_lines_train_as_every_line_does_and_sample_each_source():
    lines = _labelled_lines()
    table = pa.Table.from_pandas(lines, preserve_index=False)
    collected = collect_labelled_lines(_batches(table, 128), per_source=150, seed=3)
    again = collect_labelled_lines(_batches(table, 333), per_source=150, seed=3)

    def key(rows):
        return rows.sort_values(["source", "shape", "y"]).reset_index(drop=True)[
            ["source", "shape", "y", "weight"]
        ]

    # the distinct rows and their line counts are those of every line, whatever the batches
    pd.testing.assert_frame_equal(key(training_rows(collected)), key(training_rows(lines)))
    pd.testing.assert_frame_equal(key(training_rows(again)), key(training_rows(lines)))
    assert collected["weight"].sum() == len(lines)
    sampled = collected[collected["sampled"]]
    assert sampled.groupby("source").size().to_dict() == {"a": 150, "b": 150}
    # a fair sample: real lines of the source, each once, in the lines' own order
    for source, part in sampled.groupby("source"):
        pool = lines[lines["source"] == source]
        assert part["raw"].isin(set(pool["raw"])).all()
        remaining = iter(pool["raw"].tolist())
        assert all(any(r == x for x in remaining) for r in part["raw"])  # a subsequence
    # a source within the cap is kept whole, as it is
    whole = collect_labelled_lines(_batches(table, 128), per_source=10_000)
    assert whole["sampled"].all() and len(whole) == len(lines)
    assert whole["raw"].tolist() == lines["raw"].tolist()


def test_collected_lines_refuse_unlabelled_rows():
    from logfit_dagster.core.errors import TrainingDataError

    table = pa.table({"source": ["a", "a"], "raw": ["x", "y"], "label": ["LOOK", None]})
    with pytest.raises(TrainingDataError, match="unlabeled"):
        collect_labelled_lines([table])
    empty = collect_labelled_lines([])
    assert empty.empty and list(empty.columns) == ["source", "raw", "label", "weight", "sampled"]
    assert np.issubdtype(empty["weight"].dtype, np.integer)


def test_examples_in_batches_equal_the_whole_table_and_a_failure_keeps_the_old_files(tmp_path):
    import logfit_dagster.core.llm_sessions as ls

    n = 230
    ids = [f"s{i:03d}" for i in range(n)]
    sessions = pd.DataFrame(
        {
            "session_id": ids,
            "text": [f"INFO app: step {i}\nWARN app: slow {i % 7}" for i in range(n)],
            "n_lines": 2,
        }
    )
    labels = pd.DataFrame(
        {"session_id": ids[:-5], "label": [int(i % 9 == 0) for i in range(n - 5)]}
    )
    splits = pd.DataFrame(
        {
            "session_id": ids,
            "split": (["train"] * 6 + ["dev", "test"]) * (n // 8) + ["test"] * (n % 8),
        }
    )
    params = ls.ExampleParams(normal_per_anomalous=2, seed=4)
    whole, whole_stats = ls.build_examples(sessions, labels, splits, params)
    stats: dict = {}
    pieces = (sessions.iloc[i : i + 37] for i in range(0, n, 37))
    streamed = list(
        ls.example_batches(pieces, sessions["session_id"], labels, splits, params, stats)
    )
    assert len(streamed) == -(-n // 37)
    pd.testing.assert_frame_equal(pd.concat(streamed, ignore_index=True), whole)
    assert stats == whole_stats and stats["unlabelled_sessions_left_out"] == 5
    with ls.JsonlFiles(tmp_path) as files:
        for piece in streamed:
            files.write(piece)
    assert files.counts == ls.write_jsonl(whole, tmp_path / "whole")
    for name in ls.FILES:
        assert (tmp_path / name).read_text() == (tmp_path / "whole" / name).read_text()
    before = {name: (tmp_path / name).read_text() for name in ls.FILES}
    with pytest.raises(RuntimeError), ls.JsonlFiles(tmp_path) as files:
        files.write(streamed[0])
        raise RuntimeError("killed midway")
    assert {name: (tmp_path / name).read_text() for name in ls.FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("kind", ["hdfs", "openstack", "bgl", "javaapp"])
def test_a_synthetic_source_is_generated_and_written_a_chunk_at_a_time(tmp_path, kind):
    from logfit_dagster.core.ingest import write_synthetic_chunks
    from logfit_dagster.core.synthetic import generate_chunks

    chunks = list(generate_chunks(kind, 2_500, 11, chunk_lines=1_000))
    assert [len(c.lines) for c in chunks] == [1_000, 1_000, 500]
    # the first chunk is the source a short one would be: the default sources are unchanged
    assert chunks[0].lines == generate(kind, 1_000, 11).lines
    # each chunk starts after the last ended: time never runs back at a chunk's edge
    stamp = {
        "hdfs": lambda line: line[:13],
        "openstack": lambda line: " ".join(line.split(" ")[1:3]),
        "bgl": lambda line: int(line.split(" ")[1]),
        "javaapp": lambda line: line[:23] if line[:1].isdigit() else None,
    }[kind]
    stamps = [stamp(x) for c in chunks for x in c.lines]
    stamps = [x for x in stamps if x is not None]
    assert stamps == sorted(stamps)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.end > before.end
    # sessions never span chunks
    keys = [set(c.session_labels) for c in chunks]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1 :])
    n = write_synthetic_chunks(iter(chunks), tmp_path / "log", tmp_path / "labels.parquet")
    assert n == 2_500
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    assert labels["line_number"].tolist() == list(range(1, 2_501))
    assert labels["label"].tolist() == [x for c in chunks for x in c.line_labels]
    assert (tmp_path / "log").read_text().splitlines() == [x for c in chunks for x in c.lines]

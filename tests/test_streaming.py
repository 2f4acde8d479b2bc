"""The streaming ingest: batch by batch it gives what the whole-table functions give.

Each core function that reads a source in batches (parse and mine, sessions, ground truth) is
compared with its whole-table counterpart on generated sources, with batches, buckets and merge
pieces made small enough that every boundary is crossed; then the assets' stored outputs are
compared with the whole-table functions run on the same lines.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import logfit_dagster.core.sessions as sessions_module
from logfit_dagster.core.formats import get_line_format
from logfit_dagster.core.ground_truth import collect_ground_truth, collect_stored_ground_truth
from logfit_dagster.core.ingest import (
    ParseStats,
    parse_and_mine,
    parse_and_mine_batches,
    template_vocabulary_of_batches,
)
from logfit_dagster.core.registry import GroundTruthSpec, SessionSpec
from logfit_dagster.core.sessions import SessionStats, build_sessions, sessions_of_batches
from logfit_dagster.core.synthetic import generate
from logfit_dagster.core.tables import StoredTable, TableStream
from logfit_dagster.core.templates import TemplateMiner, profile_for


def _raw(lines: list[str]) -> pa.Table:
    return pa.table(
        {"line_number": pa.array(range(1, len(lines) + 1), pa.int64()), "raw": pa.array(lines)}
    )


def _parsed(lines: list[str], fmt_name: str, multiline: bool = False) -> pa.Table:
    fmt = get_line_format(fmt_name, multiline)
    return parse_and_mine(_raw(lines), fmt, TemplateMiner(profile_for(fmt_name)))[0]


class _Small(StoredTable):
    """A stored table read a few rows at a time, so that every batch boundary is crossed."""

    def __init__(self, path: Path, rows: int):
        super().__init__(path)
        self._rows = rows

    def batches(self, columns=None, rows=None):
        return super().batches(columns, self._rows)


def _stored(table: pa.Table, path: Path, rows: int) -> _Small:
    pq.write_table(table, path, row_group_size=max(1, rows // 2))
    return _Small(path, rows)


def _same(a: pd.DataFrame | pa.Table, b: pd.DataFrame | pa.Table) -> None:
    """Equal row for row, column for column (numbers compared as numbers, missing as missing)."""
    a = a.to_pandas() if isinstance(a, pa.Table) else a
    b = b.to_pandas() if isinstance(b, pa.Table) else b
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        left = a[column].map(_plain).tolist()
        right = b[column].map(_plain).tolist()
        assert left == right, column


def _plain(value):
    if hasattr(value, "tolist"):
        return [int(v) for v in value.tolist()]
    if isinstance(value, list):
        return [int(v) for v in value]
    if value is None or pd.isna(value):
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


@pytest.mark.parametrize(
    ("kind", "fmt_name", "multiline"),
    [("hdfs", "HDFS", False), ("bgl", "BGL", False), ("javaapp", "JavaApp", True)],
)
def test_parse_and_mine_in_batches_gives_the_whole_table_result(
    tmp_path, kind, fmt_name, multiline
):
    lines = ["a first line that is no record"] + generate(kind, 3000, 3).lines
    fmt = get_line_format(fmt_name, multiline)
    whole, whole_stats = parse_and_mine(_raw(lines), fmt, TemplateMiner(profile_for(fmt_name)))
    raw = _raw(lines)
    stats = ParseStats()
    streamed = TableStream(
        parse_and_mine_batches(
            (raw.slice(i, 251) for i in range(0, raw.num_rows, 251)),
            fmt,
            TemplateMiner(profile_for(fmt_name)),
            stats,
            tmp_path,
        )
    ).read_all()
    assert streamed.schema.equals(whole.schema)
    for name in whole.column_names:
        assert streamed.column(name).to_pylist() == whole.column(name).to_pylist(), name
    counts = ("templates", "distinct_forms", "parse_failures", "continuation_lines", "lines")
    assert [getattr(stats, c) for c in counts] == [getattr(whole_stats, c) for c in counts]
    assert list(tmp_path.iterdir()) == [], "the spill file is gone"
    vocabulary = template_vocabulary_of_batches(
        pa.Table.from_batches([b]) for b in streamed.to_batches(max_chunksize=300)
    )
    frame = whole.to_pandas()
    counted = frame.groupby("template_id")["line_number"].agg(["size", "min", "max"])
    assert len(vocabulary) == len(counted) and vocabulary["count"].is_monotonic_decreasing
    for row in vocabulary.itertuples():
        lines = frame[frame["template_id"] == row.template_id]
        assert (row.count, row.first_line, row.last_line) == tuple(counted.loc[row.template_id])
        assert row.template == lines["template"].iloc[0]


def _multi_id_hdfs() -> list[str]:
    """Synthetic HDFS with lines that name several blocks, one of them twice."""
    lines = []
    for i, line in enumerate(generate("hdfs", 2500, 4).lines):
        lines.append(line)
        if i % 37 == 0:
            head = line.split(": ")[0]
            lines.append(f"{head}: ask to delete blk_{i} blk_-{i} blk_{i} blk_99 blk_{i + 1}")
        if i % 101 == 0:
            lines.append("a line with no header that names blk_5")
    return lines


@pytest.mark.parametrize(
    ("lines", "fmt_name", "multiline", "spec"),
    [
        (_multi_id_hdfs(), "HDFS", False, SessionSpec(by="block_id")),
        (_multi_id_hdfs(), "HDFS", False, SessionSpec(by="regex", pattern=r"blk_-?\d+")),
        (generate("openstack", 3000, 3).lines, "OpenStack", False, SessionSpec(by="instance_id")),
        (
            ["no time here"] * 4 + generate("bgl", 3000, 2).lines + ["junk"] * 3,
            "BGL",
            False,
            SessionSpec(by="time_window", seconds=60),
        ),
        (generate("javaapp", 3000, 3).lines, "JavaApp", True, SessionSpec(by="window", size=7)),
    ],
    ids=["block_id", "regex", "instance_id", "time_window", "window"],
)
def test_sessions_in_buckets_give_the_whole_table_sessions(
    tmp_path, monkeypatch, lines, fmt_name, multiline, spec
):
    monkeypatch.setattr(sessions_module, "_MERGE_LINES", 50)  # many merge pieces
    parsed = _parsed(lines, fmt_name, multiline)
    want = build_sessions(parsed.to_pandas(), spec, fmt_name)
    stats = SessionStats()
    got = TableStream(
        sessions_of_batches(
            _stored(parsed, tmp_path / "parsed.parquet", 333),
            spec,
            fmt_name,
            stats,
            tmp_path,
            bucket_pairs=700,
        )
    ).read_all()
    _same(want, got)
    assert stats.sessions == len(want) > 0
    assert stats.lines_in_sessions == want["line_numbers"].explode().nunique()
    assert stats.pairs == want["n_lines"].sum()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parsed.parquet"], "spills are gone"


@pytest.mark.parametrize(
    ("kind", "fmt_name", "by", "provider"),
    [
        ("hdfs", "HDFS", "block_id", {"provider": "hdfs_blocks", "path": "blocks.csv"}),
        (
            "hdfs",
            "HDFS",
            "block_id",
            {"provider": "hdfs_blocks", "path": "blocks.csv", "unlisted": "normal"},
        ),
        ("openstack", "OpenStack", "instance_id", {"provider": "instance_list", "path": "i.txt"}),
        ("bgl", "BGL", "time_window", {"provider": "alert_field", "field": "Label"}),
        ("bgl", "BGL", "time_window", {"provider": "synthetic"}),
        ("hdfs", "HDFS", "block_id", {"provider": "none"}),
    ],
)
def test_stored_ground_truth_gives_the_whole_table_labels(tmp_path, kind, fmt_name, by, provider):
    from logfit_dagster.core.ingest import write_synthetic

    log = generate(kind, 3000, 3)
    write_synthetic(log, tmp_path / "x.log", tmp_path / "labels.parquet")
    parsed = _parsed(log.lines, fmt_name)
    sessions = build_sessions(parsed.to_pandas(), SessionSpec(by=by, seconds=300), fmt_name)
    ids = list(sessions["session_id"])
    (tmp_path / "blocks.csv").write_text(
        "BlockId,Label\n"
        + "".join(
            f"{s},{'Anomaly' if i % 7 == 0 else 'Normal'}\n" for i, s in enumerate(ids) if i % 3
        )
    )
    (tmp_path / "i.txt").write_text("".join(f"{s}\n" for i, s in enumerate(ids) if i % 5 == 0))
    keys = sessions[["session_id", "line_numbers"]].explode("line_numbers")
    keys = keys.rename(columns={"line_numbers": "line_number"}).astype({"line_number": "int64"})
    spec = GroundTruthSpec(**provider)
    want = collect_ground_truth(
        spec, parsed.to_pandas(), keys, tmp_path / "labels.parquet", tmp_path
    )
    got = collect_stored_ground_truth(
        spec,
        _stored(parsed, tmp_path / "parsed.parquet", 333),
        _stored(pa.Table.from_pandas(sessions, preserve_index=False), tmp_path / "s.parquet", 37),
        tmp_path / "labels.parquet",
        tmp_path,
    )
    _same(want.lines, got.lines.read_all())
    _same(want.sessions, got.sessions)
    assert got.labelled_lines == int(want.lines["label"].notna().sum())
    assert got.anomalous_lines == int((want.lines["label"] == 1).sum())
    assert got.has_labels == want.has_labels


def test_a_stream_that_fails_midway_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), target)

    def broken():
        yield pa.table({"x": [3]})
        raise ValueError("the source broke")

    with pytest.raises(ValueError, match="the source broke"):
        TableStream(broken()).write(target)
    assert pq.read_table(target).column("x").to_pylist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_a_part_of_a_folder_output_is_read_with_only_the_columns_asked(tmp_path):
    """``parts_of(..., columns=...)``: a reader of two columns of a million-line part never
    loads its text column."""
    import pandas as pd

    from logfit_dagster.assets._common import parts_of
    from logfit_dagster.resources.storage import ParquetIOManager

    @dg.asset
    def truth() -> dict[str, pd.DataFrame]:
        lines = pd.DataFrame({"line_number": [1, 2], "label": [0, 1], "detail": ["a", "b"]})
        return {"lines": lines, "sessions": pd.DataFrame({"session": ["s"]})}

    seen = {}

    @dg.asset(ins={"truth": parts_of("lines", columns=["line_number", "label", "gone"])})
    def reader(truth: dict[str, pd.DataFrame]) -> None:
        seen.update({name: list(frame.columns) for name, frame in truth.items()})

    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [truth, reader],
            instance=instance,
            resources={"io_manager": ParquetIOManager(base_dir=str(tmp_path))},
        ).success
    # only the part asked, with the columns it has of those asked
    assert seen == {"lines": ["line_number", "label"]}


def _materialize_ingest(instance, source: str):
    from logfit_dagster.assets import datasets, ingest
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager

    return dg.materialize(
        dg.load_assets_from_modules([ingest, datasets]),
        partition_key=source,
        instance=instance,
        resources={"io_manager": ParquetIOManager(), "sources": LogSources()},
        raise_on_error=False,
    )


def test_the_streaming_assets_store_what_the_whole_table_functions_give(workdir):
    from logfit_dagster.partitions import LOG_SOURCE

    (workdir / "sources.yaml").write_text(
        "sources:\n  - {name: app, origin: files, path: app.log, format: HDFS, "
        "session: {by: block_id}}\n"
    )
    lines = _multi_id_hdfs()
    (workdir / "app.log").write_text("\n".join(lines) + "\n")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["app"])
        result = _materialize_ingest(instance, "app")
        assert result.success
        meta = result.asset_materializations_for_node("sessions")[0].metadata
    stored = workdir / "data" / "assets"
    parsed = _parsed(lines, "HDFS")
    got_parsed = pq.read_table(stored / "parsed_logs" / "app.parquet")
    for name in parsed.column_names:
        assert got_parsed.column(name).to_pylist() == parsed.column(name).to_pylist(), name
    want_sessions = build_sessions(parsed.to_pandas(), SessionSpec(by="block_id"), "HDFS")
    _same(want_sessions, pd.read_parquet(stored / "sessions" / "app.parquet"))
    assert meta["sessions"].value == len(want_sessions)
    assert meta["lines_outside_sessions"].value == len(lines) - meta["lines_in_sessions"].value
    splits = pd.read_parquet(stored / "dataset_splits" / "app.parquet")
    assert list(splits["session_id"]) == list(want_sessions["session_id"])
    leftovers = [p for p in stored.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "no spill or temporary file is left behind"


def test_a_source_that_breaks_midway_writes_nothing_and_names_its_file(workdir):
    from logfit_dagster.partitions import LOG_SOURCE

    (workdir / "sources.yaml").write_text(
        "sources:\n  - {name: app, origin: files, path: app.log.gz, format: HDFS}\n"
    )
    body = gzip.compress(("\n".join(generate("hdfs", 20000, 1).lines) + "\n").encode())
    (workdir / "app.log.gz").write_bytes(body[: len(body) // 2])  # cut: a truncated gzip
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["app"])
        result = _materialize_ingest(instance, "app")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "app.log.gz: cannot be read as gzip" in str(failure.event_specific_data.error)
    stored = workdir / "data" / "assets"
    assert not list(stored.rglob("*")) or not any(p.is_file() for p in stored.rglob("*"))


def test_spill_folders_of_killed_processes_are_removed_by_the_next_step(tmp_path):
    import subprocess
    import sys

    from logfit_dagster.core.tables import spill_folder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / f".spill-{gone.pid}-abc"  # what a kill -9 mid-step leaves
    left.mkdir()
    (left / "pairs-0.arrow").write_bytes(b"x" * 100)
    with spill_folder(tmp_path) as folder:
        assert not left.exists()
        assert folder.parent == tmp_path and folder.name.startswith(".spill-")
        (folder / "spill").write_bytes(b"y")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_output_left_half_written_by_a_killed_writer_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from logfit_dagster.resources.storage import ParquetIOManager

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / "truth" / f".src.{gone.pid}.abc"  # a kill -9 mid-way through a bundle
    left.mkdir(parents=True)
    (left / "lines.parquet").write_bytes(b"half")
    ParquetIOManager(base_dir=str(tmp_path))._write_bundle(
        tmp_path / "truth" / "src", {"sessions": pd.DataFrame({"x": [1]})}
    )
    assert [p.name for p in (tmp_path / "truth").iterdir()] == ["src"]

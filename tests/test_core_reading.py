"""Reading log files: gzip, CRLF, undecodable bytes counted, empty and missing files named."""

import gzip

import pytest

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.ingest import read_raw_logs
from logfit_dagster.core.reading import iter_line_batches, read_lines, write_parquet_atomic


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.log"
    path.write_bytes(b"ok line\nbad \xff\xfe bytes\nlast line without newline")
    lines, replaced = read_lines(path)
    assert lines == ["ok line", "bad \ufffd\ufffd bytes", "last line without newline"]
    assert replaced == 2


def test_gzip_and_crlf(tmp_path):
    path = tmp_path / "x.log.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"a\r\nb\r\n")
    assert read_lines(path) == (["a", "b"], 0)


def test_batches_cut_at_line_boundaries(tmp_path):
    path = tmp_path / "many.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    batches = list(iter_line_batches(path, batch_bytes=97))
    assert len(batches) > 5
    joined = [line for b in batches for line in b.lines.to_pylist()]
    assert joined == [f"line {i}" for i in range(1000)]
    assert [b.first_line for b in batches][:2] == [1, 1 + len(batches[0].lines)]


def test_empty_file_error_names_the_file(tmp_path):
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    with pytest.raises(LogInputError, match="empty.log"):
        read_lines(path)


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(LogInputError, match="nowhere.log"):
        read_raw_logs([tmp_path / "nowhere.log"])


def test_line_numbers_continue_across_files(tmp_path):
    (tmp_path / "a.log").write_text("a1\na2\n")
    (tmp_path / "b.log").write_text("b1\n")
    table, stats = read_raw_logs([tmp_path / "a.log", tmp_path / "b.log"])
    assert table["line_number"].to_pylist() == [1, 2, 3]
    assert table["raw"].to_pylist() == ["a1", "a2", "b1"]
    assert stats.lines == 3


def test_failed_write_keeps_the_previous_file(tmp_path):
    import pyarrow as pa

    target = tmp_path / "out.parquet"
    write_parquet_atomic(pa.table({"x": [1, 2]}), target)
    before = target.read_bytes()

    with pytest.raises(AttributeError):
        write_parquet_atomic("not a table", target)  # type: ignore[arg-type]
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


@pytest.mark.faults
def test_a_truncated_or_fake_gzip_is_named(tmp_path):
    import gzip

    from logfit_dagster.core.errors import LogInputError
    from logfit_dagster.core.reading import iter_line_batches

    whole = gzip.compress(b"one line\n" * 5000)
    truncated = tmp_path / "cut.log.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    fake = tmp_path / "fake.log.gz"
    fake.write_bytes(b"this is plain text, not gzip\n")
    for path in (truncated, fake):
        with pytest.raises(LogInputError, match=rf"{path.name}: cannot be read as gzip"):
            list(iter_line_batches(path))


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    import pyarrow as pa

    from logfit_dagster.core.reading import write_parquet_atomic

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / f".out.parquet.{gone.pid}.abc123.tmp"  # a kill -9 mid-write
    left.write_bytes(b"PAR1 half")
    other = tmp_path / f".other.parquet.{gone.pid}.abc123.tmp"  # another target's: not ours
    other.write_bytes(b"x")
    write_parquet_atomic(pa.table({"x": [1]}), tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "out.parquet"]

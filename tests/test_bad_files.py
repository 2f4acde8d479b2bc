"""What is not a log file is refused naming it; a gzip bomb is capped; a gigabyte line costs the
read cap; classify's output is replaced whole, keeping its mode, only when asked."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.ingest import RawStats, raw_line_batches
from logfit_dagster.core.reading import iter_line_batches
from tests.processes import run_logfit


def _lines(path) -> list:
    return [line for batch in iter_line_batches(Path(path)) for line in batch.lines.to_pylist()]


@pytest.mark.faults
@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/proc/self/environ", "kernel's proc file system"),
        ("/dev/zero", "kernel's dev file system"),
        (sys.executable, "looks binary"),
    ],
)
def test_kernel_files_devices_and_binaries_are_refused_by_ingest_and_classify(path, words):
    with pytest.raises(LogInputError, match=words) as raised:
        list(raw_line_batches([Path(path)], RawStats()))
    assert path in str(raised.value)


@pytest.mark.faults
def test_a_fifo_and_a_folder_are_refused(tmp_path):
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    with pytest.raises(LogInputError, match="is a FIFO, not a regular file"):
        _lines(fifo)
    with pytest.raises(LogInputError, match="is a folder"):
        _lines(tmp_path)


@pytest.mark.faults
def test_stray_bytes_are_read_and_counted_not_refused(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"INFO ok\nWARN caf\xe9\n" + b"INFO x\n" * 100 + b"\0" * 16 + b"\n")
    batches = list(iter_line_batches(log))
    assert sum(len(b.lines) for b in batches) == 103
    assert sum(b.replaced_bytes for b in batches) == 1


@pytest.mark.faults
def test_a_gzip_bomb_is_refused_past_its_cap_and_the_cap_is_configurable(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.log.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        for _ in range(64):
            out.write(b"INFO the same line again and again\n" * 30_000)  # 64 MB inflated
    assert bomb.stat().st_size < 2 << 20
    monkeypatch.setenv("LOGFIT_MAX_GZIP_BYTES", "16M")
    with pytest.raises(LogInputError, match=r"decompresses to more than 16\.0 MB .* gzip bomb"):
        _lines(bomb)
    monkeypatch.setenv("LOGFIT_MAX_GZIP_BYTES", "lots")
    with pytest.raises(LogInputError, match="LOGFIT_MAX_GZIP_BYTES='lots'"):
        _lines(bomb)
    monkeypatch.setenv("LOGFIT_MAX_GZIP_BYTES", "1G")
    assert len(_lines(bomb)) == 64 * 30_000


def _classify(workdir, *argv, env=None) -> subprocess.CompletedProcess:
    return run_logfit(workdir, "classify", *argv, env=env)


@pytest.fixture
def model(tmp_path) -> Path:
    from tests.test_long_lines import _tiny_export

    path = tmp_path / "model.json"
    path.write_text(json.dumps(_tiny_export()))
    return path


@pytest.mark.faults
@pytest.mark.slow
def test_classify_output_refuses_a_folder_and_an_existing_file_and_force_keeps_its_mode(
    tmp_path, model
):
    log = tmp_path / "app.log"
    log.write_text("INFO heartbeat 1 ok\nERROR disk 2 failed\n")
    folder = tmp_path / "out.jsonl"
    folder.mkdir()
    result = _classify(tmp_path, str(log), "--model", str(model), "--output", str(folder))
    assert result.returncode == 2 and "is a folder: name a file in it" in result.stderr
    assert "Traceback" not in result.stderr

    out = tmp_path / "scored.jsonl"
    out.write_text("precious\n")
    out.chmod(0o640)
    result = _classify(tmp_path, str(log), "--model", str(model), "--output", str(out))
    assert result.returncode == 2 and "exists: pass --force" in result.stderr
    assert out.read_text() == "precious\n"
    result = _classify(tmp_path, str(log), "--model", str(model), "--output", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert f"scoring with {model}" in result.stderr
    assert [json.loads(x)["line_number"] for x in out.read_text().splitlines()] == [1, 2]
    assert stat.S_IMODE(out.stat().st_mode) == 0o640

    # a symlink: its target is replaced, the link stays a link
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    result = _classify(tmp_path, str(log), "--model", str(model), "--output", str(link), "--force")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and len(out.read_text().splitlines()) == 2

    fresh = tmp_path / "new.parquet"
    assert (
        _classify(tmp_path, str(log), "--model", str(model), "--output", str(fresh)).returncode == 0
    )
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


@pytest.mark.faults
@pytest.mark.slow
def test_classify_of_a_gzip_bomb_fails_clearly_and_leaves_nothing(tmp_path, model):
    bomb = tmp_path / "bomb.log.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        for _ in range(64):
            out.write(b"INFO the same line again and again\n" * 30_000)
    result = _classify(
        tmp_path,
        str(bomb),
        "--model",
        str(model),
        "--output",
        str(tmp_path / "scored.parquet"),
        env={"LOGFIT_MAX_GZIP_BYTES": "16M"},
    )
    assert result.returncode == 2 and "gzip bomb" in result.stderr, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.log.gz", "model.json"]


@pytest.mark.faults
@pytest.mark.slow
def test_classify_of_a_half_gigabyte_line_without_newline_stays_within_the_cap(tmp_path, model):
    log = tmp_path / "one.log"
    with open(log, "wb") as out:
        out.write(b"ERROR disk 2 failed\n")
        chunk = b"abc=123 " * (1 << 17)  # 1 MiB
        for _ in range(512):
            out.write(chunk)
    script = (
        "import re;"
        "from pathlib import Path;"
        "from logfit_dagster.core.classify import classify_file;"
        "from logfit_dagster.core.line_model import LineScorer;"
        f"s = classify_file(Path({str(log)!r}), LineScorer.load(Path({str(model)!r})),"
        f" Path({str(tmp_path / 'out.parquet')!r}));"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1);"
        "print(s.lines, s.cut_lines, s.cut_bytes, hwm)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines, cut_lines, cut_bytes, peak_kb = map(int, result.stdout.split())
    assert (lines, cut_lines) == (2, 1)
    assert cut_bytes == 512 * (1 << 20) - 1_000_000
    # the 512 MiB line is never held: the read's blocks (32 MB) and the cap, over the imports
    assert peak_kb < 400 * 1024, f"peak {peak_kb / 1024:.0f} MB"


GARBAGE = b"this is not a database\n" * 100


@pytest.mark.faults
def test_a_damaged_label_cache_is_named_with_what_to_do(tmp_path):
    from logfit_dagster.core.errors import StateFileError
    from logfit_dagster.core.labeling.cache import LabelCache

    path = tmp_path / "labels.db"
    LabelCache(path).get_many(["k"])
    path.write_bytes(GARBAGE)
    with pytest.raises(StateFileError, match="label cache is not a SQLite database") as raised:
        LabelCache(path)
    assert str(path) in str(raised.value) and "move it aside" in str(raised.value)


@pytest.mark.faults
def test_a_damaged_mlflow_store_is_named_with_what_to_do(workdir):
    from logfit_dagster.core.errors import StateFileError
    from logfit_dagster.resources.tracking import ExperimentTracker

    store = workdir / "data" / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(GARBAGE)
    with pytest.raises(StateFileError, match="MLflow store is not a SQLite database") as raised:
        with ExperimentTracker()._session():
            pass
    assert str(store) in str(raised.value)


@pytest.mark.faults
@pytest.mark.slow
def test_materialize_names_a_damaged_instance_database_and_exits_2(workdir):
    import dagster as dg

    from logfit_dagster.cli import INSTANCE_CONFIG

    home = workdir / "data" / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(INSTANCE_CONFIG)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()
    runs_db = home / "history" / "runs.db"
    assert runs_db.exists()
    runs_db.write_bytes(GARBAGE)
    result = run_logfit(workdir, "materialize", "tiny_bgl")
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(runs_db) in result.stderr and "move it aside" in result.stderr
    assert "Traceback" not in result.stderr

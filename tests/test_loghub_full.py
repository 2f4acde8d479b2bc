"""Full Loghub data sets from a local server that speaks Zenodo's REST API: resumed downloads,
checksums, archives unpacked as a stream, and a full data set run as a source."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from logfit_dagster.core.download import RemoteFile, download, unpack, zenodo_record
from logfit_dagster.core.errors import ChecksumMismatchError, LogInputError, RegistryError
from logfit_dagster.core.loghub import LOGHUB_ZENODO_RECORD, fetch_loghub_dataset
from logfit_dagster.core.registry import parse_source
from tests.conftest import PROJECT_ROOT

RECORD = LOGHUB_ZENODO_RECORD


class FakeZenodo:
    """``/api/records/<id>`` and ``/api/records/<id>/files/<key>/content`` with HTTP ranges.

    ``drop_after[key] = n``: the first download of ``key`` stops after n bytes (the connection
    closes mid-body). ``corrupt``: keys served with other bytes than the record says.
    ``ignore_range``: answer 200 with the whole file to a range request.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        zenodo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                zenodo.requests.append((self.path, self.headers.get("Range")))
                parts = self.path.strip("/").split("/")
                if parts[:3] == ["api", "records", RECORD] and len(parts) == 3:
                    body = json.dumps(zenodo.record()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if len(parts) == 6 and parts[3] == "files" and parts[5] == "content":
                    self.serve(parts[4])
                    return
                self.send_error(404)

            def serve(self, key):
                if key not in zenodo.files:
                    self.send_error(404)
                    return
                data = zenodo.files[key]
                if key in zenodo.corrupt:
                    data = bytes(b ^ 0xFF for b in data)
                start = 0
                wanted = self.headers.get("Range")
                if wanted and not zenodo.ignore_range:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = zenodo.drop_after.pop(key, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-body
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self) -> dict:
        return {
            "id": int(RECORD),
            "files": [
                {"key": k, "size": len(v), "checksum": "md5:" + hashlib.md5(v).hexdigest()}
                for k, v in self.files.items()
            ],
        }

    def downloads(self, key: str) -> list[str | None]:
        return [r for p, r in self.requests if p.endswith(f"/files/{key}/content")]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def hdfs_v1_zip(blocks: int = 400) -> bytes:
    """An archive laid out like HDFS_v1.zip: HDFS.log and preprocessed/anomaly_label.csv."""
    rng = random.Random(3)
    lines, labels = [], ["BlockId,Label"]
    for b in range(blocks):
        block = f"blk_{rng.randrange(10**18)}"
        anomalous = b % 20 == 0
        lines.append(
            f"081109 2035{b % 60:02d} {b} INFO dfs.DataNode$DataXceiver: Receiving block {block} "
            f"src: /10.250.{b % 250}.1:54106 dest: /10.250.{b % 250}.1:50010"
        )
        if anomalous:
            lines.append(
                f"081109 2036{b % 60:02d} {b} WARN dfs.DataNode: Exception writing block {block}"
            )
        lines.append(
            f"081109 2037{b % 60:02d} {b} INFO dfs.DataNode$PacketResponder: Received block "
            f"{block} of size 67108864 from /10.250.{b % 250}.1"
        )
        labels.append(f"{block},{'Anomaly' if anomalous else 'Normal'}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        bundle.writestr("HDFS.log", "\n".join(lines) + "\n")
        bundle.writestr("preprocessed/anomaly_label.csv", "\n".join(labels) + "\n")
        bundle.writestr("README.md", "HDFS_v1, laid out as the Loghub archive\n")
    return buffer.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.faults
def test_a_dropped_connection_resumes_with_a_range_request(tmp_path):
    with FakeZenodo() as zenodo:
        zenodo.files["HDFS_v1.zip"] = hdfs_v1_zip()
        zenodo.drop_after["HDFS_v1.zip"] = 20_000
        seen = []
        folder = fetch_loghub_dataset(
            "HDFS_v1",
            tmp_path / "cache",
            zenodo.url,
            progress=lambda stage, done, total: seen.append((stage, done, total)),
        )
        # the first request got 20,000 bytes, the second asked for the rest only
        assert zenodo.downloads("HDFS_v1.zip") == [None, "bytes=20000-"]
        assert (folder / "HDFS.log").read_text().count("\n") == 820
        assert (folder / "preprocessed" / "anomaly_label.csv").is_file()
        assert not (tmp_path / "cache" / "archives" / "HDFS_v1.zip").exists()  # removed
        size = len(zenodo.files["HDFS_v1.zip"])
        assert ("download", size, size) in seen and any(s == "unpack" for s, _, _ in seen)
        # unpacked once: the next call asks nothing of the network
        before = len(zenodo.requests)
        assert fetch_loghub_dataset("HDFS_v1", tmp_path / "cache", zenodo.url) == folder
        assert len(zenodo.requests) == before


@pytest.mark.faults
def test_two_runs_wanting_one_data_set_download_it_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with FakeZenodo() as zenodo:
        zenodo.files["HDFS_v1.zip"] = hdfs_v1_zip()
        with ThreadPoolExecutor(2) as pool:
            folders = list(
                pool.map(
                    lambda _: fetch_loghub_dataset("HDFS_v1", tmp_path / "cache", zenodo.url),
                    range(2),
                )
            )
        assert folders[0] == folders[1] and (folders[0] / "HDFS.log").is_file()
        assert len(zenodo.downloads("HDFS_v1.zip")) == 1


@pytest.mark.faults
def test_a_server_that_ignores_ranges_and_a_wrong_checksum(tmp_path):
    with FakeZenodo() as zenodo:
        data = tar_gz({"Zookeeper.log": b"2015-07-29 17:41:44,747 - INFO  [main] - x\n" * 5000})
        zenodo.files["Zookeeper.tar.gz"] = data
        remote = zenodo_record(zenodo.url, RECORD)["Zookeeper.tar.gz"]
        # a partial download from before, and a server that answers 200 to a range request:
        # the download starts over instead of appending the whole file to the part
        part = tmp_path / "Zookeeper.tar.gz.part"
        part.write_bytes(data[:1000])
        zenodo.ignore_range = True
        path = download(remote, tmp_path / "Zookeeper.tar.gz", backoff_s=0)
        assert path.read_bytes() == data and not part.exists()

        zenodo.corrupt.add("Zookeeper.tar.gz")
        with pytest.raises(ChecksumMismatchError, match="md5:"):
            download(remote, tmp_path / "again.tar.gz", backoff_s=0)
        assert not (tmp_path / "again.tar.gz").exists()
        assert not (tmp_path / "again.tar.gz.part").exists()  # the next try starts clean

        missing = RemoteFile("nope", 10, "md5:00", f"{zenodo.url}/api/records/{RECORD}/x")
        with pytest.raises(LogInputError, match="HTTP 404"):
            download(missing, tmp_path / "nope", backoff_s=0)


@pytest.mark.faults
def test_a_server_that_keeps_dropping_keeps_what_arrived(tmp_path):
    with FakeZenodo() as zenodo:
        zenodo.files["HDFS_v1.zip"] = data = hdfs_v1_zip()
        remote = zenodo_record(zenodo.url, RECORD)["HDFS_v1.zip"]
        zenodo.drop_after["HDFS_v1.zip"] = 5_000
        with pytest.raises(LogInputError, match="next try resumes"):
            download(remote, tmp_path / "a.zip", attempts=1, backoff_s=0)
        assert (tmp_path / "a.zip.part").stat().st_size == 5_000
        assert download(remote, tmp_path / "a.zip", backoff_s=0).read_bytes() == data
        assert zenodo.downloads("HDFS_v1.zip")[-1] == "bytes=5000-"


@pytest.mark.faults
def test_unpack_refuses_members_outside_the_folder_and_leaves_nothing(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_gz({"ok.log": b"fine\n", "../evil.log": b"escaped\n"}))
    with pytest.raises(LogInputError, match="outside"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.log").exists()
    assert not list(tmp_path.glob(".out*"))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(hdfs_v1_zip()[:-300])
    with pytest.raises(LogInputError, match="broken.zip"):
        unpack(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_registry_entries_of_full_data_sets():
    spec = parse_source(
        {"name": "hdfs_full", "origin": "loghub", "system": "HDFS_v1", "release": "full"}, "s[0]"
    )
    assert spec.session.by == "block_id" and spec.ground_truth.provider == "hdfs_blocks"
    assert spec.ground_truth.path == "preprocessed/anomaly_label.csv" and spec.format == "HDFS"
    with pytest.raises(RegistryError, match="release 'full' must be one of"):
        parse_source({"name": "x", "origin": "loghub", "system": "HDFS", "release": "full"}, "s")
    with pytest.raises(RegistryError, match="field 'release' must be '2k' or 'full', got 'big'"):
        parse_source({"name": "x", "origin": "loghub", "system": "HDFS", "release": "big"}, "s")
    with pytest.raises(RegistryError, match="for origin loghub only"):
        parse_source({"name": "x", "origin": "files", "path": "a", "release": "full"}, "s")


def test_a_full_data_set_runs_as_a_source_with_its_block_labels(workdir, monkeypatch):
    from logfit_dagster.assets import datasets, ingest
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager

    with FakeZenodo() as zenodo:
        zenodo.files["HDFS_v1.zip"] = hdfs_v1_zip()
        monkeypatch.setenv("LOGFIT_ZENODO_URL", zenodo.url)
        (workdir / "sources.yaml").write_text(
            "sources:\n  - {name: hdfs_full, origin: loghub, system: HDFS_v1, release: full}\n"
        )
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(LOG_SOURCE, ["hdfs_full"])
            result = dg.materialize(
                dg.load_assets_from_modules([ingest, datasets]),
                selection=["raw_logs", "parsed_logs", "sessions", "ground_truth_labels"],
                partition_key="hdfs_full",
                instance=instance,
                resources={"io_manager": ParquetIOManager(), "sources": LogSources()},
            )
        assert result.success
        sessions = result.output_for_node("ground_truth_labels")["sessions"]
        assert len(sessions) == 400 and int(sessions["label"].sum()) == 20
        assert len(zenodo.downloads("HDFS_v1.zip")) == 1

    # the CLI lists and downloads (a progress bar, then the folder) from the same kind of mirror
    with FakeZenodo() as zenodo:
        zenodo.files["Zookeeper.tar.gz"] = tar_gz({"Zookeeper/Zookeeper.log": b"x\n" * 10})
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "logfit_dagster.cli",
                "sources",
                "download",
                "Zookeeper",
                "Nonexistent",
            ],
            cwd=PROJECT_ROOT,
            env={**dict(__import__("os").environ), "LOGFIT_ZENODO_URL": zenodo.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert "Nonexistent: unknown Loghub data set" in done.stderr
    assert "Zookeeper download" in done.stderr  # the bar
    folder = workdir / "data" / "loghub-full" / "Zookeeper"
    assert f"Zookeeper: {folder}" in done.stdout
    assert (folder / "Zookeeper" / "Zookeeper.log").read_bytes() == b"x\n" * 10

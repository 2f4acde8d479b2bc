"""The Loghub downloader against a local HTTP server serving the real 2k samples."""

import functools
import http.server
import threading

import pytest

from logfit_dagster.core.errors import ChecksumMismatchError, LogInputError
from logfit_dagster.core.loghub import fetch_loghub_sample, sha256_of


@pytest.fixture
def loghub_server(tmp_path):
    """Serves a folder laid out like the Loghub repository, and counts requests."""
    root = tmp_path / "mirror"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def _publish(root, shared_data, system):
    folder = root / system
    folder.mkdir(exist_ok=True)
    data = (shared_data / "loghub-2k" / system / f"{system}_2k.log").read_bytes()
    (folder / f"{system}_2k.log").write_bytes(data)


def test_download_verifies_and_caches(loghub_server, shared_data, tmp_path):
    root, url, hits = loghub_server
    _publish(root, shared_data, "HDFS")
    cache = tmp_path / "cache"
    path = fetch_loghub_sample("HDFS", cache, url)
    assert path == cache / "HDFS" / "HDFS_2k.log"
    assert sha256_of(path) == sha256_of(shared_data / "loghub-2k/HDFS/HDFS_2k.log")
    fetch_loghub_sample("HDFS", cache, url)
    assert hits == ["/HDFS/HDFS_2k.log"], "a verified cached copy is not downloaded again"


def test_checksum_mismatch_is_refused_and_cache_kept(loghub_server, shared_data, tmp_path):
    root, url, _ = loghub_server
    _publish(root, shared_data, "BGL")
    cache = tmp_path / "cache"
    good = fetch_loghub_sample("BGL", cache, url)
    before = good.read_bytes()
    # The cached copy is damaged and the mirror now serves tampered bytes.
    good.write_bytes(before[:100])
    (root / "BGL" / "BGL_2k.log").write_bytes(b"tampered\n")
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch .*BGL_2k.log"):
        fetch_loghub_sample("BGL", cache, url)
    assert good.read_bytes() == before[:100], "the cached copy is left as it was"
    assert [p.name for p in good.parent.iterdir()] == ["BGL_2k.log"], "no partial download left"


def test_missing_file_on_mirror_is_a_clear_error(loghub_server, tmp_path):
    _, url, _ = loghub_server
    with pytest.raises(LogInputError, match="could not download .*/Spark/Spark_2k.log") as raised:
        fetch_loghub_sample("Spark", tmp_path / "cache", url)
    assert "LOGFIT_LOGHUB_URL" in str(raised.value)  # what to do without internet access


def test_unknown_system_is_refused(tmp_path):
    with pytest.raises(LogInputError, match="unknown Loghub system 'Nope'"):
        fetch_loghub_sample("Nope", tmp_path)

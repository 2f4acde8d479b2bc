"""Loghub's data sets: the 2k samples and the full logs, downloaded, verified and cached.

The 2k samples come from the Loghub repository, checked against the checksums below. The full
data sets come from Loghub's Zenodo record (``release: full`` in the registry): the record's
own file list gives each archive's size and MD5; :func:`fetch_loghub_dataset` downloads an
archive resumably, verifies it, unpacks it member by member and keeps the unpacked folder.
A mirror that serves Zenodo's REST API layout can stand in for zenodo.org.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logfit_dagster.core.download import download, unpack, zenodo_record
from logfit_dagster.core.errors import ChecksumMismatchError, LogInputError
from logfit_dagster.core.reading import atomic_path

# The Loghub repository at the commit whose 2k samples these checksums describe.
DEFAULT_LOGHUB_BASE_URL = (
    "https://raw.githubusercontent.com/logpai/loghub/dd61d0952749ee7963bde24220d1be5ede023033"
)

# SHA-256 of ``<System>/<System>_2k.log`` at that commit.
LOGHUB_SHA256: dict[str, str] = {
    "Android": "47641549915e662ff590291df266a45f635eedca7c5f1b41a4fa853fe5d2f409",
    "Apache": "c7efa3eb686e3a96bd2f8f4457b2a7887e9cf2f3649327f1b4e87af841363ce8",
    "BGL": "2a819ea540909db682005c9cf948387a40729b5c2e9f19d430e29ce704825496",
    "HDFS": "7c967000980c086ed55fa6544ba4f05fe66d44622795e890c68caf8bbb635035",
    "HPC": "826e5957b461e65780a8bda5c186c2fcf90fd6c1863721ef9c1ccfa9ada86f88",
    "Hadoop": "9ecaeb807d50d5fb5a20982ea66f1c8d32545259a51ce7456c1ab78db0509732",
    "HealthApp": "95ec36322f5db1e6faaab764c568b67023d7d6733793106289dbf30516fc13ee",
    "Linux": "b3e20bc1afe732ab1bf3ed1de4bf9c809e4194e02f7dea911d918e5342e8e173",
    "Mac": "d9ea495488728d8c989dc942fca3324a3cc7b19b0a6f409a5fd568ad547fd931",
    "OpenSSH": "1e4912727fa88245113d41b16a0cd25ceadba7f931e1c406542885b91254264f",
    "OpenStack": "025a1bc64ff5b2ef4a4bda6c4ad5c5c5f18478b71cd1ad2b0676e01625629f2f",
    "Proxifier": "94b6a9d98d76e7ad7841ed10caa463cd4e638a229b92a220a2bf1707552adbb9",
    "Spark": "2e8b9a37fc5c238253e0b8e18a8bd5e489671def91767ae1192d28c8e1f95901",
    "Thunderbird": "903bbfa61c34d4803e4adcb0d726ff2eeb9a2e11971243269a2035fa6c3bbeb0",
    "Windows": "372fb809464a6d6016e599e9272d7cf1e8b644f25c90c7f76f19c936362456d0",
    "Zookeeper": "e40e0af5ef9eb6e4097200f260b9d1f626b3676f861a432e87977242e75543d8",
}

LOGHUB_SYSTEMS: tuple[str, ...] = tuple(sorted(LOGHUB_SHA256))


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loghub_url(system: str, base_url: str = DEFAULT_LOGHUB_BASE_URL) -> str:
    """Where a system's 2k sample lives under a Loghub base URL (the public one or a mirror)."""
    return f"{base_url.rstrip('/')}/{system}/{system}_2k.log"


def fetch_loghub_sample(
    system: str,
    cache_dir: Path,
    base_url: str = DEFAULT_LOGHUB_BASE_URL,
    timeout_s: float = 60.0,
) -> Path:
    """Return the cached, verified 2k sample of a Loghub system, downloading it if needed.

    A cached copy whose checksum matches is used as is. A download is written beside the cache
    and only replaces it once its checksum matches, so a bad or truncated download never
    replaces a good copy.

    Raises:
        LogInputError: for an unknown system or a failed download.
        ChecksumMismatchError: when the downloaded bytes are not the expected file.
    """
    if system not in LOGHUB_SHA256:
        raise LogInputError(f"unknown Loghub system {system!r}; known: {', '.join(LOGHUB_SYSTEMS)}")
    expected = LOGHUB_SHA256[system]
    target = Path(cache_dir) / system / f"{system}_2k.log"
    if target.is_file() and sha256_of(target) == expected:
        return target
    url = loghub_url(system, base_url)
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LogInputError(
                f"could not download {url}: {reason}; without internet access, set "
                "LOGFIT_LOGHUB_URL to a mirror of the Loghub repository (a local folder served "
                "over HTTP will do), or use origin: files with the 2k logs you have"
            ) from None
        actual = sha256_of(tmp)
        if actual != expected:
            kept = f"; the cached copy {target} is kept" if target.exists() else ""
            raise ChecksumMismatchError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}{kept}"
            )
    return target


# -- the full data sets ---------------------------------------------------------------------

#: Loghub's Zenodo record and where it is served; LOGFIT_ZENODO_URL names a mirror.
LOGHUB_ZENODO_RECORD = "8196385"
DEFAULT_ZENODO_URL = "https://zenodo.org"


@dataclass(frozen=True)
class LoghubDataset:
    """A full Loghub data set: its archive in the record, its size as Loghub states it, the
    log files to read once unpacked (globs), and the line format."""

    archive: str
    lines: int
    raw_size: str
    format: str
    logs: tuple[str, ...] = ("**/*.log",)


LOGHUB_DATASETS: dict[str, LoghubDataset] = {
    "HDFS_v1": LoghubDataset("HDFS_v1.zip", 11_175_629, "1.47 GiB", "HDFS", ("**/HDFS.log",)),
    "HDFS_v2": LoghubDataset("HDFS_v2.zip", 71_118_073, "16.06 GiB", "HDFS"),
    "Hadoop": LoghubDataset("Hadoop.zip", 394_308, "48.61 MiB", "Hadoop"),
    "Spark": LoghubDataset("Spark.tar.gz", 33_236_604, "2.75 GiB", "Spark"),
    "Zookeeper": LoghubDataset("Zookeeper.tar.gz", 74_380, "9.95 MiB", "Zookeeper"),
    "OpenStack": LoghubDataset("OpenStack.tar.gz", 207_820, "58.61 MiB", "OpenStack"),
    "BGL": LoghubDataset("BGL.zip", 4_747_963, "708.76 MiB", "BGL"),
    "HPC": LoghubDataset("HPC.zip", 433_489, "32.00 MiB", "HPC"),
    "Thunderbird": LoghubDataset("Thunderbird.tar.gz", 211_212_192, "29.60 GiB", "Thunderbird"),
    "Windows": LoghubDataset("Windows.tar.gz", 114_608_388, "26.09 GiB", "Windows"),
    "Linux": LoghubDataset("Linux.tar.gz", 25_567, "2.25 MiB", "Linux"),
    "Mac": LoghubDataset("Mac.tar.gz", 117_283, "16.09 MiB", "Mac"),
    "Android_v1": LoghubDataset("Android_v1.zip", 1_555_005, "183.37 MiB", "Android"),
    "HealthApp": LoghubDataset("HealthApp.tar.gz", 253_395, "22.44 MiB", "HealthApp"),
    "Apache": LoghubDataset("Apache.tar.gz", 56_481, "4.90 MiB", "Apache"),
    "OpenSSH": LoghubDataset("SSH.tar.gz", 655_146, "70.02 MiB", "OpenSSH"),
    "Proxifier": LoghubDataset("Proxifier.tar.gz", 21_329, "2.42 MiB", "Proxifier"),
}

UNPACKED_STAMP = ".logfit-unpacked.json"


def fetch_loghub_dataset(
    name: str,
    cache_dir: Path,
    base_url: str = DEFAULT_ZENODO_URL,
    *,
    record: str = LOGHUB_ZENODO_RECORD,
    progress: Callable[[str, int, int | None], None] | None = None,
    keep_archive: bool = False,
) -> Path:
    """The unpacked folder of a full Loghub data set, downloading and unpacking it if needed.

    A folder unpacked before (its stamp names the archive and checksum) is used without asking
    the network. Otherwise the record's file list gives the archive's size and checksum; the
    download resumes where an earlier one stopped, is verified, and is unpacked into
    ``<cache_dir>/<name>`` (the archive is removed afterwards unless ``keep_archive``).
    ``progress(stage, done, total)`` hears ``download`` and ``unpack`` bytes.
    """
    if name not in LOGHUB_DATASETS:
        raise LogInputError(
            f"unknown Loghub data set {name!r}; known: {', '.join(sorted(LOGHUB_DATASETS))}"
        )
    dataset = LOGHUB_DATASETS[name]
    folder = Path(cache_dir) / name
    stamp = folder / UNPACKED_STAMP
    if stamp.is_file():
        return folder
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    # two runs (two sources of one data set) fetch it once: the second waits, then finds it
    with open(Path(cache_dir) / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp.is_file():
                return folder
            return _fetch_dataset(dataset, folder, base_url, record, progress, keep_archive)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fetch_dataset(dataset, folder, base_url, record, progress, keep_archive) -> Path:
    cache_dir = folder.parent
    files = zenodo_record(base_url, record)
    if dataset.archive not in files:
        raise LogInputError(
            f"the record {base_url.rstrip('/')}/api/records/{record} has no file "
            f"{dataset.archive!r} (it has: {', '.join(sorted(files)) or 'none'})"
        )
    remote = files[dataset.archive]
    archive = download(
        remote,
        Path(cache_dir) / "archives" / dataset.archive,
        progress=(lambda done, total: progress("download", done, total)) if progress else None,
    )
    unpack(
        archive,
        folder,
        progress=(lambda done, total: progress("unpack", done, total)) if progress else None,
    )
    (folder / UNPACKED_STAMP).write_text(
        json.dumps({"archive": dataset.archive, "checksum": remote.checksum, "url": remote.url})
    )
    if not keep_archive:
        archive.unlink()
    return folder


def loghub_dataset_files(name: str, folder: Path, patterns: tuple[str, ...] = ()) -> list[Path]:
    """The log files of an unpacked data set: ``patterns`` (globs under ``folder``) or its own."""
    found: list[Path] = []
    for pattern in patterns or LOGHUB_DATASETS[name].logs:
        found += [p for p in sorted(folder.glob(pattern)) if p.is_file() and p not in found]
    if not found:
        present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        raise LogInputError(
            f"Loghub data set {name}: no file under {folder} matches "
            f"{', '.join(patterns or LOGHUB_DATASETS[name].logs)}; it holds: "
            f"{', '.join(present[:20]) or 'nothing'}"
        )
    return found

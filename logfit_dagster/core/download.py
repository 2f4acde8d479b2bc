"""Large downloads that survive a dropped connection, and archives unpacked as a stream.

:func:`download` writes to ``<target>.part`` and, after an interruption (a dropped connection,
a killed process), asks for the rest with an HTTP ``Range`` request; a server that ignores it
(``200`` instead of ``206``) makes it start over. The file takes its final name only once its
size and checksum match, so a truncated or wrong download is never mistaken for a good one.

:func:`unpack` extracts a ``.zip``, ``.tar.gz`` or ``.tar`` member by member into a folder
beside the destination, refusing members that would land outside it (absolute paths, ``..``,
links), and renames the folder into place when every member is out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from logfit_dagster.core.errors import ChecksumMismatchError, LogInputError

CHUNK = 1 << 20
#: progress(bytes so far, total bytes or None)
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file of a record: its name, size in bytes, ``algorithm:hex`` checksum and URL."""

    key: str
    size: int | None
    checksum: str
    url: str


def zenodo_record(base_url: str, record: str, timeout_s: float = 60.0) -> dict[str, RemoteFile]:
    """The files of a Zenodo record (or of a mirror that serves Zenodo's REST API), by name.

    Reads ``<base>/api/records/<record>``; each file's bytes are fetched from
    ``<base>/api/records/<record>/files/<name>/content``, so a mirror needs only those two paths.
    """
    base = base_url.rstrip("/")
    url = f"{base}/api/records/{record}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            payload = json.load(response)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise LogInputError(f"could not read the record {url}: {exc}") from exc
    entries = payload.get("files")
    if isinstance(entries, dict):  # the files endpoint's layout: {"entries": [...]}
        entries = entries.get("entries")
    if not isinstance(entries, list):
        raise LogInputError(f"{url}: no 'files' list in the record")
    files = {}
    for entry in entries:
        key = entry.get("key") or entry.get("filename")
        checksum = entry.get("checksum", "")
        if not key or ":" not in checksum:
            raise LogInputError(f"{url}: a file entry without a name or checksum: {entry!r:.200}")
        size = entry.get("size", entry.get("filesize"))
        files[key] = RemoteFile(
            key, int(size) if size is not None else None, checksum, f"{url}/files/{key}/content"
        )
    return files


def _hasher(checksum: str):
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha256", "sha1"):
        raise LogInputError(f"unsupported checksum {checksum!r}: md5, sha1 or sha256 expected")
    return hashlib.new(algorithm), expected.lower()


def file_checksum(path: Path, checksum: str) -> bool:
    """Whether ``path`` matches ``algorithm:hex``."""
    digest, expected = _hasher(checksum)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest() == expected


def download(
    remote: RemoteFile,
    target: Path,
    *,
    progress: Progress | None = None,
    attempts: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``remote`` to ``target``, resuming after interruptions; verified, then renamed.

    A ``target`` already there with the right checksum is kept as is. Raises
    :class:`ChecksumMismatchError` when the bytes are complete but wrong (the partial file is
    removed: the next try starts clean) and :class:`LogInputError` when the server cannot be
    read after ``attempts`` tries.
    """
    target = Path(target)
    if target.is_file() and file_checksum(target, remote.checksum):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failure: Exception | None = None
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()  # not the file this record describes: start over
            have = 0
        if remote.size is not None and have == remote.size:
            failure = None
            break
        try:
            _fetch(remote, part, have, progress, timeout_s)
            failure = None
            break
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404, 410):
                raise LogInputError(f"could not download {remote.url}: HTTP {exc.code}") from None
            if exc.code == 416:  # the range asked for is not there: start over
                part.unlink(missing_ok=True)
            failure = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failure = exc  # a dropped connection or a timeout: resume from what arrived
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2**attempt)
    if failure is not None:
        kept = part.stat().st_size if part.exists() else 0
        raise LogInputError(
            f"could not download {remote.url} in {attempts} tries: {failure}; the {kept} "
            f"bytes so far are kept in {part} and the next try resumes from there"
        )
    if not file_checksum(part, remote.checksum):
        part.unlink()
        raise ChecksumMismatchError(
            f"checksum mismatch for {remote.url}: expected {remote.checksum}; the download "
            "was removed"
        )
    part.replace(target)
    return target


def _fetch(remote: RemoteFile, part: Path, have: int, progress, timeout_s: float) -> None:
    request = urllib.request.Request(remote.url)
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        done = have if resumed else 0
        total = remote.size
        if total is None and response.headers.get("Content-Length"):
            total = done + int(response.headers["Content-Length"])
        with open(part, mode) as out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def _member_path(dest: Path, name: str) -> Path:
    """Where an archive member goes under ``dest``; refuses names that would escape it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise LogInputError(f"archive member {name!r} would be written outside {dest}; refused")
    return dest.joinpath(*pure.parts)


def unpack(archive: Path, dest: Path, progress: Progress | None = None) -> Path:
    """Extract ``archive`` into ``dest`` (replacing it) member by member; returns ``dest``.

    Everything goes into a sibling folder first and is renamed into place at the end: an
    interrupted or refused unpack leaves no half-filled ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    staging = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    total = archive.stat().st_size
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                done = 0
                for info in bundle.infolist():
                    path = _member_path(staging, info.filename)
                    if info.is_dir():
                        path.mkdir(parents=True, exist_ok=True)
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(info) as source, open(path, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                    done += info.compress_size
                    if progress:
                        progress(done, total)
        else:
            try:
                bundle = tarfile.open(archive, mode="r|*")  # a stream: no seeking back
            except tarfile.TarError as exc:
                raise LogInputError(f"{archive}: not a zip or tar archive ({exc})") from None
            done = 0
            with bundle:
                for member in bundle:
                    path = _member_path(staging, member.name)
                    if member.isdir():
                        path.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isfile():
                        raise LogInputError(
                            f"archive member {member.name!r} of {archive} is a link or device; "
                            "refused"
                        )
                    path.parent.mkdir(parents=True, exist_ok=True)
                    source = bundle.extractfile(member)
                    with open(path, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                    done += member.size
                    if progress:
                        progress(done, None)  # bytes unpacked; the total is not known
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LogInputError(f"{archive}: the archive is damaged ({exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.replace(dest)
    return dest


class ProgressLog:
    """``progress(stage, done, total)`` as log lines, at most one every ``every_s`` seconds."""

    def __init__(self, log, what: str, every_s: float = 10.0):
        self.log, self.what, self.every_s = log, what, every_s
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and not (total and done >= total):
            return
        self.last = now
        share = f" ({done / total:.0%} of {total / 2**20:,.1f} MiB)" if total else ""
        self.log.info(f"{self.what}: {stage} {done / 2**20:,.1f} MiB{share}")

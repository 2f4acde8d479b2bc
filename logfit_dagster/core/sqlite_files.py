"""SQLite files logfit keeps (the label cache, answers of judged sessions, the Dagster instance,
the MLflow store): a damaged one is named with what to do, not a bare ``DatabaseError``."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from logfit_dagster.core.errors import StateFileError

HEADER = b"SQLite format 3\x00"


def is_damaged(path: Path) -> bool:
    """Whether ``path`` exists, is not empty and does not start as a SQLite database does."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HEADER))
    except (FileNotFoundError, IsADirectoryError):
        return False
    return bool(head) and head != HEADER


def damaged_files(folder: Path) -> list[Path]:
    """The ``*.db`` files under ``folder`` that are not SQLite databases."""
    return sorted(p for p in Path(folder).rglob("*.db") if is_damaged(p))


@contextmanager
def named_errors(path: Path, what: str, remedy: str) -> Iterator[None]:
    """Turn SQLite's errors about a file into one that names it, says what it holds and what
    to do (a busy database is not damage: that error passes through)."""
    path = Path(path)
    if is_damaged(path):
        raise StateFileError(f"{path}: {what} is not a SQLite database (damaged?); {remedy}")
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise
        raise StateFileError(f"{path}: {what} cannot be read ({exc}); {remedy}") from None


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the database ``source`` at ``target``, whole or not at all (SQLite's
    backup, into a temporary file then renamed)."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with (
            closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as src,
            closing(sqlite3.connect(tmp)) as dst,
        ):
            src.backup(dst)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

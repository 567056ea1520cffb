"""Mapping sqlite3 errors to the store's vocabulary, with messages an operator can act on."""

from __future__ import annotations

import sqlite3

from queue_service.store.errors import (
    NotADatabase,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)

_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY"}


def is_busy(error: StoreError) -> bool:
    return type(error) is StoreUnavailable and "busy" in str(error)


def prefixed(path: str, exc: NotADatabase) -> str:
    text = str(exc)
    return text if text.startswith(path) else f"{path}: {text}"


def translate_error(exc: sqlite3.Error, path: str) -> StoreError:
    """Map an sqlite3 error to the store's vocabulary, with a message an operator can act on."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_INTERRUPT" or text == "interrupted":
        return QueryTimeout("the query took too long and was stopped; narrow the filters")
    if name in _BUSY or "locked" in text:
        return StoreUnavailable("the database is busy; try again shortly")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StoreUnavailable(
            "the database is read-only; writes are refused until it is writable"
        )
    if name == "SQLITE_FULL" or "disk is full" in text:
        return StoreUnavailable("the disk holding the database is full; free space to resume")
    if name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"} or "not a database" in text:
        return NotADatabase(f"{path} is not a queue-service SQLite database (or it is corrupt)")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StoreUnavailable(f"cannot open the database: {text}")
    if name in {"SQLITE_IOERR_WRITE", "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR_FSYNC"}:
        # A file-size limit (RLIMIT_FSIZE) or a quota shows up here rather than as "full".
        return StoreUnavailable(
            f"cannot write the database ({text}): the disk may be full, or a size limit or "
            "quota reached; writes resume when it can grow"
        )
    if name.startswith("SQLITE_IOERR"):
        return StoreUnavailable(f"I/O error on the database: {text}")
    return StoreError(text)

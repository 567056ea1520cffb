"""Exceptions the store raises. Callers map them to HTTP statuses and CLI exits."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for every store failure."""


class StoreUnavailable(StoreError):
    """The database cannot take writes (or answer) right now: busy, read-only, disk full.

    `public` is what an HTTP or MCP caller is told when the message itself names where the
    database is (a server's host, port and database name, a file's path): those stay in the
    server's log and the CLI's messages, and never reach callers, unauthenticated ones of
    /healthz included."""

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


class QueryTimeout(StoreUnavailable):
    """A query ran past its time budget and was interrupted."""


class NotADatabase(StoreError):
    """The file is not an SQLite database (or is corrupt)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer queue-service than this one."""


class IllegalTransition(StoreError):
    """A status change that the vocabulary forbids (e.g. out of a terminal status)."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {current}; it cannot become {wanted}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class Conflict(StoreError):
    """A uniqueness rule refused the write (e.g. a live token with that name exists)."""

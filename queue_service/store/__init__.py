"""The job store: the only part of queue-service that speaks SQL.

Everything else knows the `Store` protocol and opens a store with `open_store(db)`.
"""

from __future__ import annotations

from typing import Any

from queue_service.store.errors import (
    Conflict,
    IllegalTransition,
    JobNotFound,
    NotADatabase,
    QueryTimeout,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from queue_service.store.protocol import Store
from queue_service.store.sqlite import SQLiteStore
from queue_service.store.types import (
    AlertDelivery,
    AlertEvent,
    AlertEventKind,
    AlertRoute,
    AttemptEnd,
    Cursor,
    DeliveryStatus,
    EnqueueResult,
    ExternalJob,
    FireOutcome,
    FireResult,
    Job,
    JobCount,
    JobFilter,
    JobPage,
    JobSummary,
    Migration,
    NewJob,
    RecoveredJob,
    ScheduleState,
    SyncState,
    Token,
    UpsertCounts,
)

#: `--db sqlite:///PATH` is the SQLite file PATH; a value without a scheme is one too.
_SQLITE_PREFIX = "sqlite:///"
#: The URL schemes of a PostgreSQL database (libpq's).
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


def create_store(db: str, **options: Any) -> Store:
    """The store `db` names, not yet opened: a PostgreSQL URL (`postgresql://...` or
    `postgres://...`), or an SQLite file path (or `sqlite:///PATH`).

    Raises StoreUnavailable for a URL of a backend this version does not have."""
    if db.startswith(_SQLITE_PREFIX):
        db = db[len(_SQLITE_PREFIX) - 1 :]
    elif "://" in db:
        scheme = db.split("://", 1)[0]
        if scheme.lower() in POSTGRESQL_SCHEMES:
            # Imported here: a process on SQLite never loads the PostgreSQL driver.
            from queue_service.store.postgresql import PostgreSQLStore

            return PostgreSQLStore(db, **options)
        raise StoreUnavailable(
            f"--db {scheme}://…: this version stores jobs in SQLite (a file path, or "
            f"{_SQLITE_PREFIX}PATH) or PostgreSQL (postgresql://user@host:5432/dbname)"
        )
    return SQLiteStore(db, **options)


async def open_store(db: str, *, migrate: bool = True, **options: Any) -> Store:
    """Create the store `db` names and open it (applying migrations with `migrate`)."""
    store = create_store(db, **options)
    await store.open(migrate=migrate)
    return store


__all__ = [
    "AlertDelivery",
    "AlertEvent",
    "AlertEventKind",
    "AlertRoute",
    "AttemptEnd",
    "Conflict",
    "Cursor",
    "DeliveryStatus",
    "EnqueueResult",
    "ExternalJob",
    "FireOutcome",
    "FireResult",
    "IllegalTransition",
    "Job",
    "JobCount",
    "JobFilter",
    "JobNotFound",
    "JobPage",
    "JobSummary",
    "Migration",
    "NewJob",
    "NotADatabase",
    "QueryTimeout",
    "RecoveredJob",
    "SQLiteStore",
    "ScheduleState",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SyncState",
    "Token",
    "UpsertCounts",
    "create_store",
    "open_store",
]

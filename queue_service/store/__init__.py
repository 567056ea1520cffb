"""The job store: the only part of queue-service that speaks SQL."""

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
from queue_service.store.sqlite import SQLiteStore
from queue_service.store.types import (
    Cursor,
    EnqueueResult,
    ExternalJob,
    Job,
    JobFilter,
    JobPage,
    JobSummary,
    NewJob,
    SyncState,
    Token,
    UpsertCounts,
)

__all__ = [
    "Conflict",
    "Cursor",
    "EnqueueResult",
    "ExternalJob",
    "IllegalTransition",
    "Job",
    "JobFilter",
    "JobNotFound",
    "JobPage",
    "JobSummary",
    "NewJob",
    "NotADatabase",
    "QueryTimeout",
    "SQLiteStore",
    "SchemaTooNew",
    "StoreError",
    "StoreUnavailable",
    "SyncState",
    "Token",
    "UpsertCounts",
]

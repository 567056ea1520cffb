"""Converting between database rows and the store's dataclasses, for every backend.

A row is anything that answers `row["column"]`: an `sqlite3.Row` or a dict (psycopg's
`dict_row`). JSON columns hold JSON text in every backend, so decoding is the same too."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any, TypeAlias

from queue_service.statuses import Source, Status
from queue_service.store.types import Job, JobSummary, SyncState, Token

#: A row of any backend, read by column name.
Row: TypeAlias = sqlite3.Row | Mapping[str, Any]


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def encode_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


#: The Job fields stored as JSON text.
_JSON_FIELDS = frozenset({"payload", "result", "events", "logs"})
#: Every field of Job, read by name from a `SELECT *` / `RETURNING *` row of jobs: the
#: dataclass is the one list of a job's fields.
_JOB_FIELDS = tuple(f.name for f in fields(Job))
_STATUS_AT = _JOB_FIELDS.index("status")
_SOURCE_AT = _JOB_FIELDS.index("source")
_JSON_AT = tuple(i for i, name in enumerate(_JOB_FIELDS) if name in _JSON_FIELDS)


def _job(values: list[Any]) -> Job:
    """A Job from its stored values in field order (decoded in place)."""
    values[_STATUS_AT] = Status(values[_STATUS_AT])
    values[_SOURCE_AT] = Source(values[_SOURCE_AT])
    for i in _JSON_AT:
        values[i] = decode_json(values[i])
    return Job(*values)


def job_maker(columns: Sequence[str]) -> Callable[[Sequence[Any]], Job]:
    """A function making a Job from a row (a tuple) whose columns are `columns`, as
    job_from_row does, without a dict per row: the store's hot reads (claims) take it."""
    get = itemgetter(*(columns.index(name) for name in _JOB_FIELDS))
    return lambda row: _job(list(get(row)))


def job_from_row(row: Row) -> Job:
    values = row if isinstance(row, Mapping) else dict(zip(row.keys(), row, strict=True))
    return _job([values[name] for name in _JOB_FIELDS])


def summary_from_row(row: Row) -> JobSummary:
    return JobSummary(
        job_id=row["job_id"],
        plugin=row["plugin"],
        command=row["command"],
        status=Status(row["status"]),
        source=Source(row["source"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        attempt=row["attempt"],
        external_url=row["external_url"],
        seq=row["seq"],
    )


def token_from_row(row: Row) -> Token:
    return Token(
        token_id=row["token_id"],
        name=row["name"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def sync_state_from_row(row: Row) -> SyncState:
    return SyncState(
        workspace=row["workspace"],
        host=row["host"],
        watermark_ms=row["watermark_ms"],
        last_success_at=row["last_success_at"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
        runs_ingested=row["runs_ingested"],
        healthy=bool(row["healthy"]),
        extra=json.loads(row["extra"] or "{}"),
    )

"""Transaction bodies for jobs: insert, read, set a status, and the count deltas' fold.
Each runs on a store thread inside a transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from queue_service.statuses import Source, Status, allowed_predecessors
from queue_service.store.errors import IllegalTransition, JobNotFound
from queue_service.store.jobrules import new_job_id, new_job_row
from queue_service.store.sqlite.rows import encode_json, job_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import EnqueueResult, Job, JobCount, NewJob
from queue_service.timeutil import now_ts

#: The rollups the delta log is folded into, in one place.
_FOLDS = (
    "fold_job_counts",
    "fold_status",
    "fold_hour",
    "fold_hour_plugin",
    "fold_hour_command",
    "fold_hour_plugin_command",
)


def fold_count_deltas(conn: sqlite3.Connection) -> None:
    """Fold the count deltas the triggers logged in this transaction into job_counts and
    the hourly rollups (runs before every COMMIT of the writer)."""
    if conn.execute(q("has_count_deltas")).fetchone() is None:
        return
    for name in _FOLDS:
        conn.execute(q(name))
    conn.execute(q("clear_count_deltas"))


def insert_jobs(conn: sqlite3.Connection, jobs: list[NewJob]) -> list[EnqueueResult]:
    """Insert in the given order. Runs of jobs without a dedupe_key go in one executemany
    (they cannot conflict); a keyed job alone, to learn whether it was deduplicated."""
    now = now_ts()
    results: list[EnqueueResult] = []
    plain: list[dict[str, Any]] = []

    def flush() -> None:
        if plain:
            conn.executemany(q("insert_job"), plain)
            results.extend(EnqueueResult(p["job_id"], deduplicated=False) for p in plain)
            plain.clear()

    for job in jobs:
        job_id = job.job_id or new_job_id()
        params = new_job_row(job, job_id, now)
        if job.dedupe_key is None:
            plain.append(params)
            continue
        flush()
        if conn.execute(q("insert_job"), params).rowcount == 1:
            results.append(EnqueueResult(job_id, deduplicated=False))
            continue
        existing = conn.execute(q("find_active_dedupe"), params).fetchone()
        results.append(EnqueueResult(existing[0], deduplicated=True))
    flush()
    return results


def get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(q("get_job"), {"job_id": job_id}).fetchone()
    return None if row is None else job_from_row(row)


def set_status(
    conn: sqlite3.Connection, job_id: str, status: Status, result: Any, last_error: str | None
) -> Status:
    current = conn.execute(q("get_status"), {"job_id": job_id}).fetchone()
    if current is None:
        raise JobNotFound(job_id)
    allowed = sorted(allowed_predecessors(status, Source(current["source"])))
    row = conn.execute(
        q("set_status"),
        {
            "job_id": job_id,
            "status": status.value,
            "result": encode_json(result),
            "last_error": last_error,
            "now": now_ts(),
            "allowed_from": json.dumps(allowed),
        },
    ).fetchone()
    if row is None:
        raise IllegalTransition(job_id, current["status"], status.value)
    return Status(row[0])


_SOURCES = {source.value: source for source in Source}
_STATUSES = {status.value: status for status in Status}


def job_counts(conn: sqlite3.Connection) -> list[JobCount]:
    # Dict lookups: calling the enums costs more than the query on a few hundred rows.
    return [
        JobCount(plugin, command, _SOURCES[source], _STATUSES[status], int(n))
        for plugin, command, source, status, n in conn.execute(q("job_counts"))
    ]


def get_attempts(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(q("get_attempts"), {"job_id": job_id})]

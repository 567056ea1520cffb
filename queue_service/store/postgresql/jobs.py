"""The PostgreSQL store's jobs: enqueue (with dedupe), get_job, get_attempts, set_status,
cancel_job, prune_finished.

Owner: branch h-pgcore."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg.rows import dict_row

from queue_service.statuses import Source, Status, allowed_predecessors
from queue_service.store.errors import IllegalTransition, JobNotFound, StoreUnavailable
from queue_service.store.jobrules import cancel_refused, new_job_id, new_job_row
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import (
    NUL,
    encode_json,
    free_text,
    job_rows,
    refuse_nul,
)
from queue_service.store.postgresql.sql import q
from queue_service.store.types import EnqueueResult, Job, NewJob
from queue_service.timeutil import now_ts

#: How often a keyed enqueue looks again for the job holding its key, when that job
#: committed after the statement's snapshot or finished meanwhile (each look is a new
#: snapshot; two are nearly always enough).
_DEDUPE_LOOKS = 10


async def insert_jobs(conn: Conn, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
    """Insert in the given order: each run of jobs without a dedupe_key in one statement,
    a keyed job alone (to learn whether it was deduplicated)."""
    now = now_ts()
    results: list[EnqueueResult] = []
    plain: list[dict[str, Any]] = []

    async def flush() -> None:
        if not plain:
            return
        await conn.execute(
            q("insert_jobs"), {"created_at": now, "jobs": orjson.dumps(plain).decode()}
        )
        results.extend(EnqueueResult(row["job_id"], deduplicated=False) for row in plain)
        plain.clear()

    for job in jobs:
        row = new_job_row(job, job.job_id or new_job_id(), now)
        refuse_nul(**{k: v for k, v in row.items() if k != "payload" and isinstance(v, str)})
        if job.dedupe_key is None:
            plain.append(row)
            continue
        await flush()
        results.append(await _insert_deduped(conn, row, job.dedupe_key))
    await flush()
    return results


async def _insert_deduped(conn: Conn, row: dict[str, Any], dedupe_key: str) -> EnqueueResult:
    for _ in range(_DEDUPE_LOOKS):
        cur = await conn.execute(q("insert_job_deduped"), row)
        found = await cur.fetchone()
        if found is not None:
            return EnqueueResult(found[0], deduplicated=found[1])
    raise StoreUnavailable(
        f"the job holding dedupe key {dedupe_key!r} kept changing; try again shortly"
    )


async def get_job(conn: Conn, job_id: str) -> Job | None:
    if NUL in job_id:
        return None  # no stored id holds one
    cur = conn.cursor(row_factory=job_rows)
    await cur.execute(q("get_job"), {"job_id": job_id})
    return await cur.fetchone()


async def get_attempts(conn: Conn, job_id: str) -> list[dict[str, Any]]:
    if NUL in job_id:
        return []
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("get_attempts"), {"job_id": job_id})
    return await cur.fetchall()


async def set_status(
    conn: Conn, job_id: str, status: Status, result: Any, last_error: str | None
) -> Status:
    if NUL in job_id:
        raise JobNotFound(job_id)
    cur = await conn.execute(q("lock_job_status"), {"job_id": job_id})
    current = await cur.fetchone()
    if current is None:
        raise JobNotFound(job_id)
    allowed = sorted(allowed_predecessors(status, Source(current[1])))
    cur = await conn.execute(
        q("set_status"),
        {
            "job_id": job_id,
            "status": status.value,
            "result": encode_json(result),
            "last_error": free_text(last_error),
            "now": now_ts(),
            "allowed_from": allowed,
        },
    )
    row = await cur.fetchone()
    if row is None:
        raise IllegalTransition(job_id, current[0], status.value)
    return Status(row[0])


async def cancel(conn: Conn, job_id: str, reason: str) -> Status:
    """Cancel a queued job now, or flag a running one; Conflict when it already finished."""
    if NUL in job_id:
        raise JobNotFound(job_id)
    params = {"job_id": job_id, "now": now_ts(), "reason": free_text(reason)}
    cur = await conn.execute(q("cancel_job"), params)
    row = await cur.fetchone()
    if row is None:
        raise JobNotFound(job_id)
    status, source, canceled, flagged = row
    if canceled:
        return Status.CANCELED
    if flagged:
        return Status.RUNNING
    raise cancel_refused(job_id, status, source)


async def prune_finished(conn: Conn, before: str, limit: int) -> int:
    params = {"before": before, "limit": limit}
    cur = await conn.execute(q("prune_finished"), params)
    deleted = cur.rowcount
    await conn.execute(q("prune_schedule_fires"), params)
    await conn.execute(q("prune_alert_deliveries"), params)
    await conn.execute(q("prune_alert_events"), params)
    # (No sweep of count rows that fell to zero, as SQLite's prune does: the fold drops a
    # rollup row when it reaches zero.)
    return deleted


class JobsMixin(Database):
    """Enqueue, read, change and prune jobs."""

    async def enqueue(self, job: NewJob) -> EnqueueResult:
        return (await self._tx(insert_jobs, [job]))[0]

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        if not jobs:
            return []
        return await self._tx(insert_jobs, list(jobs))

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read_statement(get_job, job_id)

    async def get_attempts(self, job_id: str) -> list[dict[str, Any]]:
        return await self._read_statement(get_attempts, job_id)

    async def set_status(
        self,
        job_id: str,
        status: Status,
        *,
        result: Any = None,
        last_error: str | None = None,
    ) -> Status:
        return await self._tx(set_status, job_id, status, result, last_error)

    async def cancel_job(self, job_id: str, *, reason: str = "canceled by request") -> Status:
        return await self._tx(cancel, job_id, reason)

    async def prune_finished(self, *, before: str, limit: int = 500) -> int:
        return await self._tx(prune_finished, before, limit)

"""Transaction bodies for the worker paths. Each runs on a store thread inside BEGIN IMMEDIATE."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from queue_service.statuses import Status
from queue_service.store.errors import JobNotFound
from queue_service.store.jobrules import cancel_refused
from queue_service.store.sqlite import alerts
from queue_service.store.sqlite.rows import encode_json, job_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import AttemptEnd, Job, RecoveredJob
from queue_service.timeutil import now_ts


def claim_jobs(
    conn: sqlite3.Connection,
    plugin: str,
    limit: int,
    owner: str,
    lease_expires_at: str,
    concurrency: int | None,
    now: str,
) -> list[Job]:
    if concurrency is not None:
        running = int(conn.execute(q("running_count"), {"plugin": plugin}).fetchone()[0])
        limit = min(limit, concurrency - running)
    if limit <= 0:
        return []
    rows = conn.execute(
        q("claim_jobs"),
        {
            "plugin": plugin,
            "limit": limit,
            "owner": owner,
            "lease_expires_at": lease_expires_at,
            "now": now,
        },
    ).fetchall()
    jobs = [job_from_row(row) for row in rows]
    conn.executemany(
        q("insert_attempt"),
        [{"job_id": j.job_id, "attempt": j.attempt, "now": now} for j in jobs],
    )
    return jobs


def heartbeat(
    conn: sqlite3.Connection,
    held: Sequence[tuple[str, int]],
    owner: str,
    lease_expires_at: str,
) -> dict[str, bool]:
    """{job_id: cancel_requested} for the jobs whose lease we still hold."""
    kept: dict[str, bool] = {}
    for job_id, attempt in held:
        row = conn.execute(
            q("heartbeat"),
            {
                "job_id": job_id,
                "attempt": attempt,
                "owner": owner,
                "lease_expires_at": lease_expires_at,
            },
        ).fetchone()
        if row is not None:
            kept[job_id] = bool(row[0])
    return kept


def finish_attempt(
    conn: sqlite3.Connection, job_id: str, plugin: str, attempt: int, owner: str, end: AttemptEnd
) -> Status | None:
    now = now_ts()
    row = conn.execute(
        q("finish_job"),
        {
            "job_id": job_id,
            "attempt": attempt,
            "owner": owner,
            "status": end.status.value,
            "result": encode_json(end.result),
            "events": encode_json(end.events),
            "logs": encode_json(end.logs),
            "last_error": end.error,
            "run_after": end.run_after,
            "now": now,
        },
    ).fetchone()
    if row is None:
        # The lease was lost (recovered by another process): this outcome is stale.
        return None
    conn.execute(
        q("finish_attempt"),
        {
            "job_id": job_id,
            "attempt": attempt,
            "attempt_status": end.attempt_status,
            "exit_code": end.exit_code,
            "error": end.error,
            "stderr_tail": end.stderr_tail,
            "now": now,
        },
    )
    if end.state_updates:
        conn.execute(
            q("merge_plugin_state"),
            {"plugin": plugin, "updates": json.dumps(end.state_updates), "now": now},
        )
    return Status(row[0])


def recover_expired(conn: sqlite3.Connection, now: str, limit: int) -> list[RecoveredJob]:
    expired = conn.execute(q("expired_leases"), {"now": now, "limit": limit}).fetchall()
    if not expired:
        return []
    conn.execute(
        q("expired_attempts"),
        {"now": now, "pairs": json.dumps([[row["job_id"], row["attempt"]] for row in expired])},
    )
    params = {"now": now, "seqs": json.dumps([row["seq"] for row in expired])}
    return [
        RecoveredJob(row["job_id"], Status(row["status"]), row["attempt"])
        for row in conn.execute(q("recover_expired"), params).fetchall()
    ]


def release(conn: sqlite3.Connection, held: Sequence[tuple[str, int]], owner: str) -> list[str]:
    released: list[str] = []
    now = now_ts()
    for job_id, attempt in held:
        params = {"job_id": job_id, "attempt": attempt, "owner": owner, "now": now}
        if conn.execute(q("release_job"), params).fetchone() is not None:
            conn.execute(q("release_attempt"), params)
            released.append(job_id)
    return released


def cancel(conn: sqlite3.Connection, job_id: str, reason: str) -> Status:
    """Cancel a queued job now, or flag a running one; Conflict when it already finished."""
    now = now_ts()
    if conn.execute(
        q("cancel_queued"), {"job_id": job_id, "now": now, "reason": reason}
    ).fetchone():
        return Status.CANCELED
    if conn.execute(q("request_cancel"), {"job_id": job_id}).fetchone():
        return Status.RUNNING
    current = conn.execute(q("get_status"), {"job_id": job_id}).fetchone()
    if current is None:
        raise JobNotFound(job_id)
    raise cancel_refused(job_id, current["status"], current["source"])


def plugin_state(conn: sqlite3.Connection, plugin: str) -> dict[str, object]:
    row = conn.execute(q("get_plugin_state"), {"plugin": plugin}).fetchone()
    state: dict[str, object] = json.loads(row[0]) if row else {}
    return state


def queued_by_plugin(conn: sqlite3.Connection) -> dict[str, int]:
    return {plugin: int(n) for plugin, n in conn.execute(q("queued_by_plugin"))}


def oldest_queued_by_plugin(conn: sqlite3.Connection) -> dict[str, str]:
    """Plugins come from the exact counts, then one claim-index seek each."""
    oldest: dict[str, str] = {}
    for plugin in queued_by_plugin(conn):
        row = conn.execute(q("oldest_queued_run_after"), {"plugin": plugin}).fetchone()
        if row is not None:
            oldest[plugin] = row[0]
    return oldest


def cancel_queued(
    conn: sqlite3.Connection, plugin: str, command: str | None, reason: str, limit: int
) -> list[str]:
    params = {
        "plugin": plugin,
        "command": command,
        "reason": reason,
        "limit": limit,
        "now": now_ts(),
    }
    return [row[0] for row in conn.execute(q("cancel_queued_batch"), params)]


#: Count rows that fell to zero, dropped when pruning rather than on every commit.
_EMPTY_COUNTS = (
    "drop_empty_counts",
    "drop_empty_hour",
    "drop_empty_hour_plugin",
    "drop_empty_hour_command",
    "drop_empty_hour_plugin_command",
)


def prune_finished(conn: sqlite3.Connection, before: str, limit: int) -> int:
    params = {"before": before, "limit": limit}
    deleted = int(conn.execute(q("prune_finished"), params).rowcount)
    conn.execute(q("prune_schedule_fires"), params)
    alerts.prune(conn, before, limit)
    if deleted < limit:
        # The last batch of a pass (callers repeat while a batch is full): sweep the count
        # rows that fell to zero once per pass, not once per batch of 500.
        for name in _EMPTY_COUNTS:
            conn.execute(q(name))
    return deleted

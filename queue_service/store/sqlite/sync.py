"""Transaction bodies for mirrored external runs (the Databricks sync)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from queue_service.statuses import Source
from queue_service.store.sqlite.rows import encode_json, job_from_row, sync_state_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import ExternalJob, Job, SyncState, UpsertCounts


def _params(job: ExternalJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "plugin": job.plugin,
        "command": job.command,
        "source": job.source.value,
        "result": encode_json(job.result),
        "last_error": job.last_error,
        "attempt": job.attempt,
        "external_id": job.external_id,
        "external_url": job.external_url,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
    }


def upsert_external_jobs(conn: sqlite3.Connection, jobs: Sequence[ExternalJob]) -> UpsertCounts:
    inserted = updated = unchanged = 0
    for job in jobs:
        params = _params(job)
        new_status = job.status if job.status is not None else job.status_if_new
        cursor = conn.execute(q("insert_external_job"), {**params, "status": new_status.value})
        if cursor.rowcount == 1:
            inserted += 1
            continue
        status = job.status.value if job.status is not None else None
        cursor = conn.execute(q("update_external_job"), {**params, "status": status})
        if cursor.rowcount == 1:
            updated += 1
        else:
            unchanged += 1
    return UpsertCounts(inserted=inserted, updated=updated, unchanged=unchanged)


def save_sync_state(conn: sqlite3.Connection, state: SyncState) -> None:
    conn.execute(
        q("upsert_sync_state"),
        {
            "workspace": state.workspace,
            "host": state.host,
            "watermark_ms": state.watermark_ms,
            "last_success_at": state.last_success_at,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
            "runs_ingested": state.runs_ingested,
            "healthy": int(state.healthy),
            "extra": json.dumps(state.extra),
        },
    )


def record_sync_page(
    conn: sqlite3.Connection, state: SyncState, jobs: Sequence[ExternalJob]
) -> UpsertCounts:
    counts = upsert_external_jobs(conn, jobs)
    save_sync_state(conn, state)
    return counts


def sync_states(conn: sqlite3.Connection) -> list[SyncState]:
    return [sync_state_from_row(r) for r in conn.execute(q("get_sync_states"))]


def active_external_jobs(conn: sqlite3.Connection, source: Source) -> list[Job]:
    return [
        job_from_row(r) for r in conn.execute(q("active_external_jobs"), {"source": source.value})
    ]

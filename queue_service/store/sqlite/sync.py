"""Transaction bodies for mirrored external runs (the Databricks sync)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from queue_service.statuses import Source
from queue_service.store.sqlite.rows import job_from_row, sync_state_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.syncrows import external_job_params, sync_state_params
from queue_service.store.types import ExternalJob, Job, SyncState, UpsertCounts


def upsert_external_jobs(conn: sqlite3.Connection, jobs: Sequence[ExternalJob]) -> UpsertCounts:
    inserted = updated = unchanged = 0
    for job in jobs:
        params = external_job_params(job)
        cursor = conn.execute(q("insert_external_job"), params)
        if cursor.rowcount == 1:
            inserted += 1
            continue
        cursor = conn.execute(q("update_external_job"), params)
        if cursor.rowcount == 1:
            updated += 1
        else:
            unchanged += 1
    return UpsertCounts(inserted=inserted, updated=updated, unchanged=unchanged)


def save_sync_state(conn: sqlite3.Connection, state: SyncState) -> None:
    conn.execute(q("upsert_sync_state"), sync_state_params(state))


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

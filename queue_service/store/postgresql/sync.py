"""The PostgreSQL store's mirrored external runs (the Databricks sync): page upserts, sync
state, and one sync per workspace at a time across processes and hosts.

`exclusive_sync` holds a session advisory lock on a connection of its own for the length
of a pass; a process that finds it taken skips its pass. A host that dies mid-sync loses
its session, and the lock with it; what it committed is consistent, since each batch of
pages and the sync state that goes with it (the watermark, the pass's progress) are one
transaction (`record_sync_page`): the next pass, anywhere, resumes from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from psycopg.rows import dict_row

from queue_service.statuses import Source
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import free_text, job_from_row, sync_state_from_row
from queue_service.store.postgresql.sql import q
from queue_service.store.syncrows import external_job_params, sync_state_params
from queue_service.store.types import ExternalJob, Job, SyncState, UpsertCounts

#: The text columns a remote system fills (NUL is replaced: PostgreSQL text cannot hold it).
_REMOTE_TEXT = ("command", "last_error", "external_url")


def _without_repeats(jobs: Sequence[ExternalJob]) -> list[list[ExternalJob]]:
    """Consecutive chunks in which no job id repeats: a run listed twice is written twice,
    in order, as one by one writes would."""
    chunks: list[list[ExternalJob]] = [[]]
    seen: set[str] = set()
    for job in jobs:
        if job.job_id in seen:
            chunks.append([])
            seen.clear()
        seen.add(job.job_id)
        chunks[-1].append(job)
    return [chunk for chunk in chunks if chunk]


async def _upsert(conn: Conn, jobs: Sequence[ExternalJob]) -> UpsertCounts:
    inserted = updated = 0
    for chunk in _without_repeats(jobs):
        rows = [external_job_params(job) for job in chunk]
        for row in rows:
            for name in _REMOTE_TEXT:
                row[name] = free_text(row[name])
        arrays: dict[str, Any] = {name: [row[name] for row in rows] for name in rows[0]}
        cur = await conn.execute(q("upsert_external_jobs"), arrays)
        counts = await cur.fetchone()
        assert counts is not None
        inserted += int(counts[0])
        updated += int(counts[1])
    return UpsertCounts(
        inserted=inserted, updated=updated, unchanged=len(jobs) - inserted - updated
    )


async def _save_state(conn: Conn, state: SyncState) -> None:
    params = sync_state_params(state)
    params["last_error"] = free_text(params["last_error"])
    await conn.execute(q("upsert_sync_state"), params)


async def _record_page(conn: Conn, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
    counts = await _upsert(conn, jobs)
    await _save_state(conn, state)
    return counts


async def _sync_states(conn: Conn) -> list[SyncState]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("get_sync_states"))
    return [sync_state_from_row(row) for row in await cur.fetchall()]


async def _active_external_jobs(conn: Conn, source: Source) -> list[Job]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("active_external_jobs"), {"source": source.value})
    return [job_from_row(row) for row in await cur.fetchall()]


class SyncMixin(Database):
    """The Databricks sync's methods of the Store protocol (see the module docstring)."""

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        return await self._tx(_record_page, state, list(jobs))

    async def upsert_external_jobs(self, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        return await self._tx(_upsert, list(jobs))

    async def save_sync_state(self, state: SyncState) -> None:
        await self._tx(_save_state, state)

    async def get_sync_states(self) -> list[SyncState]:
        return await self._read_statement(_sync_states)

    async def list_active_external_jobs(self, source: Source) -> list[Job]:
        return await self._read_statement(_active_external_jobs, source)

    @contextlib.asynccontextmanager
    async def exclusive_sync(self, workspace: str) -> AsyncIterator[bool]:
        conn = await self._connect()
        try:
            cur = await conn.execute(q("try_sync_lock"), {"workspace": workspace})
            row = await cur.fetchone()
            assert row is not None
            yield bool(row[0])
        finally:
            # Closing the session releases its lock.
            with contextlib.suppress(Exception):
                await conn.close()

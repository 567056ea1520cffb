"""`SQLiteStore`: the `Store` protocol on one SQLite file.

Each method hands a transaction body (jobs.py, work.py, tokens.py, sync.py,
schedules.py, listing.py) to the writer thread or a reader; the contracts are documented
on the protocol (queue_service/store/protocol.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from queue_service.statuses import Source, Status
from queue_service.store.sqlite import alerts, listing, portable, schedules, sync, tokens, work
from queue_service.store.sqlite import jobs as _jobs
from queue_service.store.sqlite.connection import Database
from queue_service.store.sqlite.sql import q
from queue_service.store.types import (
    AlertDelivery,
    AlertRoute,
    AttemptEnd,
    Cursor,
    DeliveryStatus,
    EnqueueResult,
    ExternalJob,
    FireResult,
    Job,
    JobCount,
    JobFilter,
    JobPage,
    JobSummary,
    NewJob,
    RecoveredJob,
    ScheduleState,
    SyncState,
    Token,
    UpsertCounts,
)
from queue_service.timeutil import format_ts, utcnow


class SQLiteStore(Database):
    """The job store on one SQLite file (WAL, BEGIN IMMEDIATE, group commit)."""

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: NewJob) -> EnqueueResult:
        (result,) = await self._write(_jobs.insert_jobs, [job])
        self._work.set()
        return result

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        results = await self._write(_jobs.insert_jobs, list(jobs))
        self._work.set()
        return results

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read_statement(_jobs.get_job, job_id)

    async def get_attempts(self, job_id: str) -> list[dict[str, Any]]:
        return await self._read_statement(_jobs.get_attempts, job_id)

    async def list_jobs(
        self, filters: JobFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> JobPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        # Every shape is a few index seeks plus `limit` rows, and totals come from counts
        # (time bounds: hourly rollups plus two partial hours): bounded, so it runs inline.
        return await self._read_inline(listing.list_jobs, filters, limit, cursor)

    async def queue_depth(self) -> int:
        return await self._read_statement(lambda c: int(c.execute(q("queue_depth")).fetchone()[0]))

    async def count_jobs_by_status(self, filters: JobFilter) -> dict[Status, int]:
        return await self._read_statement(listing.count_by_status, filters)

    async def count_jobs_by_plugin(self) -> dict[str, dict[Status, int]]:
        return await self._read_statement(listing.count_by_plugin)

    async def oldest_queued_job(self) -> JobSummary | None:
        return await self._read_statement(listing.oldest_queued)

    async def job_counts(self) -> list[JobCount]:
        # One statement over the counts (bounded by the number of keys): inline.
        return await self._read_statement(_jobs.job_counts)

    async def oldest_queued_by_plugin(self) -> dict[str, str]:
        # A count read plus one index seek per plugin, in one snapshot.
        return await self._read_inline(work.oldest_queued_by_plugin)

    async def set_status(
        self,
        job_id: str,
        status: Status,
        *,
        result: Any = None,
        last_error: str | None = None,
    ) -> Status:
        return await self._write(_jobs.set_status, job_id, status, result, last_error)

    async def cancel_job(self, job_id: str, *, reason: str = "canceled by request") -> Status:
        return await self._write(work.cancel, job_id, reason)

    async def prune_finished(self, *, before: str, limit: int = 500) -> int:
        return await self._write(work.prune_finished, before, limit)

    # -- tokens ----------------------------------------------------------

    async def create_token(
        self, name: str, token_hash: str, scopes: Sequence[str], expires_at: str | None
    ) -> Token:
        return await self._write(tokens.create, name, token_hash, scopes, expires_at)

    async def create_first_token(
        self, name: str, token_hash: str, scopes: Sequence[str]
    ) -> Token | None:
        return await self._write(tokens.create_first, name, token_hash, scopes)

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        return await self._read_statement(tokens.by_hash, token_hash)

    async def list_tokens(self) -> list[Token]:
        return await self._read(tokens.list_all)

    async def count_live_tokens(self) -> int:
        return await self._read(tokens.count_live)

    async def revoke_token(self, name: str) -> bool:
        return await self._write(tokens.revoke, name)

    async def touch_token(self, token_id: int) -> None:
        await self._write(tokens.touch, token_id)

    # -- worker ----------------------------------------------------------

    async def claim_jobs(
        self,
        plugin: str,
        *,
        limit: int,
        owner: str,
        lease_seconds: float,
        concurrency: int | None = None,
        now: datetime | None = None,
    ) -> list[Job]:
        moment = now or utcnow()
        lease = format_ts(moment + timedelta(seconds=lease_seconds))
        return await self._write(
            work.claim_jobs, plugin, limit, owner, lease, concurrency, format_ts(moment)
        )

    async def heartbeat(
        self,
        held: Sequence[tuple[str, int]],
        *,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> dict[str, bool]:
        if not held:
            return {}
        lease = format_ts((now or utcnow()) + timedelta(seconds=lease_seconds))
        return await self._write(work.heartbeat, list(held), owner, lease)

    async def finish_attempt(
        self, job_id: str, *, plugin: str, attempt: int, owner: str, end: AttemptEnd
    ) -> Status | None:
        return await self._write(work.finish_attempt, job_id, plugin, attempt, owner, end)

    async def recover_expired_leases(
        self, *, now: datetime | None = None, limit: int = 500
    ) -> list[RecoveredJob]:
        recovered = await self._write(work.recover_expired, format_ts(now or utcnow()), limit)
        if any(job.status is Status.QUEUED for job in recovered):
            self._work.set()
        return recovered

    async def release_jobs(self, held: Sequence[tuple[str, int]], *, owner: str) -> list[str]:
        if not held:
            return []
        return await self._write(work.release, list(held), owner)

    async def get_plugin_state(self, plugin: str) -> dict[str, Any]:
        return await self._read(work.plugin_state, plugin)

    async def queued_by_plugin(self) -> dict[str, int]:
        return await self._read_statement(work.queued_by_plugin)

    async def cancel_queued(
        self,
        *,
        plugin: str,
        command: str | None = None,
        reason: str = "canceled by request",
        limit: int = 500,
    ) -> list[str]:
        return await self._write(work.cancel_queued, plugin, command, reason, limit)

    async def wait_for_work(self) -> None:
        # Other processes' jobs are found when the caller's wait (its poll interval) ends.
        await self._work.wait()

    # -- external runs (Databricks sync) ---------------------------------

    @contextlib.asynccontextmanager
    async def exclusive_sync(self, workspace: str) -> AsyncIterator[bool]:
        # The sync's in-process lock is the exclusion (one serving process per file).
        yield True

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        return await self._write(sync.record_sync_page, state, list(jobs))

    async def upsert_external_jobs(self, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        return await self._write(sync.upsert_external_jobs, list(jobs))

    async def save_sync_state(self, state: SyncState) -> None:
        await self._write(sync.save_sync_state, state)

    async def get_sync_states(self) -> list[SyncState]:
        return await self._read(sync.sync_states)

    async def list_active_external_jobs(self, source: Source) -> list[Job]:
        return await self._read(sync.active_external_jobs, source)

    # -- schedules -------------------------------------------------------

    async def get_schedule_states(self) -> dict[str, ScheduleState]:
        return await self._read(schedules.schedule_states)

    async def fire_schedule_slot(
        self,
        schedule_key: str,
        slot: str,
        next_run_at: str,
        job: NewJob,
        skip_if_running: bool,
    ) -> FireResult:
        fired = await self._write(
            schedules.fire_slot, schedule_key, slot, next_run_at, job, skip_if_running
        )
        if fired.job_id is not None:
            self._work.set()
        return fired

    async def set_schedule_next_run(self, schedule_key: str, next_run_at: str) -> None:
        await self._write(schedules.set_next_run, schedule_key, next_run_at)

    # -- the portable form -------------------------------------------------

    async def portable_counts(self) -> dict[str, int]:
        return await self._read(portable.counts)

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 1000
    ) -> tuple[list[tuple[Any, ...]], Any]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._read(portable.export_rows, table, after, limit)

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        return await self._write(portable.import_rows, table, list(rows))

    # -- alerts ----------------------------------------------------------

    async def record_long_running(
        self, *, running_seconds: int, now: datetime | None = None, limit: int = 500
    ) -> int:
        return await self._write(
            alerts.record_long_running, running_seconds, now or utcnow(), limit
        )

    async def route_alert_events(
        self, route: AlertRoute, *, now: datetime | None = None, limit: int = 500
    ) -> int:
        return await self._write(alerts.route_events, route, now or utcnow(), limit)

    async def claim_alert_deliveries(
        self,
        alert: str,
        *,
        owner: str,
        lease_seconds: float,
        limit: int,
        now: datetime | None = None,
    ) -> list[AlertDelivery]:
        moment = now or utcnow()
        lease = format_ts(moment + timedelta(seconds=lease_seconds))
        return await self._write(
            alerts.claim_deliveries, alert, owner, lease, format_ts(moment), limit
        )

    async def finish_alert_delivery(
        self,
        delivery_id: str,
        *,
        owner: str,
        attempt: int,
        status: DeliveryStatus,
        response_status: int | None = None,
        error: str | None = None,
        retry_at: str | None = None,
    ) -> bool:
        return await self._write(
            alerts.finish_delivery,
            delivery_id,
            owner,
            attempt,
            status,
            response_status,
            error,
            retry_at,
            format_ts(utcnow()),
        )

    async def recent_alert_deliveries(
        self, alert: str, *, limit: int = 20, failures_only: bool = False
    ) -> list[AlertDelivery]:
        return await self._read(alerts.recent_deliveries, alert, limit, failures_only)

    async def alert_delivery_counts(self, alert: str) -> dict[str, int]:
        return await self._read(alerts.delivery_counts, alert)

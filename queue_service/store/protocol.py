"""The `Store` protocol: everything the API, worker, scheduler, sync, auth and CLI may ask
of a job store. Each backend (SQLite today) implements it; the contract suite in tests/
runs against every implementation.

Timestamps cross this boundary as fixed-width UTC text (`timeutil.format_ts`), so text
order is time order in every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from queue_service.statuses import Source, Status
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
    Migration,
    NewJob,
    RecoveredJob,
    ScheduleState,
    SyncState,
    Token,
    UpsertCounts,
)


class Store(Protocol):
    """A job store. Call `await open()` before use and `await close()` after; every
    method is a coroutine that never blocks the event loop for long."""

    #: Why the store only reads (its database cannot be written), or None.
    read_only: str | None

    # -- lifecycle -------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[Migration]:
        """Open the database, create it if missing and (with `migrate`) apply pending
        migrations; return those applied. Raises NotADatabase, SchemaTooNew or
        StoreUnavailable (the message says why)."""
        ...

    async def close(self) -> None:
        """Finish queued writes and release every connection. Idempotent."""
        ...

    async def schema_version(self) -> int: ...

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: NewJob) -> EnqueueResult:
        """Insert a queued job. With a dedupe_key that matches a queued or running job of
        the same plugin and command, return that job instead (deduplicated=True).

        Every field of `job` is stored, `submitted_by_token` included (Job returns it and
        JobFilter.submitted_by_token lists by it)."""
        ...

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Enqueue several jobs in one transaction: all or none."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def get_attempts(self, job_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt of a job, in the order recorded: attempt, status,
        started_at, completed_at, exit_code, error, stderr_tail."""
        ...

    async def list_jobs(
        self, filters: JobFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> JobPage:
        """A page of jobs, newest first, with the exact total matching `filters`.

        Order is (created_at, seq) descending, so keyset paging with `cursor` never skips
        or repeats a job, even while jobs are added. Raises ValueError when limit < 1.

        `filters.submitted_by_token` keeps only the jobs whose NewJob.submitted_by_token
        was that id (jobs without one never match); it combines with every other filter,
        and the total stays exact. Its cost may grow with that token's own jobs, never with
        the whole table (SQLite: the partial index jobs_by_submitter, migration 0004).
        """
        ...

    async def queue_depth(self) -> int:
        """Jobs that are queued or running."""
        ...

    async def count_jobs_by_status(self, filters: JobFilter) -> dict[Status, int]:
        """Exact counts per status of the jobs matching `filters` (plugin, command,
        statuses, sources), from the count rollups: no walk over the jobs. Statuses
        without jobs are left out. Raises ValueError when `filters` has time bounds."""
        ...

    async def count_jobs_by_plugin(self) -> dict[str, dict[Status, int]]:
        """Exact counts per plugin and status, every source together, from the count
        rollups: no walk over the jobs. Plugins and statuses without jobs are left out."""
        ...

    async def oldest_queued_job(self) -> JobSummary | None:
        """The queued job (any source) created first, ties broken by insertion order, or
        None when nothing is queued. Jobs waiting for a later `run_after` count: they are
        queued. One index seek."""

    async def job_counts(self) -> list[JobCount]:
        """How many jobs there are per (plugin, command, source, status), for every such
        key with at least one job (no row with n <= 0), in no particular order. Exact, as
        `list_jobs` totals are, and read from the counts the store keeps, never by walking
        the jobs: the cost grows with the number of keys, not of jobs."""
        ...

    async def oldest_queued_by_plugin(self) -> dict[str, str]:
        """For each plugin with queued local jobs: the earliest `run_after` among them,
        i.e. when the longest-waiting one became claimable (it may lie in the future when
        every queued job of the plugin waits for a retry backoff or a later start). One
        index seek per plugin, whatever the number of jobs."""
        ...

    async def set_status(
        self,
        job_id: str,
        status: Status,
        *,
        result: Any = None,
        last_error: str | None = None,
    ) -> Status:
        """Move a job to `status` if the vocabulary allows it from its current status.
        Raises JobNotFound or IllegalTransition; nothing is written in either case."""
        ...

    async def cancel_job(self, job_id: str, *, reason: str = "canceled by request") -> Status:
        """Cancel a queued job (returns canceled) or flag a running one (returns running).
        Raises JobNotFound, or Conflict when the job already finished or mirrors a run
        of another system."""
        ...

    async def prune_finished(self, *, before: str, limit: int = 500) -> int:
        """Delete up to `limit` finished jobs completed before `before`, in one small
        transaction (call repeatedly). Queued and running jobs are never pruned. The same
        transaction deletes up to `limit` alert deliveries that finished (sent or failed)
        before `before`, and up to `limit` alert events recorded before `before` that no
        pending delivery refers to. Returns the number of jobs deleted."""
        ...

    # -- tokens ----------------------------------------------------------

    async def create_token(
        self, name: str, token_hash: str, scopes: Sequence[str], expires_at: str | None
    ) -> Token:
        """Store a token's hash (never the secret). Conflict when a live token has `name`."""
        ...

    async def create_first_token(
        self, name: str, token_hash: str, scopes: Sequence[str]
    ) -> Token | None:
        """Create a token only when none has ever existed (revoked and expired ones
        count), atomically (two processes starting on a fresh database create one between
        them). None otherwise."""
        ...

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        """The token row with this hash, and the stored hash (for a constant-time compare)."""
        ...

    async def list_tokens(self) -> list[Token]: ...

    async def count_live_tokens(self) -> int:
        """Tokens neither revoked nor expired."""
        ...

    async def revoke_token(self, name: str) -> bool:
        """Revoke the live token called `name`; False when there is none."""
        ...

    async def touch_token(self, token_id: int) -> None: ...

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
        """Claim up to `limit` runnable queued jobs of `plugin` for `owner`, atomically:
        each becomes running, its attempt is incremented, started_at and a lease are set
        and an attempt row is opened. With `concurrency`, running jobs of the plugin (in
        every process) count against it. A job is never claimed twice."""
        ...

    async def heartbeat(
        self,
        held: Sequence[tuple[str, int]],
        *,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> dict[str, bool]:
        """Extend the leases of (job_id, attempt) pairs `owner` holds to `now` plus
        `lease_seconds`. Returns {job_id: cancel_requested} for the leases still held; a
        job missing from the answer was recovered elsewhere and must not be finished."""
        ...

    async def finish_attempt(
        self, job_id: str, *, plugin: str, attempt: int, owner: str, end: AttemptEnd
    ) -> Status | None:
        """Record how an attempt ended and move the job on, in one transaction, with the
        plugin's state updates. Returns the job's new status (a requested cancel wins
        over a retry), or None, writing nothing, when `owner` no longer holds the lease."""
        ...

    async def recover_expired_leases(
        self, *, now: datetime | None = None, limit: int = 500
    ) -> list[RecoveredJob]:
        """Requeue (or mark dead) running jobs whose lease expired; the lost attempt
        counts. Safe from several processes at once: each lease is recovered once."""
        ...

    async def release_jobs(self, held: Sequence[tuple[str, int]], *, owner: str) -> list[str]:
        """Graceful shutdown: return running jobs to queued without spending the attempt."""
        ...

    async def get_plugin_state(self, plugin: str) -> dict[str, Any]: ...

    async def queued_by_plugin(self) -> dict[str, int]:
        """Queued local jobs per plugin (from the exact counts: no table walk)."""
        ...

    async def cancel_queued(
        self,
        *,
        plugin: str,
        command: str | None = None,
        reason: str = "canceled by request",
        limit: int = 500,
    ) -> list[str]:
        """Cancel up to `limit` queued local jobs of `plugin` (and `command`) in one
        transaction; returns their ids (call repeatedly for more)."""
        ...

    async def wait_for_work(self) -> None:
        """Return when a job may have become claimable; the caller bounds the wait (the
        worker: its poll interval) and may cancel it. Never raises for an unavailable
        database. A wake-up that comes while nobody waits is kept for the next call, so a
        job enqueued between a claim round and the wait that follows is not left for the
        poll interval.

        SQLite: the jobs this store enqueues (or requeues) wake it; other processes' are
        found when the caller's wait ends. PostgreSQL: every process's, on any host
        (LISTEN/NOTIFY on a connection of its own, opened by the first call); while that
        connection is down (a server restart) only the caller's bound ends the wait, so
        the worker polls until it is back.
        """
        ...

    # -- external runs (Databricks sync) ---------------------------------

    def exclusive_sync(self, workspace: str) -> AbstractAsyncContextManager[bool]:
        """`async with store.exclusive_sync(workspace) as mine:` -- while the block runs,
        no other process syncs `workspace` when `mine` is True; False means another
        process is syncing it now (skip this pass).

        PostgreSQL: a session advisory lock on a connection of its own, so a process that
        dies mid-sync releases it with its session (what it committed stays consistent:
        runs and the sync state go in one transaction). SQLite: always True: the sync's
        in-process lock is the exclusion."""
        ...

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        """Upsert a page of mirrored runs and save the sync state, in one transaction."""
        ...

    async def upsert_external_jobs(self, jobs: Sequence[ExternalJob]) -> UpsertCounts: ...

    async def save_sync_state(self, state: SyncState) -> None: ...

    async def get_sync_states(self) -> list[SyncState]: ...

    async def list_active_external_jobs(self, source: Source) -> list[Job]:
        """Jobs of `source` that are queued or running."""
        ...

    # -- schedules -------------------------------------------------------

    async def get_schedule_states(self) -> dict[str, ScheduleState]: ...

    async def fire_schedule_slot(
        self,
        schedule_key: str,
        slot: str,
        next_run_at: str,
        job: NewJob,
        skip_if_running: bool,
    ) -> FireResult:
        """Fire one schedule slot at most once across processes, in one transaction."""
        ...

    async def set_schedule_next_run(self, schedule_key: str, next_run_at: str) -> None: ...

    # -- the portable form (store/portable.py: `queue-service copy`) ------

    async def portable_counts(self) -> dict[str, int]:
        """Rows in each portable table (`portable.PORTABLE_TABLES`), by table name."""
        ...

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 1000
    ) -> tuple[list[tuple[Any, ...]], Any]:
        """Up to `limit` rows of portable table `table`, in the store's insertion order,
        each a tuple of the table's portable columns; and the opaque cursor that continues
        after them (None after the last page). `after=None` starts at the beginning."""
        ...

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert portable rows into `table` in one transaction, skipping rows the store
        already holds (by the table's identity or any unique key); returns how many were
        inserted. Jobs get new internal sequence numbers in the order given, and the
        counts behind `list_jobs` totals follow them in the same transaction."""

    # -- alerts ----------------------------------------------------------
    #
    # The outbox: whenever a job's status becomes failed, timed_out or dead (inserted so, or
    # changed to it by any write, the worker's, lease recovery's, the sync's or a
    # set_status), the store records an AlertEvent of kind `status` IN THE SAME
    # TRANSACTION as the change (SQLite: triggers on jobs). Events carry the job's plugin,
    # command, source, new status, attempt, last_error, external_url, started_at and
    # completed_at, and recorded_at (now, fixed-width UTC). Event ids increase.

    async def record_long_running(
        self, *, running_seconds: int, now: datetime | None = None, limit: int = 500
    ) -> int:
        """Record an event of kind `running_long` (with `running_seconds` set) for up to
        `limit` jobs that are running and started before `now` - `running_seconds`, at most
        one per (job, attempt, running_seconds) ever. Returns how many were recorded."""
        ...

    async def route_alert_events(
        self, route: AlertRoute, *, now: datetime | None = None, limit: int = 500
    ) -> int:
        """In one transaction: read up to `limit` events after the cursor of `route.alert`
        (a cursor seen for the first time starts after the newest event), make a
        delivery of each event `route.matches`, and move the cursor past the events read.
        Returns how many events were read (call again while it equals `limit`).

        Without a rate limit each matching event becomes a new pending delivery
        (`next_attempt_at` = `not_before` = now). With `rate_limit_seconds` R, deliveries
        are grouped by the event's plugin: when the latest delivery of (alert, plugin) has
        `not_before` + R > now, the event is folded into it (`events` + 1, its
        `last_event` becomes this event) if it is pending, never attempted and not
        leased; otherwise a new delivery is made with `not_before` = `next_attempt_at` =
        that window's end. So at most one delivery per plugin and window is sent, and
        what a receiver may already have seen never changes. Safe from several processes
        at once: an event becomes at most one delivery per alert."""
        ...

    async def claim_alert_deliveries(
        self,
        alert: str,
        *,
        owner: str,
        lease_seconds: float,
        limit: int,
        now: datetime | None = None,
    ) -> list[AlertDelivery]:
        """Claim up to `limit` pending deliveries of `alert` that are due
        (`next_attempt_at` <= now) and not leased (or whose lease expired: the sender
        died), oldest due first, atomically: each gets `attempts` + 1, `last_attempt_at`
        = now and a lease for `owner` until now + `lease_seconds`. A delivery is never
        held by two owners at once. Returned with their first and last events, in
        creation order."""
        ...

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
        """Record how attempt number `attempt` of a claimed delivery went and release its
        lease: `sent` or `failed` (given up) finish it (`finished_at` = now); `pending`
        with `retry_at` sets its next attempt. `error` (when given) replaces
        `last_error`; `response_status` is stored as given. Returns False, writing
        nothing, when `owner` no longer holds that attempt's lease or the delivery is
        not pending."""
        ...

    async def recent_alert_deliveries(
        self, alert: str, *, limit: int = 20, failures_only: bool = False
    ) -> list[AlertDelivery]:
        """The latest `limit` deliveries of `alert`, newest first, with their events; with
        `failures_only`, only those that have a `last_error` (any status)."""
        ...

    async def alert_delivery_counts(self, alert: str) -> dict[str, int]:
        """How many deliveries of `alert` are pending, sent and failed (every key present)."""
        ...

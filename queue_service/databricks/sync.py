"""The Databricks sync worker: copies run state of each workspace into the job store.

One sync of a workspace ("a pass"):

1. **Active runs**: every page of ``runs/list?active_only=true``.
2. **Window**: every page of ``runs/list?start_time_from=W`` where W is the
   watermark minus ``overlap_seconds`` (first sync: now minus ``lookback_hours``).
   Runs come newest first, so the watermark can only move once the *last*
   page of the window is stored: it becomes the newest ``start_time`` seen.
   Consecutive pages are written together, by one ``store.record_sync_page``
   call that commits their runs and the workspace's ``SyncState`` in one
   transaction: a batch ends at ``COMMIT_MAX_RUNS`` runs, after the last page,
   or when the next page has not arrived ``COMMIT_MAX_SECONDS`` after the
   batch's first one. The state carries the pass's progress (``extra["pass"]``:
   window start, newest and oldest start time stored), computed from the
   committed pages only. A pass interrupted by a crash loses at most the
   pages not yet committed and resumes with ``start_time_to`` = the oldest
   start time stored (inclusive, so nothing at the page boundary is lost);
   re-writing a run is an idempotent upsert by its deterministic job id, so
   nothing is duplicated either.
3. **Reconcile**: a run that is active here but was not returned in steps 1-2
   (it finished long after it started, or its repair finished, or it is gone)
   is fetched with ``runs/get``. If Databricks says it does not exist, the job
   becomes ``dead``: only after both listings succeeded, and only on an explicit
   "does not exist" (never on a 404 from an unknown endpoint or a fault).

Several processes (hosts) may run the sync against one store: a pass runs only in the
process that holds the workspace's ``store.exclusive_sync`` (PostgreSQL: a session advisory
lock, released when that process ends, even by a crash); the others skip the pass. So each
run is fetched and written by one pass at a time, and a host dying mid-pass leaves the
committed batches and their state for the next pass, wherever it runs.

Faults: 401/403 (and configuration errors) mark the workspace unhealthy and
are retried every ``backoff_max_seconds`` with a freshly built client (so a
fixed token or profile is picked up). Transient faults (unreachable, 5xx,
timeouts, throttling beyond the SDK's retry budget, malformed JSON, store
errors) back off exponentially from ``backoff_initial_seconds``. Workspaces
sync independently: one broken workspace never delays the others, and no
fault ends :meth:`DatabricksSync.run_forever`.

Every SDK call runs in a thread of the loop's default executor; the SDK is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from queue_service.databricks.client import (
    AuthFault,
    ConfigFault,
    DatabricksFault,
    RunsClient,
    TransientFault,
)
from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig
from queue_service.databricks.mapping import MalformedRun, map_run, run_job_id
from queue_service.databricks.status import (
    EXTRA_FAILURES,
    EXTRA_FAULT_KIND,
    EXTRA_LAST_SYNC,
    EXTRA_NEXT_ATTEMPT,
    EXTRA_PROGRESS,
    SyncStatus,
    build_status,
)
from queue_service.statuses import Source, Status
from queue_service.store import ExternalJob, Job, Store, StoreUnavailable, SyncState
from queue_service.timeutil import format_ts, utcnow

log = logging.getLogger("queue_service.databricks.sync")


ClientFactory = Callable[[WorkspaceConfig, DatabricksConfig], RunsClient]

#: A batch of pages is committed once it holds this many runs (20 full pages)...
COMMIT_MAX_RUNS = 500
#: ...or when the next page has not arrived this many seconds after the batch's first
#: page, so that a slow or hanging workspace never holds fetched runs back for long.
COMMIT_MAX_SECONDS = 1.0


@dataclass(slots=True)
class WorkspaceResult:
    """What one sync of one workspace did."""

    workspace: str
    host: str | None = None
    ok: bool = False
    #: Another process was syncing the workspace, so this pass did nothing.
    skipped: bool = False
    fault_kind: str | None = None
    error: str | None = None
    pages: int = 0
    runs: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_malformed: int = 0
    unknown_state: int = 0
    reconciled: int = 0
    vanished: int = 0
    resumed: bool = False
    watermark_ms: int | None = None
    duration_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SyncSummary:
    """Results of one :meth:`DatabricksSync.sync_once` over every configured workspace."""

    workspaces: list[WorkspaceResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.workspaces)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "workspaces": [w.as_dict() for w in self.workspaces]}

    def lines(self) -> list[str]:
        """One human-readable line per workspace, for the CLI."""
        out = []
        for w in self.workspaces:
            if w.skipped:
                out.append(f"{w.workspace}: skipped, another process is syncing it")
            elif w.ok:
                out.append(
                    f"{w.workspace}: ok, {w.runs} runs in {w.pages} pages "
                    f"({w.inserted} new, {w.updated} updated, {w.unchanged} unchanged), "
                    f"{w.skipped_malformed} malformed skipped, {w.vanished} vanished -> dead, "
                    f"{w.duration_seconds:.1f}s"
                )
            else:
                out.append(f"{w.workspace}: FAILED ({w.fault_kind}): {w.error}")
        return out


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _start_ms(run: Any) -> int | None:
    value = run.get("start_time") if isinstance(run, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class DatabricksSync:
    """Syncs every configured workspace into ``store``.

    ``client_factory`` builds the (blocking) client of a workspace; tests may
    pass one that targets a fake server. ``clock`` returns the current aware
    UTC datetime.
    """

    def __init__(
        self,
        config: DatabricksConfig,
        store: Store,
        *,
        client_factory: ClientFactory = RunsClient,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self._store = store
        self._factory = client_factory
        self._clock = clock
        self._workspaces = {ws.display_name: ws for ws in config.workspaces}
        self._clients: dict[str, RunsClient] = {}
        self._states: dict[str, SyncState] | None = None
        self._locks = {name: asyncio.Lock() for name in self._workspaces}
        self._unknown_logged: set[tuple[str, tuple[Any, ...]]] = set()
        self._failures: dict[str, int] = {}
        self._unhealthy: set[str] = set()

    @property
    def workspace_names(self) -> list[str]:
        return list(self._workspaces)

    # ----------------------------------------------------------------- public

    async def sync_once(self) -> SyncSummary:
        """Sync every workspace once, concurrently. Never raises for a fault:
        each workspace's outcome is in the summary and in its stored SyncState."""
        results = await asyncio.gather(*(self.sync_workspace(n) for n in self._workspaces))
        return SyncSummary(workspaces=list(results))

    async def run_forever(self, stop: asyncio.Event, *, shutdown_grace: float = 5.0) -> None:
        """Sync each workspace on its own schedule until ``stop`` is set.

        After ``stop``, passes in progress get ``shutdown_grace`` seconds to end
        (a batch of pages being written commits or not as a whole), then are cancelled.
        With ``enabled = false`` it only waits for ``stop``; :meth:`sync_once`
        still syncs (an explicit one-off request).
        """
        if not self.config.enabled:
            await stop.wait()
            return
        tasks = [
            asyncio.create_task(self._loop(name, stop), name=f"databricks-sync:{name}")
            for name in self._workspaces
        ]
        try:
            await stop.wait()
        finally:
            _, pending = await asyncio.wait(tasks, timeout=shutdown_grace) if tasks else ((), ())
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def status(self) -> SyncStatus:
        """Current status of the configured workspaces (from the store)."""
        states = await self._store.get_sync_states()
        return build_status(states, enabled=self.config.enabled, workspaces=self.workspace_names)

    def next_delay(self, name: str) -> float:
        """Seconds until workspace ``name`` should be synced again: the poll
        interval after a success, exponential backoff after transient faults,
        ``backoff_max_seconds`` while unhealthy."""
        failures = self._failures.get(name, 0)
        if not failures:
            return self.config.poll_interval_seconds
        if name in self._unhealthy:
            return self.config.backoff_max_seconds
        delay = self.config.backoff_initial_seconds * 2 ** min(failures - 1, 30)
        return float(min(delay, self.config.backoff_max_seconds))

    async def sync_workspace(self, name: str) -> WorkspaceResult:
        """One pass over workspace ``name``; faults are recorded, never raised. When
        another process is syncing the workspace (``store.exclusive_sync``), the pass is
        skipped: ``ok`` and ``skipped`` are set and nothing is written."""
        async with self._locks[name]:
            started = time.monotonic()
            result = WorkspaceResult(workspace=name)
            try:
                async with self._store.exclusive_sync(name) as mine:
                    if mine:
                        await self._sync(name, result)
                    else:
                        result.ok = result.skipped = True
                        log.info("databricks sync of %r: another process is syncing it", name)
            except DatabricksFault as fault:
                await self._record_fault(name, fault, result)
            except Exception as exc:
                # The store or our own code failed: back off like a transient fault
                # rather than kill the loop. An unavailable store (busy, full, a
                # PostgreSQL server away) is one line; anything else has its traceback.
                if isinstance(exc, StoreUnavailable):
                    log.warning("databricks sync of %r: the store is unavailable: %s", name, exc)
                else:
                    log.exception("databricks sync of %r failed unexpectedly", name)
                unexpected = TransientFault(
                    name, f"workspace {name!r}: {type(exc).__name__}: {exc}"
                )
                await self._record_fault(name, unexpected, result)
            result.duration_seconds = round(time.monotonic() - started, 3)
            return result

    # ---------------------------------------------------------------- helpers

    async def _sync(self, name: str, result: WorkspaceResult) -> None:
        state = await self._state(name)
        client = await self._client(name)
        result.host = client.host
        if state.host != client.host:
            # Saved with the first batch (every pass writes at least one).
            state = replace(self._fresh(state), host=client.host)
        await self._pass(client, state, result)

    async def _state(self, name: str) -> SyncState:
        # Re-read at every pass: the store is the truth (a restart, or a one-off
        # `sync --once` from another process, may have moved it).
        stored = {s.workspace: s for s in await self._store.get_sync_states()}
        if self._states is None:
            self._states = {}
            for ws, state in stored.items():
                failures = state.extra.get(EXTRA_FAILURES)
                if isinstance(failures, int) and failures > 0 and ws in self._workspaces:
                    self._failures[ws] = failures
                    if not state.healthy:
                        self._unhealthy.add(ws)
        state = stored.get(name) or SyncState(workspace=name)
        self._states[name] = state
        return state

    async def _client(self, name: str) -> RunsClient:
        client = self._clients.get(name)
        if client is None:
            client = self._factory(self._workspaces[name], self.config)
            await asyncio.to_thread(client.connect)
            self._clients[name] = client
        return client

    async def _commit(
        self, state: SyncState, jobs: Sequence[ExternalJob], result: WorkspaceResult
    ) -> SyncState:
        """Write runs and the state that goes with them in one transaction; adopt
        the state only once the store has committed it."""
        counts = await self._store.record_sync_page(state, jobs)
        result.inserted += counts.inserted
        result.updated += counts.updated
        result.unchanged += counts.unchanged
        assert self._states is not None
        self._states[state.workspace] = state
        return state

    def _log_unknown(self, workspace: str, job: ExternalJob) -> None:
        r = job.result
        key = (
            r["status_state"],
            r["termination_code"],
            r["termination_type"],
            r["life_cycle_state"],
            r["result_state"],
        )
        if (workspace, key) in self._unknown_logged:
            return
        self._unknown_logged.add((workspace, key))
        log.warning(
            "databricks workspace %r: run %s has a state this version does not know "
            "(status.state=%s, termination code=%s type=%s, life_cycle_state=%s, "
            "result_state=%s); keeping the job's previous status and the raw strings "
            "(logged once per combination)",
            workspace,
            job.external_id,
            *key,
        )

    async def _write_batch(
        self,
        state: SyncState,
        batch: _Pages,
        result: WorkspaceResult,
        seen: set[int],
    ) -> SyncState:
        for message in batch.malformed:
            log.warning("databricks workspace %r: skipping run: %s", result.workspace, message)
        result.skipped_malformed += len(batch.malformed)
        for job in batch.jobs:
            seen.add(int(job.external_id))
            if job.status is None:
                result.unknown_state += 1
                self._log_unknown(result.workspace, job)
        state.runs_ingested += len(batch.jobs)
        result.pages += batch.pages
        result.runs += len(batch.jobs)
        return await self._commit(state, batch.jobs, result)

    def _fresh(self, state: SyncState) -> SyncState:
        """A copy to modify: the adopted state changes only after a commit."""
        return replace(state, extra=copy.deepcopy(state.extra))

    async def _batches(
        self, client: RunsClient, workspace: str, query: dict[str, Any]
    ) -> AsyncGenerator[_Pages, None]:
        """Every page of runs/list for ``query``, mapped in a worker thread and
        grouped into batches to commit (see ``COMMIT_MAX_RUNS``). The next page
        is fetched while the caller writes the current batch. When a fetch
        fails, the pages fetched before it are yielded first."""
        loop = asyncio.get_running_loop()

        def fetch(page_token: str | None) -> asyncio.Future[_Pages]:
            # run_in_executor rather than to_thread: no task and no context copy per page.
            page_query = {**query, "page_token": page_token} if page_token else query
            return loop.run_in_executor(None, _fetch_page, client, workspace, page_query)

        pending: asyncio.Future[_Pages] | None = fetch(None)
        batch: _Pages | None = None
        deadline = 0.0
        try:
            while pending is not None:
                if batch is not None and not pending.done():
                    done, _ = await asyncio.wait({pending}, timeout=deadline - loop.time())
                    if not done:
                        yield batch
                        batch = None
                        continue
                try:
                    page = await pending
                except Exception:
                    pending = None
                    if batch is not None:
                        yield batch
                    raise
                pending = fetch(page.next_page_token) if page.next_page_token else None
                if batch is None:
                    batch, deadline = page, loop.time() + COMMIT_MAX_SECONDS
                else:
                    batch.extend(page)
                if pending is None or len(batch.jobs) >= COMMIT_MAX_RUNS:
                    yield batch
                    batch = None
        finally:
            if pending is not None:
                # The caller stopped (a failed write): drop the prefetch.
                pending.cancel()

    async def _pass(self, client: RunsClient, state: SyncState, result: WorkspaceResult) -> None:
        seen: set[int] = set()
        name = result.workspace

        active = self._batches(client, name, {"active_only": True})
        async with contextlib.aclosing(active) as batches:
            async for batch in batches:
                state = await self._write_batch(self._fresh(state), batch, result, seen)

        progress = state.extra.get(EXTRA_PROGRESS)
        if _valid_progress(progress):
            assert isinstance(progress, dict)
            result.resumed = True
            from_ms: int = progress["from_ms"]
            to_ms: int | None = progress["low_ms"]
            high: int | None = progress["high_ms"]
            low: int | None = progress["low_ms"]
        else:
            if state.watermark_ms is not None:
                from_ms = max(0, state.watermark_ms - self.config.overlap_seconds * 1000)
            else:
                lookback = timedelta(hours=self.config.lookback_hours)
                from_ms = _ms(self._clock() - lookback)
            to_ms = high = low = None

        window = {"start_time_from": from_ms, "start_time_to": to_ms}
        async with contextlib.aclosing(self._batches(client, name, window)) as batches:
            async for batch in batches:
                if batch.starts:
                    high = max(batch.starts) if high is None else max(high, *batch.starts)
                    low = min(batch.starts) if low is None else min(low, *batch.starts)
                new = self._fresh(state)
                if batch.next_page_token:
                    new.extra[EXTRA_PROGRESS] = {"from_ms": from_ms, "high_ms": high, "low_ms": low}
                else:
                    new.extra.pop(EXTRA_PROGRESS, None)
                    if high is not None:
                        new.watermark_ms = max(new.watermark_ms or 0, high)
                state = await self._write_batch(new, batch, result, seen)

        state = await self._reconcile(client, state, result, seen)

        now = self._clock()
        done = self._fresh(state)
        done.last_success_at = format_ts(now)
        done.healthy = True
        done.extra[EXTRA_FAILURES] = 0
        done.extra.pop(EXTRA_FAULT_KIND, None)
        done.extra.pop(EXTRA_NEXT_ATTEMPT, None)
        done.extra[EXTRA_LAST_SYNC] = {
            "at": done.last_success_at,
            "pages": result.pages,
            "runs": result.runs,
            "inserted": result.inserted,
            "updated": result.updated,
            "skipped_malformed": result.skipped_malformed,
            "vanished": result.vanished,
        }
        await self._store.save_sync_state(done)
        assert self._states is not None
        self._states[done.workspace] = done
        self._failures.pop(done.workspace, None)
        self._unhealthy.discard(done.workspace)
        result.ok = True
        result.watermark_ms = done.watermark_ms

    async def _reconcile(
        self, client: RunsClient, state: SyncState, result: WorkspaceResult, seen: set[int]
    ) -> SyncState:
        limit = self.config.reconcile_limit
        if limit == 0:
            return state
        assert client.host is not None
        host = client.host
        candidates: list[tuple[int, Job]] = []
        for job in await self._store.list_active_external_jobs(Source.DATABRICKS):
            ext = job.external_id
            if not ext or not ext.isdigit():
                continue
            run_id = int(ext)
            # Job ids embed the host, so this picks this workspace's jobs only.
            if run_id not in seen and job.job_id == run_job_id(host, run_id):
                candidates.append((run_id, job))
        if not candidates:
            return state
        candidates.sort(key=lambda c: c[1].created_at)
        updates: list[ExternalJob] = []
        for run_id, job in candidates[:limit]:
            raw, name = await asyncio.to_thread(_get_run_and_name, client, run_id)
            result.reconciled += 1
            if raw is None:
                result.vanished += 1
                log.warning(
                    "databricks workspace %r: run %s no longer exists; job %s was %s, now dead",
                    result.workspace,
                    run_id,
                    job.job_id,
                    job.status,
                )
                updates.append(self._dead(job, run_id, result.workspace))
            else:
                jobs, malformed = _map_runs(result.workspace, host, [raw], {run_id: name})
                for message in malformed:
                    log.warning(
                        "databricks workspace %r: skipping run: %s", result.workspace, message
                    )
                result.skipped_malformed += len(malformed)
                for mapped in jobs:
                    if mapped.status is None:
                        result.unknown_state += 1
                        self._log_unknown(result.workspace, mapped)
                updates.extend(jobs)
        new = self._fresh(state)
        new.runs_ingested += len(updates)
        result.runs += len(updates)
        return await self._commit(new, updates, result)

    def _dead(self, job: Job, run_id: int, workspace: str) -> ExternalJob:
        return ExternalJob(
            job_id=job.job_id,
            plugin=job.plugin,
            command=job.command,
            status=Status.DEAD,
            status_if_new=Status.DEAD,
            external_id=str(run_id),
            external_url=job.external_url,
            created_at=job.created_at,
            started_at=job.started_at,
            completed_at=format_ts(self._clock()),
            attempt=job.attempt,
            last_error=(
                f"Databricks run {run_id} vanished from workspace {workspace!r} while it was "
                f"{job.status} here: runs/get says it does not exist"
            ),
            result=job.result,
            source=Source.DATABRICKS,
        )

    async def _record_fault(
        self, name: str, fault: DatabricksFault, result: WorkspaceResult
    ) -> None:
        result.ok = False
        result.fault_kind = fault.kind
        result.error = fault.message
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        now = self._clock()
        base = (self._states or {}).get(name) or SyncState(workspace=name)
        state = self._fresh(base)
        state.last_error = fault.message
        state.last_error_at = format_ts(now)
        state.extra[EXTRA_FAILURES] = failures
        state.extra[EXTRA_FAULT_KIND] = fault.kind
        if isinstance(fault, AuthFault | ConfigFault):
            state.healthy = False
            self._unhealthy.add(name)
            # Rebuild the client next time, so a fixed token or profile is picked up.
            self._clients.pop(name, None)
            log.error("databricks sync: %s", fault.message)
        else:
            log.warning("databricks sync: %s (failure %d in a row)", fault.message, failures)
        state.extra[EXTRA_NEXT_ATTEMPT] = format_ts(now + timedelta(seconds=self.next_delay(name)))
        if self._states is not None:
            self._states[name] = state
        try:
            await self._store.save_sync_state(state)
        except StoreUnavailable as exc:
            log.warning("databricks sync: cannot record the fault of workspace %r: %s", name, exc)
        except Exception:
            log.exception("databricks sync: cannot record the fault of workspace %r", name)

    async def _loop(self, name: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sync_workspace(name)
                delay = self.next_delay(name)
            except Exception:  # sync_workspace records faults; this is a last resort
                log.exception("databricks sync loop of %r", name)
                delay = self.config.backoff_max_seconds
            # Jitter keeps workspaces that failed together from retrying in lockstep.
            delay *= random.uniform(0.9, 1.0)  # noqa: S311 - not cryptographic
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


@dataclass(slots=True)
class _Pages:
    """One or more consecutive pages of runs/list, mapped."""

    jobs: list[ExternalJob]
    next_page_token: str | None  # of the last page
    starts: list[int]  # start times of every run on the pages, mappable or not
    malformed: list[str]
    pages: int = 1

    def extend(self, page: _Pages) -> None:
        self.jobs.extend(page.jobs)
        self.next_page_token = page.next_page_token
        self.starts.extend(page.starts)
        self.malformed.extend(page.malformed)
        self.pages += page.pages


def _map_runs(
    workspace: str, host: str, runs: Sequence[Any], job_names: dict[int, str | None]
) -> tuple[list[ExternalJob], list[str]]:
    jobs: list[ExternalJob] = []
    malformed: list[str] = []
    for raw in runs:
        job_id = raw.get("job_id") if isinstance(raw, dict) else None
        name = job_names.get(job_id) if isinstance(job_id, int) else None
        try:
            jobs.append(map_run(raw, workspace=workspace, host=host, job_name=name))
        except MalformedRun as exc:
            malformed.append(str(exc))
    return jobs, malformed


def _fetch_page(client: RunsClient, workspace: str, query: dict[str, Any]) -> _Pages:
    """Fetch and map one page; runs in a worker thread (blocking SDK call)."""
    page = client.list_runs_page(**query)
    assert client.host is not None
    jobs, malformed = _map_runs(workspace, client.host, page.runs, page.job_names)
    starts = [s for s in map(_start_ms, page.runs) if s is not None]
    return _Pages(jobs, page.next_page_token, starts, malformed)


def _valid_progress(progress: Any) -> bool:
    if not isinstance(progress, dict) or not isinstance(progress.get("from_ms"), int):
        return False
    return all(
        progress.get(k) is None or isinstance(progress.get(k), int) for k in ("high_ms", "low_ms")
    )


def _get_run_and_name(client: RunsClient, run_id: int) -> tuple[dict[str, Any] | None, str | None]:
    raw = client.get_run(run_id)
    job_id = raw.get("job_id") if raw is not None else None
    name = client.job_name(job_id) if isinstance(job_id, int) else None
    return raw, name

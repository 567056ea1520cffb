"""The worker: claims jobs with a lease, runs plugin commands as subprocesses, retries, cancels.

Guarantees (see docs/RELIABILITY.md):
- A job is claimed by exactly one worker at a time: the claim is one UPDATE … RETURNING in
  BEGIN IMMEDIATE (SQLite) or over rows locked FOR UPDATE SKIP LOCKED (PostgreSQL), and
  only the lease holder of the current attempt may finish it.
- An idle worker waits for `store.wait_for_work`: in-process enqueues wake it at once, and
  on PostgreSQL so do jobs enqueued by any process on any host (LISTEN/NOTIFY); the poll
  interval is the fallback.
- A running job carries a lease that a heartbeat extends. If its worker dies, any serving
  process recovers the expired lease: the job is queued again (the lost attempt counts) or
  dead when no attempt is left. So no job stays `running` forever.
- On shutdown the worker stops claiming, lets running jobs finish within a grace period, and
  returns the rest to `queued` without spending an attempt.
- An unavailable store (a busy or full disk, a PostgreSQL server restarting or unreachable)
  never ends the worker: claims back off until it answers again, and an attempt's outcome
  is retried for as long as the lease would have kept the job, so an outage shorter than
  the lease costs no attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from queue_service.config import ServiceConfig
from queue_service.histograms import Histogram
from queue_service.plugins import Registry
from queue_service.plugins.runner import KILL_GRACE, AttemptOutcome, OutcomeKind, run_command
from queue_service.plugins.state import state_cap_problem
from queue_service.statuses import AttemptStatus, Status
from queue_service.store import Job, Store, StoreUnavailable
from queue_service.store.types import AttemptEnd
from queue_service.timeutil import format_ts, utcnow

log = logging.getLogger("queue_service.worker")

Clock = Callable[[], datetime]
T = TypeVar("T")

#: The longest pause between two claim rounds, or two tries of an attempt's outcome, while
#: the store is unavailable: how soon after an outage ends work resumes at the latest.
MAX_OUTAGE_PAUSE = 5.0


def backoff_delay(base_seconds: float, attempt: int, rng: random.Random) -> float:
    """Seconds before retry number `attempt` (1-based): base * 2^(attempt-1), plus a jitter
    of up to base/4 so that jobs failing together do not retry together."""
    jitter: float = rng.uniform(0, base_seconds / 4)
    return float(base_seconds * 2 ** (attempt - 1)) + jitter


def decide_end(
    job: Job, outcome: AttemptOutcome, *, backoff_seconds: float, now: datetime, rng: random.Random
) -> AttemptEnd:
    """How a finished attempt moves the job on. Pure: the clock and randomness are injected.

    - ok -> succeeded (state updates are applied only then; the caller has already turned
      an ok whose merged state would exceed the cap into a failure without retry);
    - an error, a protocol violation or a timeout -> queued again with a backoff while
      attempts remain and the plugin allows a retry (exit 78 and `"retry": false` do not);
      otherwise failed or timed_out.
    """
    timed_out = outcome.kind is OutcomeKind.TIMED_OUT
    base = AttemptEnd(
        status=Status.SUCCEEDED,
        attempt_status=AttemptStatus.SUCCEEDED,
        # `"events": []` is stored as [], a response without the key as null.
        events=None if outcome.events is None else list(outcome.events),
        logs=None if outcome.logs is None else list(outcome.logs),
        exit_code=outcome.exit_code,
        stderr_tail=outcome.stderr_tail or None,
    )
    if outcome.kind is OutcomeKind.SUCCEEDED:
        return replace(base, result=outcome.result, state_updates=outcome.state_updates or None)
    attempt_status = AttemptStatus.TIMED_OUT if timed_out else AttemptStatus.FAILED
    failed = replace(base, attempt_status=attempt_status, error=outcome.error or attempt_status)
    if outcome.retry_allowed and job.attempt < job.max_attempts:
        delay = backoff_delay(backoff_seconds, job.attempt, rng)
        return replace(
            failed, status=Status.QUEUED, run_after=format_ts(now + timedelta(seconds=delay))
        )
    return replace(failed, status=Status.TIMED_OUT if timed_out else Status.FAILED)


def log_failure(message: str, exc: Exception) -> None:
    """One line for an unavailable store (busy, read-only, disk full: the message says
    which, and it repeats until fixed); a traceback for anything unexpected."""
    if isinstance(exc, StoreUnavailable):
        log.warning("%s: %s", message, exc)
    else:
        log.error("%s", message, exc_info=exc)


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


#: Upper bounds (seconds) of the claim-to-start buckets: the worker's own overhead
#: between a claim and the plugin process running (reading the plugin's state, spawning).
CLAIM_TO_START_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Upper bounds (seconds) of the attempt duration buckets: from a second to an hour.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class WorkerTimings:
    """How long this worker's attempts took to start and to run, as Prometheus
    histograms: GET /metrics of the process running the worker exposes them
    (queue_service/api/metrics.py)."""

    def __init__(self) -> None:
        self.claim_to_start = Histogram(
            "queue_service_job_claim_to_start_seconds",
            "Seconds from a job's claim to its plugin process running, per attempt.",
            ["plugin"],
            CLAIM_TO_START_BUCKETS,
        )
        self.duration = Histogram(
            "queue_service_job_duration_seconds",
            "Seconds an attempt ran, from its plugin process starting (or its claim, when "
            "no process started) to its end, by how the attempt ended.",
            ["plugin", "command", "outcome"],
            DURATION_BUCKETS,
        )
        self.histograms = (self.claim_to_start, self.duration)


@dataclass(slots=True)
class _Running:
    job: Job
    task: asyncio.Task[None]
    #: time.perf_counter() when the claim returned, and when the plugin process started
    #: (not the loop's clock: uvloop's counts whole milliseconds).
    claimed: float
    spawned: float | None = None
    #: Why the worker is stopping this job early: "canceled", "shutdown" or "lease_lost".
    abort: str | None = None
    run: asyncio.Task[AttemptOutcome] | None = field(default=None)


class Worker:
    """Runs queued jobs of the registry's valid plugins, `workers` at a time."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: ServiceConfig,
        *,
        owner: str | None = None,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        poll_interval: float = 0.5,
        kill_grace: float = KILL_GRACE,
        recover_interval: float | None = None,
        retention_interval: float = 3600.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.owner = owner or new_owner_id()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.poll_interval = poll_interval
        self.kill_grace = kill_grace
        self.lease_seconds = config.service.lease_seconds
        self.recover_interval = recover_interval or min(5.0, self.lease_seconds / 2)
        self.retention_interval = retention_interval
        self._running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []
        self._reported_missing: set[str] = set()
        self.timings = WorkerTimings()

    # -- public ----------------------------------------------------------

    @property
    def running_job_ids(self) -> list[str]:
        return list(self._running)

    def wake(self) -> None:
        """Look for work now (called after an in-process enqueue)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set, then shut down gracefully."""
        try:
            await self.missing_plugins()
        except StoreUnavailable as exc:  # only a report: it must not keep the worker down
            log_failure("counting the jobs of missing plugins failed", exc)
        self._background = [
            asyncio.create_task(self._every(self.lease_seconds / 3, self._heartbeat)),
            asyncio.create_task(self._every(self.recover_interval, self.recover)),
            asyncio.create_task(self._every(self.retention_interval, self.prune)),
        ]
        stopper = asyncio.create_task(stop.wait())
        failures = 0
        try:
            while not stop.is_set():
                try:
                    claimed = await self._claim_round()
                    failures = 0
                except Exception as exc:
                    # A busy or unavailable database must not end the worker: wait longer
                    # after each failure in a row (a wake-up still ends the wait).
                    failures += 1
                    log_failure("claiming jobs failed; will retry", exc)
                    claimed = 0
                if claimed:
                    continue
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                # Jobs enqueued by other processes (PostgreSQL: on any host) wake it too.
                arrived = asyncio.create_task(self.store.wait_for_work())
                await asyncio.wait(
                    {stopper, waker, arrived},
                    timeout=self._pause_after(failures, self.poll_interval),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waker.cancel()
                arrived.cancel()
        finally:
            stopper.cancel()
            await self.shutdown(self.config.service.shutdown_grace_seconds)

    async def shutdown(self, grace: float) -> None:
        """Stop claiming, give running jobs `grace` seconds, then release the rest to queued."""
        self._stopping = True
        tasks = [r.task for r in self._running.values()]
        if tasks:
            log.info("waiting up to %.0f s for %d running job(s)", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)
        for running in list(self._running.values()):
            running.abort = running.abort or "shutdown"
            if running.run is not None:
                running.run.cancel()
        remaining = [r.task for r in self._running.values()]
        if remaining:
            await asyncio.gather(*remaining, return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []

    def cancel_running(self, job_id: str) -> bool:
        """Terminate the subprocess of a job this worker runs; it then ends `canceled`."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.abort = "canceled"
        if running.run is not None:
            running.run.cancel()
        return True

    async def recover(self) -> int:
        """Recover expired leases (of any process). Returns how many jobs were recovered."""
        recovered = await self.store.recover_expired_leases(now=self.clock())
        for job in recovered:
            log.warning(
                "job %s: attempt %d lost its lease (worker stopped); now %s",
                job.job_id,
                job.attempt,
                job.status,
            )
        if recovered:
            self.wake()
        return len(recovered)

    async def prune(self) -> int:
        """Delete finished jobs older than retention_days, in small batches."""
        before = format_ts(self.clock() - timedelta(days=self.config.service.retention_days))
        total = 0
        while True:
            deleted = await self.store.prune_finished(before=before, limit=500)
            total += deleted
            if deleted < 500:
                break
            await asyncio.sleep(0)  # let requests in between batches
        if total:
            log.info("retention: pruned %d finished job(s) completed before %s", total, before)
        return total

    async def missing_plugins(self) -> dict[str, int]:
        """Plugins with queued local jobs that this process cannot run: {plugin: jobs}.

        Their jobs stay queued (a typo in plugin_dirs or a folder moved during an upgrade
        must not destroy work) until the plugin is back or an operator cancels them
        (`queue-service cancel --plugin NAME`). The count comes from the exact counts, so
        this is cheap at any table size. Each missing plugin is logged once per process.
        Only a process that loads plugins asks: an API-only process knows none.
        """
        missing = await self.registry.missing(self.store)
        for plugin in sorted(missing.keys() - self._reported_missing):
            log.warning(
                "plugin %s is not installed: %d queued job(s) wait for it; install it, or "
                "cancel them with `queue-service cancel --plugin %s`",
                plugin,
                missing[plugin],
                plugin,
            )
        self._reported_missing |= missing.keys()
        return missing

    # -- claiming ----------------------------------------------------------

    def _plugin_cap(self, plugin: str, concurrency_safe: bool) -> int | None:
        configured = self.config.plugin(plugin).concurrency
        if not concurrency_safe:
            return 1
        return configured

    async def _claim_round(self) -> int:
        if self._stopping:
            return 0
        claimed = 0
        plugins = list(self.registry.valid())
        self.rng.shuffle(plugins)  # no plugin starves the others
        for plugin in plugins:
            free = self.config.service.workers - len(self._running)
            if free <= 0:
                break
            cap = self._plugin_cap(plugin.name, plugin.concurrency_safe)
            jobs = await self.store.claim_jobs(
                plugin.name,
                limit=free,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                concurrency=cap,
                now=self.clock(),
            )
            claimed_at = time.perf_counter()
            for job in jobs:
                running = _Running(
                    job=job, task=asyncio.create_task(self._run_job(job)), claimed=claimed_at
                )
                self._running[job.job_id] = running
            claimed += len(jobs)
        return claimed

    # -- running one job ---------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except Exception as exc:
            log_failure(f"job {job.job_id}: the worker failed while running it", exc)
        finally:
            self._running.pop(job.job_id, None)
            self.wake()

    async def _attempt(self, job: Job) -> None:
        running = self._running[job.job_id]
        plugin = self.registry.get(job.plugin)
        held = [(job.job_id, job.attempt)]
        if plugin is None or not plugin.valid:
            # Claimed a moment before the registry changed: give the job back.
            await self._while_leased("release", self.store.release_jobs, held, owner=self.owner)
            return
        settings = self.config.plugin(job.plugin)
        state = await self._while_leased("read the state", self.store.get_plugin_state, job.plugin)

        def spawned(_pid: int) -> None:
            running.spawned = time.perf_counter()
            self.timings.claim_to_start.observe((job.plugin,), running.spawned - running.claimed)

        running.run = asyncio.create_task(
            run_command(
                plugin,
                job.command,
                job_id=job.job_id,
                payload=job.payload,
                state=state,
                timeout_seconds=self.config.timeout_for(job.plugin, job.command),
                kill_grace=self.kill_grace,
                secrets=settings.secrets,
                env_passthrough=self.config.service.plugin_env_passthrough,
                on_spawn=spawned,
            )
        )
        if running.abort is not None:  # canceled between claim and start
            running.run.cancel()
        try:
            outcome = await running.run
        except asyncio.CancelledError:
            outcome = None
            current = asyncio.current_task()
            if current is not None and current.cancelling() and running.abort is None:
                raise  # the worker task itself was cancelled
        if outcome is None:
            if running.abort == "canceled":
                self._observe_duration(running, AttemptStatus.CANCELED)
                end = AttemptEnd(
                    status=Status.CANCELED,
                    attempt_status=AttemptStatus.CANCELED,
                    error="canceled by request",
                )
                await self._finish(job, end)
                log.info("job %s canceled while running", job.job_id)
            elif running.abort == "shutdown":
                # Tried once: a shutdown must not wait out an outage (the lease's expiry
                # then requeues the job, counting the attempt).
                await self.store.release_jobs(held, owner=self.owner)
                log.info("job %s returned to queued at shutdown", job.job_id)
            return
        if outcome.succeeded and outcome.state_updates:
            # Read now, not at job start: another job of the plugin may have changed it.
            stored = await self._while_leased(
                "read the state", self.store.get_plugin_state, job.plugin
            )
            problem = state_cap_problem(stored, outcome.state_updates)
            if problem is not None:  # the same input would overflow again: no retry
                outcome = replace(
                    outcome,
                    kind=OutcomeKind.FAILED,
                    result=None,
                    error=problem,
                    retry_allowed=False,
                    state_updates={},
                )
        end = decide_end(
            job, outcome, backoff_seconds=settings.backoff_seconds, now=self.clock(), rng=self.rng
        )
        self._observe_duration(running, end.attempt_status)
        status = await self._finish(job, end)
        if status is None:
            log.warning(
                "job %s: attempt %d finished after its lease was lost; outcome discarded "
                "(or saved already by a try cut off while committing)",
                job.job_id,
                job.attempt,
            )
        elif status is Status.QUEUED:
            log.info(
                "job %s: attempt %d %s (%s); retry at %s",
                job.job_id,
                job.attempt,
                end.attempt_status,
                end.error,
                end.run_after,
            )
        elif status is not end.status:
            log.info(
                "job %s: attempt %d ended; job %s (requested)", job.job_id, job.attempt, status
            )

    async def _finish(self, job: Job, end: AttemptEnd) -> Status | None:
        return await self._while_leased(
            "record the outcome",
            self.store.finish_attempt,
            job.job_id,
            plugin=job.plugin,
            attempt=job.attempt,
            owner=self.owner,
            end=end,
        )

    async def _while_leased(
        self, what: str, action: Callable[..., Awaitable[T]], *args: object, **kwargs: object
    ) -> T:
        """`action(*args, **kwargs)`, tried again while the store is unavailable, for as
        long as the job's lease lasts; after that recovery requeues the job anyway, so the
        last failure is raised. Safe to repeat: a write of a lease holder that already
        happened (its COMMIT cut off on its way back) finds the lease gone and writes
        nothing."""
        deadline = time.monotonic() + self.lease_seconds
        failures = 0
        while True:
            try:
                return await action(*args, **kwargs)
            except StoreUnavailable as exc:
                failures += 1
                pause = self._pause_after(failures, 0.05)
                if time.monotonic() + pause > deadline:
                    raise
                if failures == 1:
                    log.warning("could not %s: %s; retrying while the lease lasts", what, exc)
                await asyncio.sleep(pause)

    def _pause_after(self, failures: int, base: float) -> float:
        """`base` when the store answered last time; after `failures` in a row, twice as
        long per failure up to MAX_OUTAGE_PAUSE, with jitter so that workers do not come
        back all at once."""
        if not failures:
            return base
        return min(base * 2.0 ** min(failures, 30), MAX_OUTAGE_PAUSE) * self.rng.uniform(0.5, 1)

    def _observe_duration(self, running: _Running, outcome: AttemptStatus) -> None:
        start = running.claimed if running.spawned is None else running.spawned
        elapsed = time.perf_counter() - start
        job = running.job
        self.timings.duration.observe((job.plugin, job.command, outcome.value), elapsed)

    async def _heartbeat(self) -> None:
        # Jobs being stopped (canceled, shutdown) keep their lease too: terminating a
        # plugin can take the kill grace, and the lease must not expire meanwhile.
        held = [
            (r.job.job_id, r.job.attempt) for r in self._running.values() if r.abort != "lease_lost"
        ]
        if not held:
            return
        kept = await self.store.heartbeat(
            held, owner=self.owner, lease_seconds=self.lease_seconds, now=self.clock()
        )
        for job_id, _ in held:
            running = self._running.get(job_id)
            if running is None or running.abort is not None:
                continue
            if job_id not in kept:
                log.warning("job %s: lease lost; stopping its subprocess", job_id)
                running.abort = "lease_lost"
                if running.run is not None:
                    running.run.cancel()
            elif kept[job_id]:
                self.cancel_running(job_id)

    async def _every(self, seconds: float, action: Callable[[], object]) -> None:
        while True:
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(f"background task {getattr(action, '__name__', action)} failed", exc)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(seconds)
                continue
            raise asyncio.CancelledError

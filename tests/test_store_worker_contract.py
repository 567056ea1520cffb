"""The store's worker contract, on every backend (a real temporary SQLite file, a fresh
PostgreSQL schema): claim, heartbeat, finish, recover, release, cancel, prune and orphans.
The worker relies on every promise here."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from queue_service.statuses import AttemptStatus, Status
from queue_service.store import Conflict, JobFilter, JobNotFound, NewJob, Store
from queue_service.store.types import AttemptEnd, Job
from queue_service.timeutil import format_ts, now_ts, parse_rfc3339, utcnow

from .conftest import RawDatabase

pytestmark = pytest.mark.anyio

OWNER = "host:1:aaaa"
OTHER = "host:2:bbbb"


async def enqueue(store: Store, plugin: str = "p", **kwargs: object) -> str:
    kwargs.setdefault("command", "poll")
    result = await store.enqueue(NewJob(plugin, payload={}, **kwargs))  # type: ignore[arg-type]
    return result.job_id


async def get(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id)
    assert job is not None, f"job {job_id} is gone"
    return job


async def claim_one(
    store: Store,
    plugin: str = "p",
    *,
    owner: str = OWNER,
    lease_seconds: float = 60,
    now: datetime | None = None,
) -> Job:
    jobs = await store.claim_jobs(
        plugin, limit=1, owner=owner, lease_seconds=lease_seconds, now=now
    )
    assert len(jobs) == 1, jobs
    return jobs[0]


def ok_end(**kwargs: object) -> AttemptEnd:
    kwargs.setdefault("result", {"done": True})
    return AttemptEnd(status=Status.SUCCEEDED, attempt_status=AttemptStatus.SUCCEEDED, **kwargs)  # type: ignore[arg-type]


async def finish_ok(store: Store, job: Job, owner: str = OWNER, **kwargs: object) -> Status | None:
    return await store.finish_attempt(
        job.job_id, plugin=job.plugin, attempt=job.attempt, owner=owner, end=ok_end(**kwargs)
    )


def later() -> datetime:
    """A moment after every short lease taken in a test has expired."""
    return utcnow() + timedelta(minutes=5)


# --- claim ---------------------------------------------------------------------------


async def test_claim_sets_started_attempt_lease_and_opens_an_attempt(store: Store) -> None:
    job_id = await enqueue(store)
    moment = utcnow()
    job = await claim_one(store, lease_seconds=30, now=moment)
    assert job.job_id == job_id
    assert job.status is Status.RUNNING
    assert job.attempt == 1
    assert job.started_at == format_ts(moment)
    assert job.lease_expires_at == format_ts(moment + timedelta(seconds=30))
    assert job.completed_at is None
    stored = await get(store, job_id)
    assert (stored.status, stored.attempt, stored.lease_expires_at) == (
        Status.RUNNING,
        1,
        job.lease_expires_at,
    )
    attempts = await store.get_attempts(job_id)
    assert attempts == [
        {
            "attempt": 1,
            "status": "running",
            "started_at": format_ts(moment),
            "completed_at": None,
            "exit_code": None,
            "error": None,
            "stderr_tail": None,
        }
    ]


async def test_claim_takes_only_the_plugin_asked_for_oldest_first_up_to_limit(
    store: Store,
) -> None:
    ids = [await enqueue(store) for _ in range(5)]
    other = await enqueue(store, "q")
    claimed = await store.claim_jobs("p", limit=3, owner=OWNER, lease_seconds=60)
    assert {j.job_id for j in claimed} == set(ids[:3])
    assert (await get(store, other)).status is Status.QUEUED
    rest = await store.claim_jobs("p", limit=10, owner=OWNER, lease_seconds=60)
    assert {j.job_id for j in rest} == set(ids[3:])
    assert await store.claim_jobs("p", limit=10, owner=OWNER, lease_seconds=60) == []


async def test_a_job_is_claimed_by_one_owner_only(store: Store) -> None:
    await enqueue(store)
    first, second = await asyncio.gather(
        store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60),
        store.claim_jobs("p", limit=1, owner=OTHER, lease_seconds=60),
    )
    assert len(first) + len(second) == 1


async def test_per_plugin_concurrency_counts_running_jobs_of_every_owner(
    store: Store,
) -> None:
    for _ in range(5):
        await enqueue(store)
    await enqueue(store, "q")
    await claim_one(store, owner=OTHER)  # another process runs one already
    claimed = await store.claim_jobs("p", limit=10, owner=OWNER, lease_seconds=60, concurrency=3)
    assert len(claimed) == 2, "3 allowed, 1 already running elsewhere"
    assert await store.claim_jobs("p", limit=10, owner=OWNER, lease_seconds=60, concurrency=3) == []
    # The cap is per plugin: another plugin is not held back.
    assert len(await store.claim_jobs("q", limit=10, owner=OWNER, lease_seconds=60, concurrency=3))
    # Finishing one frees one slot.
    assert await finish_ok(store, claimed[0])
    again = await store.claim_jobs("p", limit=10, owner=OWNER, lease_seconds=60, concurrency=3)
    assert len(again) == 1


async def test_a_concurrency_cap_holds_when_processes_claim_at_once(
    store: Store, another_store: Store
) -> None:
    for _ in range(18):
        await enqueue(store)
    for _ in range(6):
        mine, theirs = await asyncio.gather(
            store.claim_jobs("p", limit=3, owner=OWNER, lease_seconds=60, concurrency=3),
            another_store.claim_jobs("p", limit=3, owner=OTHER, lease_seconds=60, concurrency=3),
        )
        assert len(mine) + len(theirs) == 3, "the cap counts the other process's claims"
        for job in mine:
            assert await finish_ok(store, job)
        for job in theirs:
            assert await finish_ok(another_store, job, owner=OTHER)
    assert await store.claim_jobs("p", limit=3, owner=OWNER, lease_seconds=60) == []


async def test_run_after_in_the_future_is_not_claimable(store: Store) -> None:
    later = utcnow() + timedelta(minutes=10)
    job_id = await enqueue(store, run_after=format_ts(later))
    assert await store.claim_jobs("p", limit=5, owner=OWNER, lease_seconds=60) == []
    assert (await get(store, job_id)).status is Status.QUEUED
    job = await claim_one(store, now=later)
    assert job.job_id == job_id


async def test_runnable_jobs_are_claimed_in_run_after_order(store: Store) -> None:
    base = utcnow() - timedelta(minutes=5)
    late = await enqueue(store, run_after=format_ts(base + timedelta(minutes=2)))
    early = await enqueue(store, run_after=format_ts(base))
    assert (await claim_one(store)).job_id == early
    assert (await claim_one(store)).job_id == late


# --- heartbeat -----------------------------------------------------------------------


async def test_heartbeat_extends_the_lease_and_reports_cancel_requests(
    store: Store,
) -> None:
    await enqueue(store)
    job = await claim_one(store, lease_seconds=1)
    held = [(job.job_id, job.attempt)]
    assert await store.heartbeat(held, owner=OWNER, lease_seconds=60) == {job.job_id: False}
    extended = await get(store, job.job_id)
    assert extended.lease_expires_at is not None and job.lease_expires_at is not None
    assert extended.lease_expires_at > job.lease_expires_at
    expected = utcnow() + timedelta(seconds=60)
    assert abs((parse_rfc3339(extended.lease_expires_at) - expected).total_seconds()) < 5
    # The lease is measured from the `now` it is given (the worker passes its clock).
    moment = utcnow() + timedelta(hours=1)
    await store.heartbeat(held, owner=OWNER, lease_seconds=60, now=moment)
    moved = await get(store, job.job_id)
    assert moved.lease_expires_at == format_ts(moment + timedelta(seconds=60))
    await store.heartbeat(held, owner=OWNER, lease_seconds=60)
    # The extended lease keeps the job out of recovery after the first lease ran out.
    assert await store.recover_expired_leases(now=utcnow() + timedelta(seconds=30)) == []

    assert await store.cancel_job(job.job_id) is Status.RUNNING
    assert await store.heartbeat(held, owner=OWNER, lease_seconds=60) == {job.job_id: True}


async def test_heartbeat_of_a_lease_not_held_changes_nothing(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store)
    before = await get(store, job.job_id)
    assert await store.heartbeat([(job.job_id, job.attempt)], owner=OTHER, lease_seconds=999) == {}
    assert (
        await store.heartbeat([(job.job_id, job.attempt + 1)], owner=OWNER, lease_seconds=999) == {}
    )
    assert await store.heartbeat([("no-such-job", 1)], owner=OWNER, lease_seconds=999) == {}
    assert (await get(store, job.job_id)).lease_expires_at == before.lease_expires_at


# --- finish --------------------------------------------------------------------------


async def test_finish_by_the_lease_holder_records_job_and_attempt(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store)
    end = AttemptEnd(
        status=Status.SUCCEEDED,
        attempt_status=AttemptStatus.SUCCEEDED,
        result={"answer": 42},
        events=[{"type": "thing.happened"}],
        logs=[{"level": "info", "message": "hi"}],
        exit_code=0,
        stderr_tail="some stderr",
    )
    assert await store.finish_attempt(
        job.job_id, plugin="p", attempt=job.attempt, owner=OWNER, end=end
    )
    done = await get(store, job.job_id)
    assert done.status is Status.SUCCEEDED
    assert done.result == {"answer": 42}
    assert done.events == [{"type": "thing.happened"}]
    assert done.logs == [{"level": "info", "message": "hi"}]
    assert done.completed_at is not None and done.lease_expires_at is None
    (attempt,) = await store.get_attempts(job.job_id)
    assert attempt["status"] == "succeeded"
    assert attempt["exit_code"] == 0 and attempt["stderr_tail"] == "some stderr"
    assert attempt["completed_at"] is not None and attempt["error"] is None


async def test_finish_as_retry_requeues_with_run_after_and_keeps_last_error(
    store: Store,
) -> None:
    await enqueue(store)
    job = await claim_one(store)
    retry_at = format_ts(utcnow() + timedelta(seconds=90))
    end = AttemptEnd(
        status=Status.QUEUED,
        attempt_status=AttemptStatus.FAILED,
        error="boom",
        exit_code=1,
        run_after=retry_at,
    )
    assert await store.finish_attempt(job.job_id, plugin="p", attempt=1, owner=OWNER, end=end)
    waiting = await get(store, job.job_id)
    assert waiting.status is Status.QUEUED
    assert waiting.attempt == 1, "the failed attempt is spent"
    assert waiting.last_error == "boom"
    assert waiting.run_after == retry_at and waiting.completed_at is None
    assert waiting.lease_expires_at is None
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []
    second = await claim_one(store, now=parse_rfc3339(retry_at))
    assert second.attempt == 2 and second.last_error == "boom"
    attempts = await store.get_attempts(job.job_id)
    assert [(a["attempt"], a["status"], a["error"]) for a in attempts] == [
        (1, "failed", "boom"),
        (2, "running", None),
    ]


async def test_a_stale_finish_returns_none_and_writes_nothing(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store, lease_seconds=1)
    # Not the holder.
    assert not await finish_ok(store, job, owner=OTHER, state_updates={"x": 1})
    # The holder, but of an attempt that is no longer current: the lease expired, the job
    # was recovered and claimed again by someone else.
    moment = later()
    recovered = await store.recover_expired_leases(now=moment)
    assert [r.job_id for r in recovered] == [job.job_id]
    again = await claim_one(store, owner=OTHER, now=moment)
    assert again.attempt == 2
    assert not await finish_ok(store, job, owner=OWNER, state_updates={"x": 1})
    current = await get(store, job.job_id)
    assert current.status is Status.RUNNING and current.attempt == 2 and current.result is None
    attempts = await store.get_attempts(job.job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "lost"), (2, "running")]
    assert await store.get_plugin_state("p") == {}
    # The current holder still finishes normally.
    assert await finish_ok(store, again, owner=OTHER)
    assert (await get(store, job.job_id)).status is Status.SUCCEEDED


async def test_finishes_at_once_each_get_their_own_outcome(store: Store) -> None:
    for _ in range(12):
        await enqueue(store)
    jobs = await store.claim_jobs("p", limit=12, owner=OWNER, lease_seconds=60)
    assert len(jobs) == 12
    retry = AttemptEnd(
        status=Status.QUEUED, attempt_status=AttemptStatus.FAILED, error="e", run_after=now_ts()
    )
    outcomes = await asyncio.gather(
        *(finish_ok(store, job, result=job.job_id) for job in jobs[:6]),
        *(
            store.finish_attempt(job.job_id, plugin="p", attempt=1, owner=OWNER, end=retry)
            for job in jobs[6:8]
        ),
        *(finish_ok(store, job, owner=OTHER) for job in jobs[8:]),  # not the holder
        finish_ok(store, jobs[0], result="again"),  # the same attempt finished twice
    )
    assert outcomes == [Status.SUCCEEDED] * 6 + [Status.QUEUED] * 2 + [None] * 4 + [None]
    for job in jobs[:6]:
        done = await get(store, job.job_id)
        assert (done.status, done.result) == (Status.SUCCEEDED, job.job_id)
    for job in jobs[6:8]:
        assert (await get(store, job.job_id)).status is Status.QUEUED
        assert [a["status"] for a in await store.get_attempts(job.job_id)] == ["failed"]
    for job in jobs[8:]:
        assert (await get(store, job.job_id)).status is Status.RUNNING
        assert [a["status"] for a in await store.get_attempts(job.job_id)] == ["running"]


async def test_a_finish_whose_caller_gives_up_is_still_recorded_with_the_others(
    store: Store,
) -> None:
    """A worker stopped while its finish waits (shutdown, a timeout around the call) does
    not lose the outcome it handed over, nor take the other finishes of its moment along."""
    for _ in range(4):
        await enqueue(store)
    jobs = await store.claim_jobs("p", limit=4, owner=OWNER, lease_seconds=60)
    calls = [asyncio.ensure_future(finish_ok(store, job, result=job.job_id)) for job in jobs]
    await asyncio.sleep(0)  # every call has handed its finish over
    calls[1].cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [outcomes[i] for i in (0, 2, 3)] == [Status.SUCCEEDED] * 3
    for job in jobs:
        done = await get(store, job.job_id)
        assert (done.status, done.result) == (Status.SUCCEEDED, job.job_id)


async def test_of_two_finishes_at_once_only_the_lease_holders_counts(store: Store) -> None:
    """A stale holder (an older attempt of this owner, or another owner) finishes at the
    same moment as the holder: the holder's outcome is recorded, the other gets None."""
    await enqueue(store, max_attempts=3)
    first = await claim_one(store, lease_seconds=1)
    moment = later()
    await store.recover_expired_leases(now=moment)
    second = await claim_one(store, now=moment)
    assert second.attempt == 2
    stale = AttemptEnd(
        status=Status.FAILED, attempt_status=AttemptStatus.FAILED, error="stale", exit_code=9
    )
    outcomes = await asyncio.gather(
        store.finish_attempt(first.job_id, plugin="p", attempt=1, owner=OWNER, end=stale),
        store.finish_attempt(first.job_id, plugin="p", attempt=2, owner=OTHER, end=stale),
        finish_ok(store, second, exit_code=0),
    )
    assert list(outcomes) == [None, None, Status.SUCCEEDED]
    done = await get(store, first.job_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, {"done": True})
    assert done.last_error is not None and "lost" in done.last_error, "not the stale error"
    attempts = await store.get_attempts(first.job_id)
    assert [(a["attempt"], a["status"], a["exit_code"]) for a in attempts] == [
        (1, "lost", None),
        (2, "succeeded", 0),
    ]


async def test_a_finished_job_cannot_be_finished_again(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store)
    assert await finish_ok(store, job, result="first")
    assert not await finish_ok(store, job, result="second")
    assert (await get(store, job.job_id)).result == "first"


async def test_state_updates_are_merged_into_the_plugin_state(store: Store) -> None:
    assert await store.get_plugin_state("p") == {}
    for _ in range(2):
        await enqueue(store)
    first = await claim_one(store)
    assert await finish_ok(store, first, state_updates={"cursor": 1, "seen": {"a": 1}})
    second = await claim_one(store)
    assert await finish_ok(store, second, state_updates={"cursor": 2, "seen": {"b": 2}})
    # ductile's shallow merge: a nested object is replaced whole.
    assert await store.get_plugin_state("p") == {"cursor": 2, "seen": {"b": 2}}
    assert await store.get_plugin_state("q") == {}, "state is per plugin"


# --- recovery ------------------------------------------------------------------------


async def test_an_expired_lease_is_requeued_with_the_lost_attempt_recorded(
    store: Store,
) -> None:
    await enqueue(store, max_attempts=3)
    job = await claim_one(store, lease_seconds=5)
    fresh_id = await enqueue(store)
    fresh = await claim_one(store, lease_seconds=600)
    assert fresh.job_id == fresh_id

    moment = later()
    recovered = await store.recover_expired_leases(now=moment)
    assert [(r.job_id, r.status, r.attempt) for r in recovered] == [(job.job_id, Status.QUEUED, 1)]
    back = await get(store, job.job_id)
    assert back.status is Status.QUEUED
    assert back.attempt == 1, "a lost attempt counts"
    assert back.lease_expires_at is None and back.completed_at is None
    assert back.last_error is not None and "lost" in back.last_error
    (attempt,) = await store.get_attempts(job.job_id)
    assert attempt["status"] == "lost"
    assert attempt["completed_at"] is not None and "lease expired" in attempt["error"]
    # The job with a live lease is left alone; the recovered one is claimable at once.
    assert (await get(store, fresh_id)).status is Status.RUNNING
    assert (await claim_one(store, now=moment)).attempt == 2
    assert await store.recover_expired_leases(now=moment) == []


async def test_an_expired_lease_without_attempts_left_is_dead(store: Store) -> None:
    await enqueue(store, max_attempts=1)
    job = await claim_one(store, lease_seconds=1)
    (recovered,) = await store.recover_expired_leases(now=later())
    assert (recovered.job_id, recovered.status) == (job.job_id, Status.DEAD)
    dead = await get(store, job.job_id)
    assert dead.status is Status.DEAD and dead.completed_at is not None
    assert dead.last_error is not None and "lost" in dead.last_error
    assert [a["status"] for a in await store.get_attempts(job.job_id)] == ["lost"]
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []


async def test_an_expired_lease_with_a_cancel_request_ends_canceled(store: Store) -> None:
    await enqueue(store, max_attempts=3)
    job = await claim_one(store, lease_seconds=1)
    assert await store.cancel_job(job.job_id) is Status.RUNNING
    (recovered,) = await store.recover_expired_leases(now=later())
    assert recovered.status is Status.CANCELED
    assert (await get(store, job.job_id)).status is Status.CANCELED


async def test_recovery_uses_the_now_it_is_given(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store, lease_seconds=30)
    assert await store.recover_expired_leases(now=utcnow()) == []
    later = utcnow() + timedelta(seconds=31)
    assert [r.job_id for r in await store.recover_expired_leases(now=later)] == [job.job_id]


async def test_recovery_works_in_batches(store: Store) -> None:
    for _ in range(7):
        await enqueue(store)
    await store.claim_jobs("p", limit=7, owner=OWNER, lease_seconds=1)
    moment = later()
    first = await store.recover_expired_leases(now=moment, limit=5)
    second = await store.recover_expired_leases(now=moment, limit=5)
    assert (len(first), len(second)) == (5, 2)
    assert {r.job_id for r in first}.isdisjoint({r.job_id for r in second})
    page = await store.list_jobs(JobFilter(statuses=(Status.QUEUED,)))
    assert page.total == 7


async def test_two_stores_on_one_database_recover_each_job_once(
    store: Store, another_store: Store
) -> None:
    stores = [store, another_store]
    ids = set()
    for _ in range(120):
        ids.add(await enqueue(stores[0]))
    await stores[0].claim_jobs("p", limit=200, owner=OWNER, lease_seconds=1)
    moment = later()

    async def recover_all(s: Store) -> list[str]:
        found: list[str] = []
        while batch := await s.recover_expired_leases(now=moment, limit=10):
            found += [r.job_id for r in batch]
            await asyncio.sleep(0)
        return found

    a, b = await asyncio.gather(recover_all(stores[0]), recover_all(stores[1]))
    assert len(a) + len(b) == 120
    assert set(a) | set(b) == ids and set(a).isdisjoint(b)
    for job_id in list(ids)[:20]:
        attempts = await stores[1].get_attempts(job_id)
        assert [x["status"] for x in attempts] == ["lost"]
    page = await stores[1].list_jobs(JobFilter(statuses=(Status.QUEUED,)), limit=1)
    assert page.total == 120


async def test_fabricated_post_crash_rows_are_recovered_by_a_fresh_store(
    store: Store, raw_db: RawDatabase, another_store: Store
) -> None:
    """A process died mid-attempt: its rows say running, with a lease in the past."""
    queued = await store.enqueue(NewJob("p", "poll", {}, max_attempts=2))
    last_try = await store.enqueue(NewJob("p", "poll", {}, max_attempts=2))

    past = format_ts(utcnow() - timedelta(minutes=10))
    for job_id, attempt in ((queued.job_id, 1), (last_try.job_id, 2)):
        raw_db.execute(
            "UPDATE jobs SET status = 'running', attempt = ?, started_at = ?,"
            " lease_expires_at = ?, lease_owner = 'crashed-host:4242:dead' WHERE job_id = ?",
            (attempt, past, past, job_id),
        )
        raw_db.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, started_at)"
            " VALUES (?, ?, 'running', ?)",
            (job_id, attempt, past),
        )

    # Another process, which never saw these jobs, recovers them.
    restarted = another_store
    recovered = {r.job_id: r.status for r in await restarted.recover_expired_leases()}
    assert recovered == {queued.job_id: Status.QUEUED, last_try.job_id: Status.DEAD}
    attempts = await restarted.get_attempts(queued.job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "lost")]
    job = await claim_one(restarted, owner=OWNER)
    assert (job.job_id, job.attempt) == (queued.job_id, 2)


# --- release -------------------------------------------------------------------------


async def test_release_returns_to_queued_without_spending_the_attempt(
    store: Store,
) -> None:
    await enqueue(store)
    job = await claim_one(store)
    assert await store.release_jobs([(job.job_id, job.attempt)], owner=OTHER) == []
    assert (await get(store, job.job_id)).status is Status.RUNNING
    assert await store.release_jobs([(job.job_id, job.attempt)], owner=OWNER) == [job.job_id]
    back = await get(store, job.job_id)
    assert back.status is Status.QUEUED
    assert back.attempt == 0 and back.started_at is None
    assert back.lease_expires_at is None and back.completed_at is None
    # The interrupted attempt stays on record but does not count: its number is reused.
    interrupted = await store.get_attempts(job.job_id)
    assert [(a["attempt"], a["status"]) for a in interrupted] == [(1, "interrupted")]
    assert interrupted[0]["completed_at"] is not None
    again = await claim_one(store)
    assert again.attempt == 1
    attempts = await store.get_attempts(job.job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "interrupted"), (1, "running")]


async def test_release_after_a_retry_keeps_the_spent_attempts(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store)
    retry = AttemptEnd(
        status=Status.QUEUED, attempt_status=AttemptStatus.FAILED, error="e", run_after=now_ts()
    )
    assert await store.finish_attempt(job.job_id, plugin="p", attempt=1, owner=OWNER, end=retry)
    second = await claim_one(store)
    assert await store.release_jobs([(job.job_id, 2)], owner=OWNER) == [job.job_id]
    back = await get(store, job.job_id)
    assert back.status is Status.QUEUED and back.attempt == 1 and back.last_error == "e"
    assert [(a["attempt"], a["status"]) for a in await store.get_attempts(second.job_id)] == [
        (1, "failed"),
        (2, "interrupted"),
    ]


# --- cancel --------------------------------------------------------------------------


async def test_cancel_a_queued_job_at_once(store: Store) -> None:
    job_id = await enqueue(store)
    assert await store.cancel_job(job_id) is Status.CANCELED
    job = await get(store, job_id)
    assert job.status is Status.CANCELED and job.completed_at is not None
    assert job.last_error == "canceled by request"
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []


async def test_cancel_a_running_job_flags_it_for_its_holder(store: Store) -> None:
    await enqueue(store)
    job = await claim_one(store)
    assert await store.cancel_job(job.job_id) is Status.RUNNING
    assert (await get(store, job.job_id)).status is Status.RUNNING
    kept = await store.heartbeat([(job.job_id, 1)], owner=OWNER, lease_seconds=60)
    assert kept == {job.job_id: True}
    end = AttemptEnd(
        status=Status.CANCELED, attempt_status=AttemptStatus.CANCELED, error="canceled by request"
    )
    assert await store.finish_attempt(job.job_id, plugin="p", attempt=1, owner=OWNER, end=end)
    assert (await get(store, job.job_id)).status is Status.CANCELED
    assert [a["status"] for a in await store.get_attempts(job.job_id)] == ["canceled"]


async def test_a_cancel_request_is_not_lost_when_the_attempt_fails_into_a_retry(
    store: Store,
) -> None:
    """Cancel arrives while the attempt runs; the attempt then fails with a retry left.
    The job must end canceled, not wait for a retry that would run the plugin again."""
    await enqueue(store, max_attempts=3)
    job = await claim_one(store)
    assert await store.cancel_job(job.job_id) is Status.RUNNING
    retry = AttemptEnd(
        status=Status.QUEUED, attempt_status=AttemptStatus.FAILED, error="boom", run_after=now_ts()
    )
    assert await store.finish_attempt(job.job_id, plugin="p", attempt=1, owner=OWNER, end=retry)
    after = await get(store, job.job_id)
    assert after.status is Status.CANCELED, after
    assert after.completed_at is not None
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []


async def test_a_cancel_request_is_honoured_when_the_job_is_released(
    store: Store,
) -> None:
    await enqueue(store)
    job = await claim_one(store)
    assert await store.cancel_job(job.job_id) is Status.RUNNING
    await store.release_jobs([(job.job_id, 1)], owner=OWNER)
    assert (await get(store, job.job_id)).status is Status.CANCELED
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.CANCELED])
async def test_cancel_a_finished_job_is_a_conflict(store: Store, status: Status) -> None:
    job_id = await enqueue(store)
    if status is Status.SUCCEEDED:
        assert await finish_ok(store, await claim_one(store))
    else:
        await store.cancel_job(job_id)
    with pytest.raises(Conflict, match=f"already finished as {status.value}"):
        await store.cancel_job(job_id)
    assert (await get(store, job_id)).status is status


async def test_cancel_an_unknown_job(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.cancel_job("00000000-0000-0000-0000-000000000000")


# --- retention -----------------------------------------------------------------------


async def test_prune_deletes_only_finished_jobs_older_than_the_cutoff_in_batches(
    store: Store,
) -> None:
    old_queued = await enqueue(store, "queued-plugin")
    old_running_id = await enqueue(store, "running-plugin")
    await claim_one(store, "running-plugin")
    old_finished: list[str] = []
    for _ in range(5):
        await enqueue(store)
        job = await claim_one(store)
        assert await finish_ok(store, job)
        old_finished.append(job.job_id)
    old_canceled = await enqueue(store)
    await store.cancel_job(old_canceled)
    await asyncio.sleep(0.002)
    cutoff = now_ts()
    await asyncio.sleep(0.002)
    await enqueue(store)
    recent = await claim_one(store)
    assert await finish_ok(store, recent)

    assert await store.prune_finished(before=cutoff, limit=2) == 2
    assert await store.prune_finished(before=cutoff, limit=2) == 2
    assert await store.prune_finished(before=cutoff, limit=2) == 2
    assert await store.prune_finished(before=cutoff, limit=2) == 0

    for job_id in [*old_finished, old_canceled]:
        assert await store.get_job(job_id) is None
        assert await store.get_attempts(job_id) == [], "attempts go with their job"
    for job_id in (old_queued, old_running_id, recent.job_id):
        assert await store.get_job(job_id) is not None
    assert len(await store.get_attempts(recent.job_id)) == 1
    # The exact counts follow the deletes.
    assert (await store.list_jobs(JobFilter())).total == 3
    assert (await store.list_jobs(JobFilter(statuses=(Status.SUCCEEDED,)))).total == 1
    # Even a cutoff in the future never touches active jobs.
    future = format_ts(utcnow() + timedelta(days=1))
    assert await store.prune_finished(before=future) == 1
    assert {j.job_id for j in (await store.list_jobs(JobFilter())).jobs} == {
        old_queued,
        old_running_id,
    }


# --- orphans -------------------------------------------------------------------------


async def test_queued_by_plugin_counts_only_queued_local_jobs(store: Store) -> None:
    for _ in range(3):
        await enqueue(store, "gone")
    running = await enqueue(store, "p")
    await enqueue(store, "p")
    await store.set_status(running, Status.RUNNING)
    assert await store.queued_by_plugin() == {"gone": 3, "p": 1}


async def test_cancel_queued_by_filter_in_batches(store: Store) -> None:
    polls = {await enqueue(store, "gone") for _ in range(3)}
    other = (await store.enqueue(NewJob("gone", "push"))).job_id
    running = await enqueue(store, "gone")
    await store.set_status(running, Status.RUNNING)
    kept = await enqueue(store, "p")
    first = await store.cancel_queued(plugin="gone", command="poll", reason="gone", limit=2)
    second = await store.cancel_queued(plugin="gone", command="poll", reason="gone", limit=2)
    assert (len(first), len(second)) == (2, 1)
    assert set(first) | set(second) == polls
    for job_id in set(first) | set(second):
        job = await get(store, job_id)
        assert (job.status, job.last_error) == (Status.CANCELED, "gone")
    assert (await get(store, other)).status is Status.QUEUED, "another command is untouched"
    assert (await get(store, running)).status is Status.RUNNING, "running jobs are left alone"
    assert (await get(store, kept)).status is Status.QUEUED
    assert await store.cancel_queued(plugin="gone", command="poll") == []
    assert await store.cancel_queued(plugin="gone") == [other]


async def test_a_claim_in_one_store_is_seen_by_another(store: Store, another_store: Store) -> None:
    job_id = await enqueue(store)
    job = await claim_one(another_store, owner=OTHER)
    assert job.job_id == job_id
    assert await store.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60) == []
    assert not await finish_ok(store, job, owner=OWNER)
    assert await finish_ok(store, job, owner=OTHER)


async def test_a_mirrored_databricks_run_cannot_be_canceled_here(store: Store) -> None:
    from queue_service.store import Conflict, ExternalJob

    run = ExternalJob(
        job_id="7f0c4a52-0000-5000-8000-000000000001",
        plugin="databricks",
        command="nightly",
        status=Status.RUNNING,
        status_if_new=Status.RUNNING,
        external_id="42",
        external_url=None,
        created_at=now_ts(),
        started_at=now_ts(),
        completed_at=None,
        attempt=1,
        last_error=None,
        result={"run_id": 42},
    )
    await store.upsert_external_jobs([run])
    with pytest.raises(Conflict, match="cancel the run there"):
        await store.cancel_job(run.job_id)
    assert (await get(store, run.job_id)).status is Status.RUNNING

"""Listing against an oracle: every filter shape, time bounds on and off hour edges, cursors.

The store picks index walks and sums hourly rollups; this test compares each page and each
total with a brute-force filter over every row, so a wrong walk, a lost edge hour or an
off-by-one bound shows as a difference.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta
from typing import cast

import pytest

from queue_service.statuses import Source, Status
from queue_service.store import Cursor, ExternalJob, JobFilter, NewJob
from queue_service.store.postgresql import PostgreSQLStore
from queue_service.store.types import Job, JobSummary
from queue_service.timeutil import format_ts

from .conftest import RawDatabase, StoreUnderTest, fold_everything

pytestmark = pytest.mark.anyio

START = datetime(2026, 11, 20, 9, 0, 0).astimezone()
PLUGINS = {"alpha": ["poll", "sync"], "beta": ["poll"], "gamma": ["poll", "push", "sync"]}


def _rows(seed: int, count: int, hours: int = 6) -> list[ExternalJob]:
    rng = random.Random(seed)
    weights = [70, 8, 5, 5, 4, 4, 4]  # succeeded dominates, as in production
    statuses = [
        Status.SUCCEEDED,
        Status.FAILED,
        Status.QUEUED,
        Status.RUNNING,
        Status.DEAD,
        Status.CANCELED,
        Status.TIMED_OUT,
    ]
    jobs = []
    for i in range(count):
        plugin = rng.choice(sorted(PLUGINS))
        # Clusters of equal timestamps exercise the seq tie-break; some land on hour edges.
        minute = rng.choice([0, 0, 59, rng.randrange(0, 60)])
        moment = START + timedelta(hours=rng.randrange(0, hours), minutes=minute)
        if rng.random() < 0.3:
            moment = moment.replace(second=0, microsecond=0)
        else:
            moment = moment.replace(second=rng.randrange(60), microsecond=rng.randrange(10**6))
        status = rng.choices(statuses, weights)[0]
        jobs.append(
            ExternalJob(
                job_id=f"job-{i:05d}",
                plugin=plugin,
                command=rng.choice(PLUGINS[plugin]),
                status=status,
                status_if_new=status,
                external_id=str(i),
                external_url=None,
                created_at=format_ts(moment),
                started_at=None,
                completed_at=None,
                attempt=1,
                last_error=None,
                result=None,
                source=rng.choice([Source.LOCAL, Source.LOCAL, Source.DATABRICKS]),
            )
        )
    return jobs


def _matches(job: ExternalJob | Job, f: JobFilter) -> bool:
    return (
        (f.plugin is None or job.plugin == f.plugin)
        and (f.command is None or job.command == f.command)
        and (not f.statuses or job.status in f.statuses)
        and (not f.sources or job.source in f.sources)
        and (f.created_after is None or job.created_at > f.created_after)
        and (f.created_before is None or job.created_at < f.created_before)
    )


def _filters(rng: random.Random, times: list[str], hours: int = 6) -> JobFilter:
    plugin = rng.choice([None, None, *sorted(PLUGINS), "missing"])
    command = rng.choice([None, None, "poll", "sync", "push"])
    status_sets: list[tuple[Status, ...]] = [
        (),
        (Status.SUCCEEDED,),
        (Status.FAILED,),
        (Status.QUEUED, Status.RUNNING),
        (Status.FAILED, Status.DEAD, Status.TIMED_OUT),
        (Status.SUCCEEDED, Status.FAILED),
    ]
    sources = rng.choice([(), (Source.LOCAL,), (Source.DATABRICKS,)])

    def bound() -> str | None:
        kind = rng.choice(["none", "none", "row", "hour", "between"])
        if kind == "none":
            return None
        if kind == "row":  # exactly a stored timestamp: the bound is exclusive
            return rng.choice(times)
        hour = START + timedelta(hours=rng.randrange(-1, hours + 1))
        if kind == "hour":  # exactly on an hour edge
            return format_ts(hour)
        return format_ts(hour + timedelta(minutes=rng.randrange(60), seconds=rng.randrange(60)))

    return JobFilter(
        plugin=plugin,
        command=command,
        statuses=rng.choice(status_sets),
        sources=sources,
        created_after=bound(),
        created_before=bound(),
    )


async def _all_pages(store: StoreUnderTest, f: JobFilter, limit: int) -> list[JobSummary]:
    seen: list[JobSummary] = []
    cursor: Cursor | None = None
    totals = set()
    while True:
        page = await store.list_jobs(f, limit=limit, cursor=cursor)
        totals.add(page.total)
        assert len(page.jobs) <= limit
        seen += page.jobs
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(totals) == 1, f"the total changed between pages: {totals}"
    return seen


#: Walks the PostgreSQL store may choose for a page (postgresql/listing.py).
PG_WALKS = ["walk_time", "walk_status", "walk_plugin_command", "walk_status_plugin_command"]


@pytest.mark.parametrize("planner", ["default", "per-pair walks", *PG_WALKS])
async def test_pages_and_totals_match_a_brute_force_filter(
    store: StoreUnderTest, store_backend: str, planner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if planner == "per-pair walks":
        if store_backend != "sqlite":
            pytest.skip("SQLite's planner switch; the PostgreSQL walks are parametrized apart")
        # Make the planner prefer one walk per (plugin, command) wherever it may.
        from queue_service.store.sqlite import listing

        monkeypatch.setattr(listing, "_MAX_SCAN_RATIO", 0)
        monkeypatch.setattr(listing, "_MAX_WALKS", 1000)
    elif planner in PG_WALKS:
        if store_backend != "postgresql":
            pytest.skip("a walk of the PostgreSQL store")
        # Take this walk wherever it is one of the candidates, whatever it costs.
        from queue_service.store.postgresql import listing as pg_listing

        cheapest = pg_listing._cheapest

        def prefer(candidates: list[pg_listing.Candidate]) -> pg_listing.Candidate:
            chosen = [c for c in candidates if c[1] == planner]
            return chosen[0] if chosen else cheapest(candidates)

        monkeypatch.setattr(pg_listing, "_cheapest", prefer)
    jobs = _rows(seed=7, count=600)
    await store.upsert_external_jobs(jobs)
    stored = {j.job_id: j for j in jobs}
    order = {}
    for job_id in stored:
        got = await store.get_job(job_id)
        assert got is not None
        order[job_id] = (got.created_at, got.seq)
    times = sorted({j.created_at for j in jobs})
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        f = _filters(rng, times)
        expected = sorted(
            (j.job_id for j in jobs if _matches(j, f)), key=lambda i: order[i], reverse=True
        )
        limit = rng.choice([1, 7, 50])
        seen = await _all_pages(store, f, limit)
        assert [j.job_id for j in seen] == expected, f
        first = await store.list_jobs(f, limit=limit)
        assert first.total == len(expected), f
        checked += bool(expected)
    assert checked > 60  # most combinations found something


async def test_totals_over_days_match_a_brute_force_filter(store: StoreUnderTest) -> None:
    """Bounds days apart: whole days and hours come from the rollups (PostgreSQL keeps
    daily ones too), the partial hours at the edges from an index."""
    days = 5
    jobs = _rows(seed=17, count=500, hours=24 * days)
    await store.upsert_external_jobs(jobs)
    order = {}
    for job in jobs:
        got = await store.get_job(job.job_id)
        assert got is not None
        order[job.job_id] = (got.created_at, got.seq)
    times = sorted({j.created_at for j in jobs})
    rng = random.Random(19)
    checked = 0
    for _ in range(200):
        f = _filters(rng, times, hours=24 * days)
        if f.created_after is None and f.created_before is None:
            continue
        expected = sorted(
            (j.job_id for j in jobs if _matches(j, f)), key=lambda i: order[i], reverse=True
        )
        page = await store.list_jobs(f, limit=5)
        assert page.total == len(expected), f
        assert [j.job_id for j in page.jobs] == expected[:5], f
        checked += bool(expected)
    assert checked > 60


async def test_totals_include_writes_made_around_the_store(
    store: StoreUnderTest, store_backend: str, raw_db: RawDatabase
) -> None:
    """Counts stay exact for a row written by hand (its delta is not folded yet)."""
    await store.upsert_external_jobs(_rows(seed=3, count=40))
    before = await store.list_jobs(JobFilter(plugin="alpha"))
    raw_db.execute(
        "INSERT INTO jobs (job_id, plugin, command, status, created_at, run_after)"
        " VALUES ('by-hand', 'alpha', 'poll', 'failed', ?, ?)",
        (format_ts(START + timedelta(hours=2)), format_ts(START)),
    )
    after = await store.list_jobs(JobFilter(plugin="alpha"))
    assert after.total == before.total + 1
    bounded = await store.list_jobs(
        JobFilter(plugin="alpha", statuses=(Status.FAILED,), created_after=format_ts(START))
    )
    assert "by-hand" in [j.job_id for j in bounded.jobs]
    unfolded = await store.list_jobs(JobFilter(statuses=(Status.FAILED,)))
    # Folding the hand-made delta leaves the totals where they were. SQLite folds before
    # every commit of its writer; PostgreSQL in the background, and on request.
    await store.enqueue(NewJob("other", "poll"))
    if store_backend == "postgresql":
        await fold_everything(cast(PostgreSQLStore, store))
    pending = raw_db.execute("SELECT COUNT(*) FROM job_count_deltas")[0][0]
    truth = raw_db.execute(
        "SELECT plugin, command, status, source, COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4"
    )
    counted = raw_db.execute(
        "SELECT plugin, command, status, source, n FROM job_counts WHERE n != 0"
    )
    assert pending == 0
    assert sorted(truth) == sorted(counted)
    folded = await store.list_jobs(JobFilter(statuses=(Status.FAILED,)))
    assert folded.total == unfolded.total


async def test_counts_by_status_and_by_plugin_match_a_brute_force_count(
    store: StoreUnderTest,
) -> None:
    jobs = _rows(seed=5, count=300)
    await store.upsert_external_jobs(jobs)
    # A local job moved on by the store itself, so the counts follow a transition too.
    enqueued = await store.enqueue(NewJob("beta", "poll"))
    await store.set_status(enqueued.job_id, Status.CANCELED)
    everything = [
        (j.plugin, j.command, j.status, j.source) for j in jobs if j.status is not None
    ] + [("beta", "poll", Status.CANCELED, Source.LOCAL)]
    rng = random.Random(13)
    for _ in range(40):
        f = _filters(rng, [format_ts(START)])  # time bounds are dropped below
        f = JobFilter(plugin=f.plugin, command=f.command, statuses=f.statuses, sources=f.sources)
        expected: dict[Status, int] = {}
        for plugin, command, status, source in everything:
            if (
                (f.plugin is None or plugin == f.plugin)
                and (f.command is None or command == f.command)
                and (not f.statuses or status in f.statuses)
                and (not f.sources or source in f.sources)
            ):
                expected[status] = expected.get(status, 0) + 1
        assert await store.count_jobs_by_status(f) == expected, f
    by_plugin: dict[str, dict[Status, int]] = {}
    for plugin, _command, status, _source in everything:
        by_plugin.setdefault(plugin, {})
        by_plugin[plugin][status] = by_plugin[plugin].get(status, 0) + 1
    assert await store.count_jobs_by_plugin() == by_plugin


async def test_counts_by_status_refuse_time_bounds(store: StoreUnderTest) -> None:
    with pytest.raises(ValueError, match="time bounds"):
        await store.count_jobs_by_status(JobFilter(created_after=format_ts(START)))


async def test_the_oldest_queued_job_is_the_first_created_still_queued(
    store: StoreUnderTest,
) -> None:
    assert await store.oldest_queued_job() is None
    first, second, third = await store.enqueue_many(
        [NewJob("p", "a"), NewJob("p", "b"), NewJob("q", "c")]
    )
    oldest = await store.oldest_queued_job()
    assert oldest is not None and oldest.job_id == first.job_id
    assert oldest.status is Status.QUEUED
    # Claimed (running) and finished jobs are not queued any more.
    claimed = await store.claim_jobs("p", limit=1, owner="t", lease_seconds=30)
    assert [j.job_id for j in claimed] == [first.job_id]
    oldest = await store.oldest_queued_job()
    assert oldest is not None and oldest.job_id == second.job_id
    await store.cancel_job(second.job_id)
    oldest = await store.oldest_queued_job()
    assert oldest is not None and oldest.job_id == third.job_id
    await store.cancel_job(third.job_id)
    assert await store.oldest_queued_job() is None


async def test_own_jobs_pages_and_totals_match_a_brute_force_filter(
    store: StoreUnderTest,
) -> None:
    """JobFilter.submitted_by_token (GET /jobs?mine=true) beside every other filter: local
    jobs of three tokens and of none, in several statuses, among Databricks rows."""
    await store.upsert_external_jobs(_rows(seed=5, count=150))
    rng = random.Random(13)
    tokens = [1, 2, 3, None]
    for i in range(240):
        plugin = rng.choice(sorted(PLUGINS))
        await store.enqueue(
            NewJob(
                plugin,
                rng.choice(PLUGINS[plugin]),
                {"i": i},
                submitted_by="someone",
                submitted_by_token=rng.choice(tokens),
            )
        )
    # Some jobs run, some are canceled: statuses beyond queued.
    for plugin in PLUGINS:
        await store.claim_jobs(plugin, limit=15, owner="w", lease_seconds=60)
    everything = []
    cursor = None
    while True:
        page = await store.list_jobs(JobFilter(), limit=200, cursor=cursor)
        everything += page.jobs
        if (cursor := page.next_cursor) is None:
            break
    jobs = {}
    for summary in everything:
        job = await store.get_job(summary.job_id)
        assert job is not None
        if job.status is Status.QUEUED and rng.random() < 0.2:
            await store.cancel_job(job.job_id)
            job = await store.get_job(job.job_id)
            assert job is not None
        jobs[job.job_id] = job
    assert {j.status for j in jobs.values() if j.submitted_by_token} >= {
        Status.QUEUED,
        Status.RUNNING,
        Status.CANCELED,
    }
    times = sorted({j.created_at for j in jobs.values()})
    checked = 0
    for _ in range(120):
        f = _filters(rng, times)
        # Fewer narrowing filters than in the test above: own jobs are local and recent.
        f = dataclasses.replace(
            f,
            submitted_by_token=rng.choice([1, 2, 3, 99]),
            statuses=f.statuses if rng.random() < 0.5 else (),
            sources=f.sources if rng.random() < 0.3 else (),
            plugin=f.plugin if rng.random() < 0.5 else None,
            created_after=f.created_after if rng.random() < 0.5 else None,
            created_before=f.created_before if rng.random() < 0.3 else None,
        )
        expected = [
            j.job_id
            for j in sorted(jobs.values(), key=lambda j: (j.created_at, j.seq), reverse=True)
            if j.submitted_by_token == f.submitted_by_token and _matches(j, f)
        ]
        limit = rng.choice([1, 7, 50])
        seen = await _all_pages(store, f, limit)
        assert [j.job_id for j in seen] == expected, f
        assert (await store.list_jobs(f, limit=limit)).total == len(expected), f
        checked += bool(expected)
    assert checked > 30

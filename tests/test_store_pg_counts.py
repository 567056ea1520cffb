"""The PostgreSQL store's exact counts: deltas appended by every writer, folded into the
rollups by any process (one at a time), read as rollups + unfolded deltas.

What both stores share (totals against a brute-force filter) is in test_store_listing.py;
this file checks what only the PostgreSQL mechanism has: concurrent writers and folders in
several processes, the fold lock, rows dropped at zero."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from queue_service.statuses import Source, Status
from queue_service.store import JobFilter, NewJob
from queue_service.store.postgresql import PostgreSQLStore
from queue_service.store.types import JobCount
from tests.conftest import fold_everything

pytestmark = pytest.mark.anyio

#: Every rollup and what one of its rows counts: (table, key columns).
ROLLUPS = {
    "job_counts": "plugin, command, status, source",
    "job_counts_status": "status, source",
    "job_counts_hour": "status, source, substr(created_at, 1, 13)",
    "job_counts_hour_plugin": "status, source, plugin, substr(created_at, 1, 13)",
    "job_counts_hour_command": "status, source, command, substr(created_at, 1, 13)",
    "job_counts_hour_plugin_command": (
        "status, source, plugin, command, substr(created_at, 1, 13)"
    ),
    "job_counts_day": "status, source, substr(created_at, 1, 10)",
    "job_counts_day_plugin": "status, source, plugin, substr(created_at, 1, 10)",
    "job_counts_day_command": "status, source, command, substr(created_at, 1, 10)",
    "job_counts_day_plugin_command": "status, source, plugin, command, substr(created_at, 1, 10)",
}


@pytest.fixture
async def stores(postgresql_url: str) -> AsyncIterator[tuple[PostgreSQLStore, PostgreSQLStore]]:
    """Two stores on one schema: what two processes (two hosts) see."""
    first, second = PostgreSQLStore(postgresql_url), PostgreSQLStore(postgresql_url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


def _raw(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def _rollups_match_the_jobs(url: str) -> None:
    """Each rollup, plus the deltas not folded yet, equals a GROUP BY over the jobs; no
    rollup row is zero."""
    with _raw(url) as conn:
        for table, key in ROLLUPS.items():
            columns = key.replace("substr(created_at, 1, 13)", "hour").replace(
                "substr(created_at, 1, 10)", "day"
            )
            delta_columns = columns.replace("day", "substr(hour, 1, 10)")
            truth = conn.execute(f"SELECT {key}, count(*) FROM jobs GROUP BY {key}").fetchall()
            counted = conn.execute(
                f"SELECT {columns}, sum(n) FROM ("
                f" SELECT {columns}, n FROM {table}"
                f" UNION ALL SELECT {delta_columns}, d FROM job_count_deltas"
                f") AS c GROUP BY {columns} HAVING sum(n) <> 0"
            ).fetchall()
            assert sorted(truth) == sorted(counted), table
            zeros = conn.execute(f"SELECT count(*) FROM {table} WHERE n = 0").fetchone()
            assert zeros == (0,), table


async def test_counts_stay_exact_with_writers_and_folders_in_two_processes(
    stores: tuple[PostgreSQLStore, PostgreSQLStore], postgresql_url: str
) -> None:
    first, second = stores
    rng = random.Random(5)
    plugins = {"alpha": ["poll", "sync"], "beta": ["poll"]}

    async def writer(store: PostgreSQLStore, seed: int) -> None:
        mine = random.Random(seed)
        for _ in range(15):
            batch = []
            for _ in range(mine.randrange(1, 6)):
                plugin = mine.choice(sorted(plugins))
                batch.append(NewJob(plugin, mine.choice(plugins[plugin])))
            enqueued = await store.enqueue_many(batch)
            for result in enqueued:
                if mine.random() < 0.4:
                    await store.set_status(result.job_id, Status.CANCELED)

    async def folder(store: PostgreSQLStore) -> int:
        folded = 0
        for _ in range(40):
            folded += await store.fold_count_deltas(batch=7) or 0
            await asyncio.sleep(0)
        return folded

    writes = asyncio.gather(
        *(writer(s, rng.randrange(10**6)) for s in (first, second, first, second))
    )
    folds = asyncio.gather(folder(first), folder(second))
    await writes
    assert sum(await folds) > 0
    # Exact at any moment, folded or not: the totals against the jobs themselves.
    _rollups_match_the_jobs(postgresql_url)
    with _raw(postgresql_url) as conn:
        (every,) = conn.execute("SELECT count(*) FROM jobs").fetchone() or (0,)
        (canceled,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'canceled'"
        ).fetchone() or (0,)
    assert (await first.list_jobs(JobFilter())).total == every
    assert (await second.list_jobs(JobFilter(statuses=(Status.CANCELED,)))).total == canceled
    await fold_everything(first)
    _rollups_match_the_jobs(postgresql_url)
    with _raw(postgresql_url) as conn:
        assert conn.execute("SELECT count(*) FROM job_count_deltas").fetchone() == (0,)
    assert (await second.list_jobs(JobFilter())).total == every


async def test_a_fold_never_waits_for_another(
    stores: tuple[PostgreSQLStore, PostgreSQLStore], postgresql_url: str
) -> None:
    first, _ = stores
    await first.enqueue_many([NewJob("p", "a"), NewJob("p", "b")])
    with _raw(postgresql_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock('job_count_deltas'::regclass::oid::integer, 0)")
        assert await first.fold_count_deltas() is None  # another process is folding
        assert await first.queue_depth() == 2  # and the counts read the same
    await fold_everything(first)
    assert await first.queue_depth() == 2


async def test_count_rows_that_reach_zero_are_dropped(
    stores: tuple[PostgreSQLStore, PostgreSQLStore], postgresql_url: str
) -> None:
    first, _ = stores
    enqueued = await first.enqueue_many([NewJob("p", "a"), NewJob("p", "a"), NewJob("q", "b")])
    await fold_everything(first)
    for result in enqueued[:2]:
        await first.set_status(result.job_id, Status.CANCELED)
    await fold_everything(first)
    with _raw(postgresql_url) as conn:
        queued = conn.execute(
            "SELECT plugin, command, n FROM job_counts WHERE status = 'queued'"
        ).fetchall()
    assert queued == [("q", "b", 1)]
    _rollups_match_the_jobs(postgresql_url)
    assert sorted(await first.job_counts()) == [
        JobCount("p", "a", Source.LOCAL, Status.CANCELED, 2),
        JobCount("q", "b", Source.LOCAL, Status.QUEUED, 1),
    ]


async def test_closing_folds_what_is_left(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url)
    await store.open()
    await store.enqueue_many([NewJob("p", "a") for _ in range(30)])
    await store.close()
    with _raw(postgresql_url) as conn:
        assert conn.execute("SELECT count(*) FROM job_count_deltas").fetchone() == (0,)
        assert conn.execute("SELECT status, source, n FROM job_counts_status").fetchall() == [
            ("queued", "local", 30)
        ]

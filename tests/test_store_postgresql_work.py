"""What only the PostgreSQL store's worker side has: wake-ups across processes (LISTEN/NOTIFY)
and one Databricks sync per workspace across processes (a session advisory lock).

"Another process" is a second store on the same schema: its own pool and connections, as a
process on another host would have."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from queue_service.store import NewJob
from queue_service.store.postgresql import PostgreSQLStore

pytestmark = pytest.mark.anyio

#: Generous bounds on waits that end at once when the feature works (never reached then).
WAKE_WITHIN = 10.0


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgreSQLStore]:
    store = PostgreSQLStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def pg(postgresql_url: str) -> AsyncIterator[PostgreSQLStore]:
    async with opened(postgresql_url) as store:
        yield store


@pytest.fixture
async def other(pg: PostgreSQLStore, postgresql_url: str) -> AsyncIterator[PostgreSQLStore]:
    """Another process: its own pool and connections on the same schema."""
    async with opened(postgresql_url) as store:
        yield store


def raw(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


async def listening(store: PostgreSQLStore) -> int:
    """Start the store's LISTEN connection, take the wake-up it gives when it (re)connects,
    and return its server pid."""
    await asyncio.wait_for(store.wait_for_work(), WAKE_WITHIN)
    listener = store._listener
    assert listener is not None and listener.listening and listener.backend_pid is not None
    return listener.backend_pid


async def test_a_job_enqueued_by_another_process_wakes_a_waiting_worker(
    pg: PostgreSQLStore, other: PostgreSQLStore
) -> None:
    await listening(pg)
    waiter = asyncio.create_task(pg.wait_for_work())
    await asyncio.sleep(0.2)
    assert not waiter.done(), "woken without any job"
    await other.enqueue(NewJob("p", "poll"))
    # Without the notification the waiter would never return: nothing else ends it.
    await asyncio.wait_for(waiter, WAKE_WITHIN)
    (job,) = await pg.claim_jobs("p", limit=5, owner="o", lease_seconds=60)
    assert job.plugin == "p"


async def test_a_requeued_job_wakes_waiting_workers_too(
    pg: PostgreSQLStore, other: PostgreSQLStore
) -> None:
    await other.enqueue(NewJob("p", "poll"))
    (job,) = await other.claim_jobs("p", limit=1, owner="o", lease_seconds=60)
    await listening(pg)
    waiter = asyncio.create_task(pg.wait_for_work())
    assert await other.release_jobs([(job.job_id, job.attempt)], owner="o") == [job.job_id]
    await asyncio.wait_for(waiter, WAKE_WITHIN)


async def test_one_wake_up_per_transaction_whatever_the_number_of_jobs(
    pg: PostgreSQLStore, postgresql_url: str
) -> None:
    with raw(postgresql_url) as conn:
        row = conn.execute("SELECT 'queue_service_work_' || 'jobs'::regclass::oid::text").fetchone()
        assert row is not None
        channel = row[0]
        conn.execute(f'LISTEN "{channel}"')
        await pg.enqueue_many([NewJob("p", "poll") for _ in range(100)])
        await pg.enqueue(NewJob("p", "poll"))
        with raw(postgresql_url) as marker:
            marker.execute("SELECT pg_notify(%s, 'end')", (channel,))
        payloads = []
        for notify in conn.notifies(timeout=WAKE_WITHIN):
            payloads.append(notify.payload)
            if notify.payload == "end":
                break
    assert payloads == ["", "", "end"], "one per enqueuing transaction"


async def test_the_listen_connection_comes_back_after_it_is_killed(
    pg: PostgreSQLStore, other: PostgreSQLStore, postgresql_url: str
) -> None:
    pid = await listening(pg)
    with raw(postgresql_url) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # It reconnects by itself (and wakes the worker once: jobs may have come meanwhile).
    await asyncio.wait_for(pg.wait_for_work(), WAKE_WITHIN)
    listener = pg._listener
    assert listener is not None and listener.listening and listener.backend_pid != pid
    waiter = asyncio.create_task(pg.wait_for_work())
    await other.enqueue(NewJob("p", "poll"))
    await asyncio.wait_for(waiter, WAKE_WITHIN)


async def test_one_sync_per_workspace_across_processes(
    pg: PostgreSQLStore, other: PostgreSQLStore
) -> None:
    async with pg.exclusive_sync("prod") as mine:
        assert mine
        async with other.exclusive_sync("prod") as theirs:
            assert not theirs, "another process holds prod"
        async with other.exclusive_sync("staging") as theirs:
            assert theirs, "workspaces are independent"
    async with other.exclusive_sync("prod") as theirs:
        assert theirs, "released at the end of the pass"


async def test_a_sync_lock_dies_with_the_session_that_held_it(
    pg: PostgreSQLStore, other: PostgreSQLStore, postgresql_url: str
) -> None:
    async with pg.exclusive_sync("prod") as mine:
        assert mine
        with raw(postgresql_url) as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objid = hashtext('prod')::oid"
            ).fetchall()
            assert len(rows) == 1
            admin.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
        # The holder "died" mid-sync (its session is gone): another process may sync now.
        deadline = asyncio.get_running_loop().time() + WAKE_WITHIN
        while True:
            async with other.exclusive_sync("prod") as theirs:
                if theirs:
                    break
            assert asyncio.get_running_loop().time() < deadline, "the lock outlived its session"
            await asyncio.sleep(0.05)

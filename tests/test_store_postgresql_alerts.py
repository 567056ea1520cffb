"""The alert outbox on PostgreSQL, where several processes write and read it at once: events
become visible in id order, routers and importers do not disturb it. (The contract itself
runs on every backend in test_store_alerts.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from queue_service.store import AlertRoute, NewJob, Store
from queue_service.store.portable import portable_table
from queue_service.store.postgresql import PostgreSQLStore

#: Only the PostgreSQL store: `store` is the contract suites' fixture, on `postgresql_url`.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("store_backend", ["postgresql"], indirect=True),
]

ROUTE = AlertRoute(alert="ops", statuses=("failed", "timed_out", "dead"))


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection of the test's own that fails fast instead of waiting for a lock."""
    conn = psycopg.connect(url)
    conn.execute("SET lock_timeout = '200ms'")
    conn.commit()
    return conn


async def test_an_uncommitted_event_holds_back_later_events_but_not_other_writes(
    store: Store, postgresql_url: str
) -> None:
    first, second, third = (
        r.job_id for r in await store.enqueue_many([NewJob("echo", "poll", {})] * 3)
    )
    await store.route_alert_events(ROUTE)
    with connect(postgresql_url) as slow, connect(postgresql_url) as other:
        # A failure whose transaction has not committed yet: its event has the next id.
        slow.execute("UPDATE jobs SET status = 'dead' WHERE job_id = %s", (first,))
        # Writes that record no event go on meanwhile...
        other.execute("UPDATE jobs SET status = 'running' WHERE job_id = %s", (second,))
        other.commit()
        # ...but a second failure waits: committing its event first would let a reader's
        # cursor pass the first one before it is visible.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("UPDATE jobs SET status = 'dead' WHERE job_id = %s", (third,))
        other.rollback()
        assert await store.route_alert_events(ROUTE) == 0  # readers never wait for it
        slow.commit()
        other.execute("UPDATE jobs SET status = 'dead' WHERE job_id = %s", (third,))
        other.commit()
    assert await store.route_alert_events(ROUTE) == 2
    deliveries = await store.claim_alert_deliveries("ops", owner="a", lease_seconds=30, limit=10)
    assert [d.first_event.job_id for d in deliveries if d.first_event] == [first, third]


async def test_imported_failures_record_no_event_and_later_ones_still_do(
    store: Store, postgresql_url: str
) -> None:
    await store.route_alert_events(ROUTE)
    at = "2026-12-01T00:00:00.000000Z"
    failed = {
        "job_id": "copied-1",
        "plugin": "echo",
        "command": "poll",
        "status": "failed",
        "source": "local",
        "last_error": "boom",
        "attempt": 1,
        "max_attempts": 1,
        "created_at": at,
        "started_at": at,
        "completed_at": at,
        "run_after": at,
        "cancel_requested": 0,
    }
    row = tuple(failed.get(column) for column in portable_table("jobs").columns)
    assert await store.import_rows("jobs", [row]) == 1
    assert await store.route_alert_events(ROUTE) == 0
    job_id = (await store.enqueue(NewJob("echo", "poll", {}))).job_id
    with connect(postgresql_url) as conn:
        conn.execute("UPDATE jobs SET status = 'dead' WHERE job_id = %s", (job_id,))
    assert await store.route_alert_events(ROUTE) == 1


async def test_routers_in_several_processes_make_one_delivery_per_event(
    store: Store, postgresql_url: str
) -> None:
    others = [PostgreSQLStore(postgresql_url) for _ in range(2)]
    for other in others:
        await other.open()
    try:
        routers = [store, *others]
        await store.route_alert_events(ROUTE)
        made = await store.enqueue_many([NewJob("echo", "poll", {})] * 30)
        with connect(postgresql_url) as conn:
            for result in made:
                conn.execute("UPDATE jobs SET status = 'dead' WHERE job_id = %s", (result.job_id,))
                conn.commit()

        async def route_all(router: Store) -> int:
            read = 0
            while n := await router.route_alert_events(ROUTE, limit=4):
                read += n
            return read

        assert sum(await asyncio.gather(*(route_all(router) for router in routers))) == 30
        counts = await store.alert_delivery_counts("ops")
        assert counts == {"pending": 30, "sent": 0, "failed": 0}
        claimed = await store.claim_alert_deliveries("ops", owner="a", lease_seconds=30, limit=50)
        assert sorted(d.first_event.job_id for d in claimed if d.first_event) == sorted(
            r.job_id for r in made
        )
    finally:
        for other in others:
            await other.close()

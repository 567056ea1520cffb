"""The store's alert contract: the outbox written with each status change, each alert's
cursor over it, rate-limit folding, leased deliveries and pruning. Runs on every backend
of the `store` fixture."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from queue_service.statuses import AttemptStatus, Status
from queue_service.store import (
    AlertDelivery,
    AlertEventKind,
    AlertRoute,
    DeliveryStatus,
    ExternalJob,
    NewJob,
    SQLiteStore,
)
from queue_service.store.types import AttemptEnd
from queue_service.timeutil import format_ts, utcnow

pytestmark = pytest.mark.anyio

FAILURES = ("failed", "timed_out", "dead")


def route(**kwargs: Any) -> AlertRoute:
    return AlertRoute(**{"alert": "ops", "statuses": FAILURES, **kwargs})


async def fail_job(store: SQLiteStore, plugin: str = "echo", command: str = "poll") -> str:
    """Enqueue, claim and finish a job as failed (no retry); returns its id."""
    job_id = (await store.enqueue(NewJob(plugin, command, {}, max_attempts=1))).job_id
    [job] = await store.claim_jobs(plugin, limit=1, owner="w", lease_seconds=60)
    assert job.job_id == job_id
    end = AttemptEnd(status=Status.FAILED, attempt_status=AttemptStatus.FAILED, error="boom")
    assert await store.finish_attempt(job_id, plugin=plugin, attempt=1, owner="w", end=end)
    return job_id


async def claim(
    store: SQLiteStore, alert: str = "ops", *, owner: str = "a", now: datetime | None = None
) -> list[AlertDelivery]:
    return await store.claim_alert_deliveries(
        alert, owner=owner, lease_seconds=30, limit=10, now=now
    )


async def test_a_failed_job_becomes_one_delivery_with_its_event(store: SQLiteStore) -> None:
    assert await store.route_alert_events(route()) == 0  # the cursor starts here
    job_id = await fail_job(store)
    assert await store.route_alert_events(route()) == 1
    assert await store.route_alert_events(route()) == 0  # the cursor moved past it
    [delivery] = await claim(store)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 1
    assert delivery.events == 1 and delivery.plugin == "echo"
    event = delivery.first_event
    assert event is not None and event == delivery.last_event
    assert (event.kind, event.job_id, event.status, event.command) == (
        AlertEventKind.STATUS,
        job_id,
        "failed",
        "poll",
    )
    assert (event.source, event.attempt, event.last_error) == ("local", 1, "boom")
    assert event.completed_at is not None and len(event.recorded_at) == 27
    assert await claim(store) == []  # leased


async def test_an_alert_does_not_send_what_happened_before_it_was_first_routed(
    store: SQLiteStore,
) -> None:
    await fail_job(store)
    assert await store.route_alert_events(route(alert="late")) == 0
    assert await claim(store, "late") == []
    await fail_job(store)
    assert await store.route_alert_events(route(alert="late")) == 1
    assert len(await claim(store, "late")) == 1


async def test_every_path_to_a_failure_status_records_an_event(store: SQLiteStore) -> None:
    await store.route_alert_events(route())
    # set_status, lease recovery (dead), a canceled job (no event), a Databricks run
    # inserted failed and one that fails on a later sync.
    queued = (await store.enqueue(NewJob("echo", "poll", {}))).job_id
    await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=60)
    await store.set_status(queued, Status.TIMED_OUT, last_error="too slow")
    lost = (await store.enqueue(NewJob("echo", "handle", {}, max_attempts=1))).job_id
    await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=1)
    recovered = await store.recover_expired_leases(now=utcnow() + timedelta(seconds=5))
    assert [(r.job_id, r.status) for r in recovered] == [(lost, Status.DEAD)]
    canceled = (await store.enqueue(NewJob("echo", "poll", {}))).job_id
    await store.cancel_job(canceled)

    def run(run_id: int, status: Status) -> ExternalJob:
        return ExternalJob(
            job_id=f"databricks:adb-1:{run_id}",
            plugin="databricks",
            command="nightly",
            status=status,
            status_if_new=Status.QUEUED,
            external_id=str(run_id),
            external_url=f"https://adb-1/#run/{run_id}",
            created_at=format_ts(utcnow()),
            started_at=format_ts(utcnow()),
            completed_at=format_ts(utcnow()) if status is Status.FAILED else None,
            attempt=1,
            last_error="cluster died" if status is Status.FAILED else None,
            result={},
        )

    await store.upsert_external_jobs([run(1, Status.FAILED), run(2, Status.RUNNING)])
    await store.upsert_external_jobs([run(1, Status.FAILED), run(2, Status.FAILED)])  # 1 unchanged
    assert await store.route_alert_events(route()) == 4
    deliveries = await claim(store)
    seen = [(d.first_event.job_id, d.first_event.status) for d in deliveries if d.first_event]
    assert seen == [
        (queued, "timed_out"),
        (lost, "dead"),
        ("databricks:adb-1:1", "failed"),
        ("databricks:adb-1:2", "failed"),
    ]
    assert deliveries[2].first_event and deliveries[2].first_event.source == "databricks"
    assert deliveries[2].first_event.external_url == "https://adb-1/#run/1"


async def test_filters_by_plugin_command_source_and_status(store: SQLiteStore) -> None:
    only = route(plugins=("echo",), commands=("handle",), sources=("local",), statuses=("dead",))
    await store.route_alert_events(only)
    await fail_job(store, "echo", "handle")  # failed, not dead
    await fail_job(store, "other", "handle")
    wanted = (await store.enqueue(NewJob("echo", "handle", {}, max_attempts=1))).job_id
    await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=1)
    await store.recover_expired_leases(now=utcnow() + timedelta(seconds=5))
    assert await store.route_alert_events(only) == 3
    deliveries = await claim(store)
    assert [d.first_event.job_id for d in deliveries if d.first_event] == [wanted]


async def test_a_run_that_ended_long_before_the_sync_saw_it_is_not_sent(
    store: SQLiteStore,
) -> None:
    await store.route_alert_events(route())
    long_ago = format_ts(utcnow() - timedelta(days=3))
    await store.upsert_external_jobs(
        [
            ExternalJob(
                job_id="databricks:adb-1:9",
                plugin="databricks",
                command="weekly",
                status=Status.FAILED,
                status_if_new=Status.QUEUED,
                external_id="9",
                external_url=None,
                created_at=long_ago,
                started_at=long_ago,
                completed_at=long_ago,
                attempt=1,
                last_error="x",
                result={},
            )
        ]
    )
    assert await store.route_alert_events(route()) == 1
    assert await claim(store) == []


async def test_a_rate_limit_folds_a_plugins_failures_into_one_delivery(
    store: SQLiteStore,
) -> None:
    limited = route(rate_limit_seconds=300)
    await store.route_alert_events(limited)
    first = await fail_job(store, "echo")
    await fail_job(store, "echo")
    other = await fail_job(store, "other")
    last = await fail_job(store, "echo")
    assert await store.route_alert_events(limited) == 4
    deliveries = await claim(store)
    assert [(d.plugin, d.events) for d in deliveries] == [("echo", 3), ("other", 1)]
    echo = deliveries[0]
    assert echo.first_event and echo.first_event.job_id == first
    assert echo.last_event and echo.last_event.job_id == last
    assert deliveries[1].first_event and deliveries[1].first_event.job_id == other
    for delivery in deliveries:
        await store.finish_alert_delivery(
            delivery.delivery_id, owner="a", attempt=1, status=DeliveryStatus.SENT
        )

    # The echo delivery was sent: a later failure is not folded into it (a receiver
    # may have seen it) but waits in a new delivery for the window's end.
    await fail_job(store, "echo")
    await fail_job(store, "echo")
    await store.route_alert_events(limited)
    assert await claim(store) == []
    window_end = utcnow() + timedelta(seconds=301)
    [held] = await claim(store, now=window_end)
    assert (held.plugin, held.events, held.attempts) == ("echo", 2, 1)
    assert held.not_before == held.next_attempt_at > echo.not_before


async def test_a_delivery_is_leased_to_one_owner_and_reclaimed_after_its_lease(
    store: SQLiteStore,
) -> None:
    await store.route_alert_events(route())
    await fail_job(store)
    await store.route_alert_events(route())
    first, second = await asyncio.gather(claim(store, owner="a"), claim(store, owner="b"))
    assert sorted([len(first), len(second)]) == [0, 1]
    [held] = first or second
    # The owner died mid-send: after the lease the delivery is claimed again.
    [again] = await claim(store, owner="c", now=utcnow() + timedelta(seconds=31))
    assert again.delivery_id == held.delivery_id and again.attempts == 2
    stale_owner = "a" if first else "b"
    assert not await store.finish_alert_delivery(
        held.delivery_id, owner=stale_owner, attempt=1, status=DeliveryStatus.SENT
    )
    assert await store.finish_alert_delivery(
        held.delivery_id, owner="c", attempt=2, status=DeliveryStatus.SENT, response_status=204
    )
    assert not await store.finish_alert_delivery(
        held.delivery_id, owner="c", attempt=2, status=DeliveryStatus.SENT
    )
    assert await store.alert_delivery_counts("ops") == {"pending": 0, "sent": 1, "failed": 0}
    [recent] = await store.recent_alert_deliveries("ops")
    assert (recent.status, recent.response_status) == (DeliveryStatus.SENT, 204)
    assert recent.finished_at is not None


async def test_a_failed_attempt_waits_for_its_retry_then_can_be_given_up(
    store: SQLiteStore,
) -> None:
    await store.route_alert_events(route())
    await fail_job(store)
    await fail_job(store)
    await store.route_alert_events(route())
    one, two = await claim(store)
    retry_at = utcnow() + timedelta(seconds=60)
    assert await store.finish_alert_delivery(
        one.delivery_id,
        owner="a",
        attempt=1,
        status=DeliveryStatus.PENDING,
        response_status=503,
        error="HTTP 503",
        retry_at=format_ts(retry_at),
    )
    assert await store.finish_alert_delivery(
        two.delivery_id, owner="a", attempt=1, status=DeliveryStatus.FAILED, error="refused"
    )
    assert await claim(store) == []
    [retried] = await claim(store, now=retry_at)
    assert retried.delivery_id == one.delivery_id and retried.last_error == "HTTP 503"
    assert await store.alert_delivery_counts("ops") == {"pending": 1, "sent": 0, "failed": 1}
    failures = await store.recent_alert_deliveries("ops", failures_only=True)
    assert [(f.delivery_id, f.last_error) for f in failures] == [
        (two.delivery_id, "refused"),
        (one.delivery_id, "HTTP 503"),
    ]


async def test_long_running_jobs_are_recorded_once_per_threshold(store: SQLiteStore) -> None:
    slow = route(statuses=(), running_seconds=60)
    await store.route_alert_events(slow)
    await store.route_alert_events(route())
    job_id = (await store.enqueue(NewJob("echo", "poll", {}))).job_id
    await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=600)
    assert await store.record_long_running(running_seconds=60) == 0  # just started
    later = utcnow() + timedelta(seconds=61)
    assert await store.record_long_running(running_seconds=60, now=later) == 1
    assert await store.record_long_running(running_seconds=60, now=later) == 0
    assert await store.record_long_running(running_seconds=30, now=later) == 1
    assert await store.route_alert_events(slow) == 2
    [delivery] = await claim(store)
    event = delivery.first_event
    assert event is not None and event.kind is AlertEventKind.RUNNING_LONG
    assert (event.job_id, event.status, event.running_seconds) == (job_id, "running", 60)
    await store.route_alert_events(route())
    assert await claim(store) == []  # a status alert ignores running_long events


async def test_pruning_drops_finished_deliveries_and_old_events_but_not_pending_ones(
    store: SQLiteStore,
) -> None:
    await store.route_alert_events(route())
    await fail_job(store)
    await fail_job(store)
    await store.route_alert_events(route())
    sent, pending = await claim(store)
    await store.finish_alert_delivery(
        sent.delivery_id, owner="a", attempt=1, status=DeliveryStatus.SENT
    )
    await store.prune_finished(before=format_ts(utcnow() + timedelta(days=1)))
    [kept] = await store.recent_alert_deliveries("ops")
    assert kept.delivery_id == pending.delivery_id
    assert kept.first_event is not None  # its event stays while it is pending

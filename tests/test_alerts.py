"""Failure alerts end to end against a real local HTTP receiver (tests/webhook_receiver.py):
the store's outbox, the sender's routing, leases, retries with backoff and the rate limit,
GET /alerts, and (slow) a real `worker` process killed and restarted between attempts."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service.alerts.config import AlertConfig
from queue_service.alerts.delivery import AlertSender, start_alerts
from queue_service.api import ServiceState, create_app
from queue_service.config import parse_config
from queue_service.statuses import AttemptStatus, Status
from queue_service.store import DeliveryStatus, NewJob, Store
from queue_service.store.types import AttemptEnd
from queue_service.timeutil import format_ts, utcnow
from tests.conftest import bearer
from tests.processes import Processes, wait_until, with_store, worker, write_config
from tests.webhook_receiver import Receiver

SECRET = "tok-not-for-logs"


def alert_config(receiver: Receiver, **overrides: Any) -> AlertConfig:
    """One alert to `receiver`, with a bearer token from the environment and a short
    backoff (so a retry comes within a second)."""
    entry = {
        "name": "ops",
        "url": receiver.url,
        "headers": {"Authorization": "Bearer ${ALERT_TOKEN}"},
        "timeout_seconds": 2,
        "backoff_initial_seconds": 0.1,
        "backoff_max_seconds": 0.3,
        **overrides,
    }
    config = parse_config({"alerts": [entry]}, environ={"ALERT_TOKEN": SECRET})
    return config.alerts[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


async def fail_job(store: Store, plugin: str = "echo", command: str = "poll") -> str:
    """A job that ran once and failed for good (as the worker records it)."""
    job_id = (await store.enqueue(NewJob(plugin, command, {}, max_attempts=1))).job_id
    [job] = await store.claim_jobs(plugin, limit=1, owner="w", lease_seconds=60)
    end = AttemptEnd(status=Status.FAILED, attempt_status=AttemptStatus.FAILED, error="boom")
    await store.finish_attempt(job.job_id, plugin=plugin, attempt=1, owner="w", end=end)
    return job_id


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = 20) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def received(receiver: Receiver, count: int) -> list[Any]:
    return await asyncio.to_thread(receiver.wait_for, count)


class Running:
    """Alert senders running as tasks until the test ends."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, sender: AlertSender) -> AlertSender:
        self.tasks.append(asyncio.create_task(sender.run(self.stop)))
        return sender

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        await r.close()


def sender(store: Store, alert: AlertConfig, owner: str = "p1") -> AlertSender:
    return AlertSender(store, alert, owner=owner, poll_interval=0.05)


pytestmark = pytest.mark.anyio


async def test_a_failing_job_alerts_once_with_its_details_and_an_idempotency_key(
    store: Store, receiver: Receiver, running: Running
) -> None:
    alert = alert_config(receiver, plugins=["echo"])
    await store.route_alert_events(alert.route())  # configured before the failures
    job_id = await fail_job(store, "echo", "poll")
    await fail_job(store, "other")  # filtered out
    running.start(sender(store, alert))
    [request] = await received(receiver, 1)
    assert request.path == "/hooks/secret-path"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["content-type"] == "application/json"
    body = request.body
    assert body["alert"] == "ops" and body["kind"] == "status"
    assert body["delivery_id"] == request.key
    assert (body["events"], body["folded"], body["last_job"]) == (1, 0, None)
    job = body["job"]
    assert (job["job_id"], job["plugin"], job["command"], job["status"]) == (
        job_id,
        "echo",
        "poll",
        "failed",
    )
    assert (job["source"], job["attempt"], job["last_error"]) == ("local", 1, "boom")
    assert body["text"].startswith(f"[queue-service] echo poll failed (job {job_id}, attempt 1)")
    await until(lambda: _counts_are(store, sent=1), "the delivery to be marked sent")
    # Later rounds of the sender send it no more; the next failure is the next message.
    await fail_job(store, "echo")
    await received(receiver, 2)
    await until(lambda: _counts_are(store, sent=2), "the second delivery to be marked sent")
    assert len(receiver.requests()) == 2
    assert len({r.key for r in receiver.requests()}) == 2


async def _counts_are(store: Store, **expected: int) -> bool:
    counts = await store.alert_delivery_counts("ops")
    return all(counts[k] == v for k, v in expected.items())


async def test_a_receiver_that_is_down_gets_the_alert_when_it_comes_back(
    store: Store, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()  # not started: its port refuses connections
    try:
        alert = alert_config(receiver)
        await store.route_alert_events(alert.route())
        await fail_job(store)
        running.start(sender(store, alert))

        async def retried() -> bool:
            # An attempt is counted when it is claimed, so `attempts >= 2` alone can match
            # while the second attempt is still in flight: wait for its failure to be logged.
            deliveries = await store.recent_alert_deliveries("ops")
            pending = any(d.status is DeliveryStatus.PENDING for d in deliveries)
            return pending and "attempt 2/12 failed" in caplog.text

        with caplog.at_level(logging.WARNING, logger="queue_service.alerts"):
            await until(retried, "two failed attempts")
            receiver.start()
        [request] = await received(receiver, 1)
        await until(lambda: _counts_are(store, sent=1), "the delivery to be marked sent")
        [delivery] = await store.recent_alert_deliveries("ops")
        assert delivery.delivery_id == request.key and delivery.attempts >= 3
        assert delivery.last_error is not None and "no answer" in delivery.last_error
        assert len(receiver.requests()) == 1
        # The logs say what failed, never the URL's path nor the token.
        logged = caplog.text
        assert "attempt 1/12 failed" in logged
        assert "secret-path" not in logged and SECRET not in logged
    finally:
        receiver.stop()


async def test_a_rate_limit_folds_failures_into_one_message_with_the_count(
    store: Store, receiver: Receiver, running: Running
) -> None:
    alert = alert_config(receiver, format="slack", rate_limit="1h")
    await store.route_alert_events(alert.route())
    first = await fail_job(store, "echo")
    for _ in range(3):
        await fail_job(store, "echo")
    last = await fail_job(store, "echo")
    other = await fail_job(store, "other")
    running.start(sender(store, alert))
    requests = await received(receiver, 2)
    texts = sorted(r.body["text"] for r in requests)
    assert all(set(r.body) == {"text"} for r in requests)  # Slack's body
    assert texts[0].startswith(f"[queue-service] echo poll failed (job {first}, attempt 1)")
    assert "…and 4 more alerts for plugin echo folded in by the rate limit" in texts[0]
    assert f"the latest: echo poll failed (job {last}" in texts[0]
    assert texts[1] == f"[queue-service] other poll failed (job {other}, attempt 1): boom"
    # Within the hour, another failure of echo waits for the window's end.
    await fail_job(store, "echo")
    await until(lambda: _counts_are(store, sent=2, pending=1), "a held delivery")
    [held] = [d for d in await store.recent_alert_deliveries("ops") if d.status == "pending"]
    assert held.attempts == 0 and held.next_attempt_at > format_ts(utcnow())
    assert len(receiver.requests()) == 2


async def test_a_job_running_longer_than_the_threshold_alerts_once(
    store: Store, receiver: Receiver, running: Running
) -> None:
    alert = alert_config(receiver, statuses=[], running_longer_than="60s")
    await store.route_alert_events(alert.route())
    started = utcnow() - timedelta(seconds=61)
    job = NewJob("echo", "handle", {}, run_after=format_ts(started))
    job_id = (await store.enqueue(job)).job_id
    await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=600, now=started)
    await fail_job(store, "other")  # a failure: not what this alert is for
    running.start(sender(store, alert))
    [request] = await received(receiver, 1)
    body = request.body
    assert (body["kind"], body["running_seconds"]) == ("running_long", 60)
    assert (body["job"]["job_id"], body["job"]["status"]) == (job_id, "running")
    assert "echo handle has been running for more than 1m" in body["text"]
    await until(lambda: _counts_are(store, sent=1), "the delivery to be marked sent")
    # Later scans find the same job and attempt already recorded.
    assert await store.record_long_running(running_seconds=60) == 0
    assert len(receiver.requests()) == 1


async def test_a_delivery_whose_sender_died_mid_send_is_sent_again_once(
    store: Store, receiver: Receiver, running: Running
) -> None:
    alert = alert_config(receiver)
    await store.route_alert_events(alert.route())
    await fail_job(store)
    await store.route_alert_events(alert.route())
    # A process claimed it and died before it could record the outcome (its request may
    # or may not have arrived): the lease holds it back, then another sender sends it.
    [claimed] = await store.claim_alert_deliveries(
        "ops", owner="dead-process", lease_seconds=0.3, limit=10
    )
    running.start(sender(store, alert, owner="restarted"))
    [request] = await received(receiver, 1)
    assert request.key == claimed.delivery_id
    await until(lambda: _counts_are(store, sent=1), "the delivery to be marked sent")
    [delivery] = await store.recent_alert_deliveries("ops")
    assert delivery.attempts == 2
    assert not await store.finish_alert_delivery(
        claimed.delivery_id, owner="dead-process", attempt=1, status=DeliveryStatus.SENT
    )
    assert len(receiver.requests()) == 1


async def test_one_hanging_receiver_does_not_delay_another_alert(
    store: Store, receiver: Receiver
) -> None:
    hanging = Receiver().start()
    hanging.release.clear()
    stop = asyncio.Event()
    alerts = [
        alert_config(hanging, name="hangs", timeout_seconds=30),
        alert_config(receiver, name="works"),
    ]
    for alert in alerts:
        await store.route_alert_events(alert.route())
    await fail_job(store)
    await fail_job(store)
    tasks = start_alerts(store, alerts, stop, poll_interval=0.05)
    try:
        await received(hanging, 1)  # its first request is held open
        requests = await received(receiver, 2)
        assert len(hanging.requests()) == 1  # still held: it did not block "works"
        assert len({r.key for r in requests}) == 2
    finally:
        hanging.release.set()
        stop.set()
        await asyncio.gather(*tasks)
        hanging.stop()


async def test_two_senders_on_one_store_send_each_delivery_once(
    store: Store, receiver: Receiver, running: Running
) -> None:
    alert = alert_config(receiver)
    await store.route_alert_events(alert.route())
    for _ in range(12):
        await fail_job(store)
    running.start(sender(store, alert, owner="a"))
    running.start(sender(store, alert, owner="b"))
    await received(receiver, 12)
    await until(lambda: _counts_are(store, sent=12), "every delivery to be marked sent")
    keys = Counter(r.key for r in receiver.requests())
    assert len(keys) == 12 and set(keys.values()) == {1}


async def test_get_alerts_shows_settings_without_secrets_and_a_given_up_delivery(
    store: Store, receiver: Receiver, running: Running
) -> None:
    receiver.status = 500
    alert = alert_config(receiver, max_attempts=2, plugins=["echo"], rate_limit="5m")
    state = ServiceState.for_store(
        store, config=parse_config({}).model_copy(update={"alerts": [alert]})
    )
    await store.route_alert_events(alert.route())
    job_id = await fail_job(store)
    running.start(sender(store, alert))
    await until(lambda: _counts_are(store, failed=1), "the delivery to be given up")
    assert len(receiver.requests()) == 2
    secret, _ = await state.tokens.create("reader", ["jobs:ro"], None)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/alerts", headers=bearer(secret))
    assert response.status_code == 200, response.text
    assert "secret-path" not in response.text and SECRET not in response.text
    [view] = response.json()["alerts"]
    assert view["target"] == f"http://127.0.0.1:{receiver.port}"
    assert view["header_names"] == ["Authorization"]
    assert (view["plugins"], view["rate_limit"], view["max_attempts"]) == (["echo"], "5m", 2)
    assert view["counts"] == {"pending": 0, "sent": 0, "failed": 1}
    [failure] = view["failures"]
    assert failure == view["recent"][0]
    assert (failure["status"], failure["job_id"], failure["attempts"]) == ("failed", job_id, 2)
    assert failure["response_status"] == 500
    assert failure["last_error"] == f"HTTP 500 from http://127.0.0.1:{receiver.port}"


# -- a real worker process -------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_between_attempts_sends_each_alert_once_after_its_restart(
    tmp_path: Path, processes: Processes, db_url: str
) -> None:
    receiver = Receiver().start()
    db = db_url
    config = write_config(
        tmp_path,
        f"""
[[alerts]]
name = "ops"
url = "{receiver.url}"
plugins = ["noretry"]
timeout_seconds = 2
backoff_initial_seconds = 0.5
backoff_max_seconds = 1
""",
    )
    try:
        first = worker(processes, "worker-1", db, config)
        wait_until(lambda: "queue-service worker on" in processes.log_of(first), "start", 20)

        def fail(n: int) -> str:
            job = NewJob("noretry", "poll", {"n": n}, max_attempts=1)
            return with_store(db, lambda s: s.enqueue(job)).job_id

        one = fail(1)
        [request] = receiver.wait_for(1)
        assert request.body["job"]["job_id"] == one

        receiver.stop()  # down
        two = fail(2)

        def attempted() -> bool:
            deliveries = with_store(db, lambda s: s.recent_alert_deliveries("ops"))
            return any(
                d.first_event is not None
                and d.first_event.job_id == two
                and d.attempts >= 1
                and d.last_error is not None
                for d in deliveries
            )

        wait_until(attempted, "a failed attempt to send job two's alert", 20, processes)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        receiver.start()  # back, on the same port
        second = worker(processes, "worker-2", db, config)
        three = fail(3)
        requests = receiver.wait_for(3)
        # Job three's alert came after job two's (older deliveries are due first), and
        # nothing sent before the kill was sent again.
        jobs = [r.body["job"]["job_id"] for r in requests]
        assert jobs == [one, two, three], processes.tails()
        keys = Counter(r.key for r in receiver.requests())
        assert set(keys.values()) == {1}
        wait_until(
            lambda: with_store(db, lambda s: s.alert_delivery_counts("ops"))["sent"] == 3,
            "three sent deliveries",
            20,
            processes,
        )
        assert second.poll() is None
    finally:
        receiver.stop()


async def test_deliveries_claimed_when_the_sender_stops_are_given_back_unsent(
    store: Store, receiver: Receiver
) -> None:
    alert = alert_config(receiver)
    await store.route_alert_events(alert.route())
    await fail_job(store)
    await fail_job(store)
    await store.route_alert_events(alert.route())
    stopped = asyncio.Event()
    stopped.set()
    assert await sender(store, alert, owner="stopping").send_due(stopped) == 2
    assert receiver.requests() == []
    # No lease left to wait for: another process claims them at once.
    again = await store.claim_alert_deliveries("ops", owner="next", lease_seconds=30, limit=10)
    assert [d.attempts for d in again] == [2, 2]

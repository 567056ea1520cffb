"""GET /metrics: its scope, its format (read back with prometheus_client's own parsers), and
values that match what each test did to the store and the app."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from queue_service.api import ServiceState, create_app
from queue_service.api.app import MAX_BODY_BYTES
from queue_service.api.metrics import UNMATCHED_ROUTE, ServiceMetrics
from queue_service.auth import AUTH_FAILURE_REASONS
from queue_service.config import parse_config
from queue_service.plugins import Registry
from queue_service.statuses import STATUSES, Source, Status
from queue_service.store import ExternalJob, NewJob, SQLiteStore, SyncState
from queue_service.timeutil import format_ts, parse_rfc3339, utcnow
from queue_service.worker import Worker
from tests.conftest import TokenFactory, assert_error, bearer
from tests.test_worker import make_config, registry_for

pytestmark = pytest.mark.anyio

Labels = frozenset[tuple[str, str]]


def parse(text: str) -> dict[Labels, float]:
    """Every sample of the exposition, keyed by its name and labels (as one frozenset)."""
    found: dict[Labels, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _key(sample)
            assert key not in found, f"sample twice: {sample}"
            found[key] = sample.value
    return found


def _key(sample: Sample) -> Labels:
    return frozenset({("__name__", sample.name), *sample.labels.items()})


def series(samples: dict[Labels, float], name: str) -> dict[Labels, float]:
    """The samples called `name`, keyed by their labels only."""
    return {
        frozenset(kv for kv in key if kv[0] != "__name__"): value
        for key, value in samples.items()
        if ("__name__", name) in key
    }


def labels(**values: str) -> Labels:
    return frozenset(values.items())


async def scrape(client: httpx.AsyncClient, token: str) -> dict[Labels, float]:
    response = await client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.text)


async def test_metrics_needs_a_token_with_the_metrics_scope(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    response = await client.get("/metrics")
    assert_error(response, 401, "unauthorized")
    response = await client.get("/metrics", headers=bearer(await make_token("jobs:ro")))
    assert_error(response, 403, "insufficient_scope")
    assert 'scope="metrics:ro"' in response.headers["www-authenticate"]
    for scope in ("metrics:ro", "*"):
        assert await scrape(client, await make_token(scope))


async def test_job_counts_queue_depth_and_oldest_queued_match_the_store(
    client: httpx.AsyncClient, store: SQLiteStore, make_token: TokenFactory
) -> None:
    later = format_ts(utcnow() + timedelta(hours=1))
    made: dict[str, tuple[str, str, str, str]] = {}  # job_id -> plugin, command, source, status

    async def enqueue(plugin: str, command: str, **options: str) -> str:
        job_id = (await store.enqueue(NewJob(plugin, command, {}, **options))).job_id  # type: ignore[arg-type]
        made[job_id] = (plugin, command, Source.LOCAL.value, Status.QUEUED)
        return job_id

    for _ in range(3):
        await enqueue("echo", "poll")
    handled = [await enqueue("echo", "handle") for _ in range(2)]
    await enqueue("later", "run", run_after=later)
    [claimed] = await store.claim_jobs("echo", limit=1, owner="w", lease_seconds=60)
    made[claimed.job_id] = (*made[claimed.job_id][:3], Status.RUNNING)
    await store.set_status(handled[0], Status.RUNNING)
    await store.set_status(handled[0], Status.SUCCEEDED)
    made[handled[0]] = (*made[handled[0]][:3], Status.SUCCEEDED)
    await store.cancel_job(handled[1])
    made[handled[1]] = (*made[handled[1]][:3], Status.CANCELED)
    await store.upsert_external_jobs(
        [
            ExternalJob(
                job_id=f"databricks:prod:{run}",
                plugin="databricks",
                command="nightly etl",
                status=status,
                status_if_new=status,
                external_id=str(run),
                external_url=None,
                created_at=format_ts(utcnow()),
                started_at=None,
                completed_at=None,
                attempt=1,
                last_error=None,
                result={},
            )
            for run, status in ((1, Status.FAILED), (2, Status.RUNNING))
        ]
    )
    made["databricks:prod:1"] = ("databricks", "nightly etl", "databricks", Status.FAILED)
    made["databricks:prod:2"] = ("databricks", "nightly etl", "databricks", Status.RUNNING)

    samples = await scrape(client, await make_token("metrics:ro"))
    scraped_at = utcnow()

    created = Counter(made.values())
    groups = {(plugin, command, source) for plugin, command, source, _ in made.values()}
    expected = {
        labels(plugin=p, command=c, source=s, status=status): float(created[(p, c, s, status)])
        for p, c, s in groups
        for status in STATUSES
    }
    assert series(samples, "queue_service_jobs") == expected
    active = sum(n for (*_, status), n in created.items() if status in ("queued", "running"))
    assert series(samples, "queue_service_queue_depth") == {frozenset(): active}

    oldest = series(samples, "queue_service_oldest_queued_age_seconds")
    # echo has runnable queued jobs; `later` only one that waits; the others none queued.
    assert set(oldest) == {labels(plugin="echo"), labels(plugin="later")}
    assert oldest[labels(plugin="later")] == 0
    queued_echo = [
        job
        for job_id, (plugin, _, _, status) in made.items()
        if plugin == "echo" and status == Status.QUEUED
        if (job := await store.get_job(job_id)) is not None
    ]
    earliest = min(parse_rfc3339(job.run_after) for job in queued_echo if job.run_after)
    assert 0 <= oldest[labels(plugin="echo")] <= (scraped_at - earliest).total_seconds()


async def test_http_durations_by_route_template_and_auth_failures_by_reason(
    client: httpx.AsyncClient, store: SQLiteStore, state: ServiceState, make_token: TokenFactory
) -> None:
    job_id = (await store.enqueue(NewJob("echo", "poll", {}))).job_id
    reader = bearer(await make_token("jobs:ro"))
    revoked, _ = await state.tokens.create("revoked", ["jobs:ro"])
    assert await store.revoke_token("revoked")
    # (method, url, headers, route template it must be labelled with, auth failure reason)
    requests: list[tuple[str, str, dict[str, str], str, str | None]] = [
        ("GET", "/jobs", reader, "/jobs", None),
        ("GET", "/jobs?status=queued", reader, "/jobs", None),
        ("GET", f"/job/{job_id}", reader, "/job/{job_id}", None),
        ("GET", "/job/no-such-job", reader, "/job/{job_id}", None),
        ("GET", f"/job/{job_id}/nothing/here", reader, UNMATCHED_ROUTE, None),
        ("PATCH", "/jobs", reader, "/jobs", None),
        ("FOO", "/jobs", reader, "/jobs", None),
        ("GET", "/healthz", {}, "/healthz", None),
        ("GET", "/jobs", {}, "/jobs", "missing"),
        ("GET", "/jobs", {"Authorization": "Basic dXNlcjpwYXNz"}, "/jobs", "malformed"),
        ("GET", "/jobs", {"Authorization": "Bearer qs_" + "A" * 43}, "/jobs", "unknown"),
        ("GET", "/jobs", bearer(revoked), "/jobs", "revoked"),
        ("GET", "/sync", bearer(await make_token("jobs:status:ro")), "/sync", "insufficient_scope"),
        ("GET", "/metrics", reader, "/metrics", "insufficient_scope"),
    ]
    seen: Counter[tuple[str, str, str]] = Counter()
    for method, url, headers, template, _ in requests:
        response = await client.request(method, url, headers=headers)
        shown = method if method in ("GET", "PATCH") else "other"
        seen[(shown, template, str(response.status_code))] += 1
    # Refused by the body limit before any route runs: labelled by matching the routes.
    oversized = await client.post(
        "/plugin/echo/poll", content=b" " * (MAX_BODY_BYTES + 1), headers=reader
    )
    assert_error(oversized, 413, "payload_too_large")
    seen[("POST", "/plugin/{plugin}/{command}", "413")] += 1

    samples = await scrape(client, await make_token("metrics:ro"))

    counts = series(samples, "queue_service_http_request_duration_seconds_count")
    assert counts == {
        labels(method=m, route=r, status=s): float(n) for (m, r, s), n in seen.items()
    }
    infinite = series(samples, "queue_service_http_request_duration_seconds_bucket")
    for (method, route, status), n in seen.items():
        key = labels(method=method, route=route, status=status, le="+Inf")
        assert infinite[key] == n
    assert not any(job_id in value for key in samples for _, value in key), "a raw path leaked"

    reasons = Counter(reason for *_, reason in requests if reason is not None)
    assert series(samples, "queue_service_auth_failures_total") == {
        labels(reason=reason): float(reasons[reason]) for reason in AUTH_FAILURE_REASONS
    }
    assert dict(state.tokens.failures) == reasons


async def test_each_app_has_its_own_registry(state: ServiceState, make_token: TokenFactory) -> None:
    token = await make_token("metrics:ro")
    apps = [create_app(state), create_app(state)]
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        for app in apps
    ]
    try:
        await clients[0].get("/healthz")
        first, second = [await scrape(c, token) for c in clients]
    finally:
        for c in clients:
            await c.aclose()
    name = "queue_service_http_request_duration_seconds_count"
    assert labels(method="GET", route="/healthz", status="200") in series(first, name)
    assert labels(method="GET", route="/healthz", status="200") not in series(second, name)
    assert not [m for m in REGISTRY.collect() if m.name.startswith("queue_service")]


async def test_the_exposition_says_what_prometheus_clients_own_encoder_says(
    store: SQLiteStore, make_token: TokenFactory, state: ServiceState
) -> None:
    # Label values from the store may hold anything the text format must escape.
    odd = [("echo", "poll"), ('q"uote', "back\\slash"), ("new\nline", "ünï")]
    for plugin, command in odd:
        await store.enqueue(NewJob(plugin, command, {}))
    state.worker = Worker(store, Registry(()), state.config)
    for plugin, command in odd:
        state.worker.timings.claim_to_start.observe((plugin,), 0.01)
        state.worker.timings.duration.observe((plugin, command, "failed"), 2.5)
    app = create_app(state)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        await client.get("/nowhere")
        await scrape(client, await make_token("metrics:ro"))
    metrics: ServiceMetrics = app.state.metrics
    ours = parse((await metrics.render()).decode())  # reads the store: then the reference
    reference = parse(generate_latest(metrics.registry).decode())
    # The same samples, less the optional `_created` ones.
    assert ours == {k: v for k, v in reference.items() if not _name(k).endswith("_created")}
    jobs = series(ours, "queue_service_jobs")
    assert (
        jobs[labels(plugin='q"uote', command="back\\slash", source="local", status="queued")] == 1
    )
    assert jobs[labels(plugin="new\nline", command="ünï", source="local", status="queued")] == 1


def _name(key: Labels) -> str:
    return next(value for label, value in key if label == "__name__")


async def test_databricks_sync_lag_and_errors_per_workspace(
    store: SQLiteStore, make_token: TokenFactory
) -> None:
    config = parse_config(
        {"databricks": {"workspaces": [{"name": "prod"}, {"name": "staging"}, {"name": "new"}]}}
    )
    state = ServiceState.for_store(store, config=config)
    synced_at = utcnow() - timedelta(minutes=2)
    failed_at = utcnow() - timedelta(minutes=1)
    await store.save_sync_state(
        SyncState(workspace="prod", last_success_at=format_ts(synced_at), runs_ingested=5)
    )
    await store.save_sync_state(
        SyncState(
            workspace="staging",
            last_error="HTTP 503 from the workspace",
            last_error_at=format_ts(failed_at),
            extra={"consecutive_failures": 3, "fault_kind": "transient"},
        )
    )
    await store.save_sync_state(SyncState(workspace="gone", runs_ingested=9))  # not configured
    secret, _ = await state.tokens.create("prometheus", ["metrics:ro"])
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = time.time()
        samples = await scrape(client, secret)
        after = time.time()

    lag = series(samples, "queue_service_databricks_sync_lag_seconds")
    assert set(lag) == {labels(workspace="prod")}
    since = synced_at.timestamp()
    assert before - since - 1e-3 <= lag[labels(workspace="prod")] <= after - since + 1e-3
    assert series(samples, "queue_service_databricks_sync_consecutive_failures") == {
        labels(workspace="prod"): 0,
        labels(workspace="staging"): 3,
        labels(workspace="new"): 0,
    }
    assert series(samples, "queue_service_databricks_sync_last_error_timestamp_seconds") == {
        labels(workspace="staging"): pytest.approx(failed_at.timestamp(), abs=1e-6)
    }
    assert series(samples, "queue_service_databricks_sync_runs_ingested_total") == {
        labels(workspace="prod"): 5,
        labels(workspace="staging"): 0,
        labels(workspace="new"): 0,
    }
    healthy = series(samples, "queue_service_databricks_sync_healthy")
    assert set(healthy.values()) == {1}


@pytest.fixture
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plugins start with `#!/usr/bin/env python3`: find this interpreter first.
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )


@pytest.fixture
async def running_worker(
    store: SQLiteStore, plugin_path: None
) -> AsyncIterator[tuple[ServiceState, Worker]]:
    config = make_config(plugins={"error": {"max_attempts": 1}})
    worker = Worker(store, registry_for(config), config, poll_interval=0.05, kill_grace=0.3)
    state = ServiceState.for_store(store, config=config)
    state.worker = worker
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield state, worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_worker_histograms_count_the_attempts_the_worker_ran(
    store: SQLiteStore, running_worker: tuple[ServiceState, Worker]
) -> None:
    state, worker = running_worker
    jobs = [("ok", "poll"), ("ok", "poll"), ("ok", "handle"), ("error", "poll")]
    ids = [(await store.enqueue(NewJob(p, c, {}, max_attempts=1))).job_id for p, c in jobs]
    worker.wake()
    deadline = time.monotonic() + 20
    while True:
        finished = [await store.get_job(i) for i in ids]
        if all(j is not None and j.completed_at is not None for j in finished):
            break
        assert time.monotonic() < deadline, finished
        await asyncio.sleep(0.02)
    outcomes = Counter((j.plugin, j.command, j.status.value) for j in finished if j is not None)
    assert outcomes[("error", "poll", "failed")] == 1  # the plugin the test chose to fail

    secret, _ = await state.tokens.create("prometheus", ["metrics:ro"])
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        samples = await scrape(client, secret)

    started = series(samples, "queue_service_job_claim_to_start_seconds_count")
    by_plugin = Counter(plugin for plugin, _ in jobs)
    assert started == {labels(plugin=p): float(n) for p, n in by_plugin.items()}
    ran = series(samples, "queue_service_job_duration_seconds_count")
    assert ran == {
        labels(plugin=p, command=c, outcome=outcome): float(n)
        for (p, c, outcome), n in outcomes.items()
    }
    for key, total in series(samples, "queue_service_job_duration_seconds_sum").items():
        assert total > 0, key

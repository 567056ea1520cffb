"""The plugin routes in-process over ASGI: GET /plugins, POST /plugin/{plugin}/{command},
POST /job/{id}/cancel and GET /schedules, with a registry loaded from tests/plugins (and
tests/plugins_invalid) and a config built here. Every error is checked with assert_error."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service.api import ServiceState, create_app
from queue_service.api import plugins as plugin_routes
from queue_service.config import ServiceConfig, parse_config
from queue_service.errors import ApiError
from queue_service.plugins import load
from queue_service.scheduler import Scheduler
from queue_service.statuses import Status
from queue_service.store import JobFilter, NewJob, SQLiteStore
from queue_service.timeutil import format_ts, utcnow
from queue_service.worker import Worker
from tests.conftest import TokenFactory, assert_error, bearer
from tests.processes import alive, read_pid

pytestmark = pytest.mark.anyio

PLUGINS = Path(__file__).parent / "plugins"
INVALID = Path(__file__).parent / "plugins_invalid"
VALID_NAMES = sorted(p.name for p in PLUGINS.iterdir() if (p / "manifest.yaml").is_file())


def service_config() -> ServiceConfig:
    return parse_config(
        {
            "service": {
                "plugin_dirs": [str(PLUGINS), str(INVALID)],
                "lease_seconds": 3,
                "shutdown_grace_seconds": 0.2,
            },
            "plugins": {
                "ok": {
                    "max_attempts": 2,
                    "schedules": [
                        {"id": "every-5m", "command": "poll", "every": "5m"},
                        {
                            "id": "weekday-9",
                            "command": "health",
                            "cron": "0 9 * * 1-5",
                            "timezone": "Europe/Berlin",
                            "if_running": "queue",
                            "catch_up": "run_once",
                            "payload": {"from": "cron"},
                        },
                    ],
                }
            },
        }
    )


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    config = service_config()
    registry = load(config.service.plugin_dirs, {n: s.config for n, s in config.plugins.items()})
    return ServiceState.for_store(store, config=config, registry=registry)


@pytest.fixture
async def admin(make_token: TokenFactory) -> dict[str, str]:
    return bearer(await make_token("*"))


async def post_json(
    client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(path, json=body, headers=headers)


# --- enqueue -------------------------------------------------------------------------------


async def test_enqueue_answers_202_with_the_new_job(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    response = await post_json(client, "/plugin/ok/poll", {"payload": {"a": [1, 2]}}, admin)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"job_id", "status", "plugin", "command", "deduplicated"}
    assert body["status"] == "queued" and body["deduplicated"] is False
    assert (body["plugin"], body["command"]) == ("ok", "poll")
    job = await store.get_job(body["job_id"])
    assert job is not None
    assert job.status is Status.QUEUED and job.payload == {"a": [1, 2]}
    assert job.max_attempts == 2, "the plugin's configured max_attempts"
    assert job.submitted_by == "t0", "the token's name"

    detail = await client.get(f"/job/{body['job_id']}", headers=admin)
    assert detail.status_code == 200 and detail.json()["status"] == "queued"


async def test_enqueue_with_an_empty_body_means_an_empty_payload(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    response = await client.post("/plugin/ok/poll", headers=admin)
    assert response.status_code == 202, response.text
    job = await store.get_job(response.json()["job_id"])
    assert job is not None and job.payload == {}


async def test_enqueue_options_max_attempts_and_run_after(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    later = (utcnow() + timedelta(days=30)).replace(minute=30, second=0, microsecond=0)
    offset = later.astimezone(timezone(timedelta(hours=1))).isoformat()  # +01:00
    body = {"payload": {}, "max_attempts": 7, "run_after": offset}
    response = await post_json(client, "/plugin/ok/poll", body, admin)
    assert response.status_code == 202, response.text
    job = await store.get_job(response.json()["job_id"])
    assert job is not None
    assert job.max_attempts == 7
    assert job.run_after == format_ts(later)


@pytest.mark.parametrize(("days", "accepted"), [(364, True), (366, False)])
async def test_run_after_is_bounded_by_max_run_after_days(
    client: httpx.AsyncClient, admin: dict[str, str], days: int, accepted: bool
) -> None:
    """A job (and its dedupe key) cannot be parked for years (default 365 days)."""
    run_after = format_ts(utcnow() + timedelta(days=days))
    body = {"payload": {}, "dedupe_key": "k", "run_after": run_after}
    response = await post_json(client, "/plugin/ok/poll", body, admin)
    if accepted:
        assert response.status_code == 202, response.text
    else:
        error = assert_error(response, 400, "invalid_body", param="run_after")
        assert "at most 365 days ahead" in error["error"]
        assert "service.max_run_after_days" in error["error"]


def test_a_limit_past_year_9999_bounds_nothing() -> None:
    """A huge max_run_after_days is no limit at all, not an overflow (a 500)."""
    from queue_service.api.plugins import check_run_after

    check_run_after("9999-12-31T23:59:59.999999Z", 4_000_000)
    with pytest.raises(ApiError):
        check_run_after("9999-12-31T23:59:59.999999Z", 365)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"payload": {}, "run_after": "tomorrow"}, "run_after"),
        ({"payload": {}, "max_attempts": 0}, "max_attempts"),
        ({"payload": 3}, "payload"),
        ({"payload": {}, "dedupe_key": ""}, "dedupe_key"),
        # No store may hold a NUL in a key (PostgreSQL text cannot): refused on every backend.
        ({"payload": {}, "dedupe_key": "a\u0000b"}, "dedupe_key"),
    ],
)
async def test_enqueue_rejects_bad_body_fields(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    store: SQLiteStore,
    body: dict[str, Any],
    param: str,
) -> None:
    response = await post_json(client, "/plugin/ok/poll", body, admin)
    assert_error(response, 400, "invalid_body", param=param)
    assert (await store.list_jobs(JobFilter())).total == 0


async def test_dedupe_returns_the_active_job_with_200(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    first = await post_json(client, "/plugin/ok/poll", {"payload": {}, "dedupe_key": "k"}, admin)
    assert first.status_code == 202
    again = await post_json(
        client, "/plugin/ok/poll", {"payload": {"other": 1}, "dedupe_key": "k"}, admin
    )
    assert again.status_code == 200, again.text
    assert again.json() == {
        "job_id": first.json()["job_id"],
        "status": "queued",
        "plugin": "ok",
        "command": "poll",
        "deduplicated": True,
    }
    assert (await store.list_jobs(JobFilter(plugin="ok"))).total == 1, "nothing new enqueued"
    # Another command is another key space.
    other = await post_json(client, "/plugin/ok/health", {"payload": {}, "dedupe_key": "k"}, admin)
    assert other.status_code == 202
    # Once the first job is finished, the key is free again.
    cancel = await client.post(f"/job/{first.json()['job_id']}/cancel", headers=admin)
    assert cancel.status_code == 200
    fresh = await post_json(client, "/plugin/ok/poll", {"payload": {}, "dedupe_key": "k"}, admin)
    assert fresh.status_code == 202 and fresh.json()["job_id"] != first.json()["job_id"]


async def test_dedupe_reports_a_running_job_as_running(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    first = await post_json(client, "/plugin/ok/poll", {"payload": {}, "dedupe_key": "r"}, admin)
    await store.claim_jobs("ok", limit=1, owner="elsewhere", lease_seconds=60)
    again = await post_json(client, "/plugin/ok/poll", {"payload": {}, "dedupe_key": "r"}, admin)
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["status"] == "running" and again.json()["deduplicated"] is True


@pytest.mark.parametrize(
    ("payload", "param", "fragments"),
    [
        ({"count": "x"}, "payload.count", ["at $.count", "'x' is not of type 'integer'"]),
        ({"count": 0}, "payload.count", ["at $.count", "0 is less than the minimum of 1"]),
        ({}, "payload", ["at $:", "'count' is a required property"]),
        (
            {"count": 1, "tags": ["a", 2]},
            "payload.tags[1]",
            ["at $.tags[1]", "2 is not of type 'string'"],
        ),
        ({"count": 1, "extra": True}, "payload", ["'extra' was unexpected"]),
    ],
)
async def test_a_payload_failing_the_input_schema_is_a_400_naming_the_path(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    store: SQLiteStore,
    payload: dict[str, Any],
    param: str,
    fragments: list[str],
) -> None:
    response = await post_json(client, "/plugin/strict/lookup", {"payload": payload}, admin)
    body = assert_error(response, 400, "validation_failed", param=param)
    assert "input_schema of strict.lookup" in body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body
    assert (await store.list_jobs(JobFilter())).total == 0


async def test_a_valid_payload_passes_the_input_schema(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = {"payload": {"count": 2, "tags": ["a", "b"]}}
    response = await post_json(client, "/plugin/strict/lookup", body, admin)
    assert response.status_code == 202, response.text


async def test_unknown_plugin_is_a_404_listing_the_valid_plugins(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await post_json(client, "/plugin/nope/poll", {"payload": {}}, admin)
    body = assert_error(response, 404, "not_found", param="plugin", allowed=VALID_NAMES)
    assert "nope" in body["error"]


async def test_unknown_command_is_a_404_listing_the_commands(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await post_json(client, "/plugin/strict/poll", {"payload": {}}, admin)
    assert_error(response, 404, "not_found", param="command", allowed=["lookup", "store"])


async def test_an_invalid_plugin_cannot_be_enqueued(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await post_json(client, "/plugin/needs_config/poll", {"payload": {}}, admin)
    body = assert_error(response, 409, "conflict", param="plugin")
    assert "api_key" in body["error"]


@pytest.mark.parametrize("raw", [b"{not json", b'{"payload": {}', b"\xff\xfe"])
async def test_a_body_that_is_not_json_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str], raw: bytes
) -> None:
    headers = {**admin, "Content-Type": "application/json"}
    response = await client.post("/plugin/ok/poll", content=raw, headers=headers)
    body = assert_error(response, 400, "invalid_body")
    assert "not valid JSON" in body["error"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"3"])
async def test_a_body_that_is_not_an_object_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str], raw: bytes
) -> None:
    headers = {**admin, "Content-Type": "application/json"}
    response = await client.post("/plugin/ok/poll", content=raw, headers=headers)
    assert_error(response, 400, "invalid_body")


async def test_an_unknown_body_key_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await post_json(client, "/plugin/ok/poll", {"payload": {}, "priority": 1}, admin)
    assert_error(response, 400, "invalid_body", param="priority")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_declared_json_is_a_415(
    client: httpx.AsyncClient, admin: dict[str, str], content_type: str
) -> None:
    headers = {**admin, "Content-Type": content_type}
    response = await client.post("/plugin/ok/poll", content=b'{"payload": {}}', headers=headers)
    body = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in body["allowed"]
    assert content_type in body["error"]


async def test_a_body_over_one_mebibyte_is_a_413(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    big = json.dumps({"payload": {"blob": "x" * (1024 * 1024)}}).encode()
    headers = {**admin, "Content-Type": "application/json"}
    response = await client.post("/plugin/ok/poll", content=big, headers=headers)
    assert_error(response, 413, "payload_too_large")
    assert (await store.list_jobs(JobFilter())).total == 0
    # Just under the limit is accepted.
    fits = json.dumps({"payload": {"blob": "x" * (1024 * 1024 - 100)}}).encode()
    response = await client.post("/plugin/ok/poll", content=fits, headers=headers)
    assert response.status_code == 202, response.text


# --- scopes --------------------------------------------------------------------------------


async def test_plugin_ro_may_enqueue_read_commands_only(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    ro = bearer(await make_token("plugin:ro"))
    read = await post_json(client, "/plugin/strict/lookup", {"payload": {"count": 1}}, ro)
    assert read.status_code == 202, read.text
    write = await post_json(client, "/plugin/strict/store", {"payload": {"count": 1}}, ro)
    body = assert_error(write, 403, "insufficient_scope")
    assert "plugin:rw" in body["error"]
    challenge = write.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="plugin:rw"' in challenge
    # The scope is checked before the body: a bad payload still gets the 403.
    bad = await post_json(client, "/plugin/strict/store", {"payload": {"count": "x"}}, ro)
    assert_error(bad, 403, "insufficient_scope")


@pytest.mark.parametrize("scopes", [("plugin:rw",), ("*",)])
async def test_plugin_rw_and_star_may_enqueue_write_commands(
    client: httpx.AsyncClient, make_token: TokenFactory, scopes: tuple[str, ...]
) -> None:
    headers = bearer(await make_token(*scopes))
    for command in ("store", "lookup"):
        response = await post_json(
            client, f"/plugin/strict/{command}", {"payload": {"count": 1}}, headers
        )
        assert response.status_code == 202, response.text


async def test_job_scopes_cannot_enqueue(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = bearer(await make_token("jobs:rw"))
    response = await post_json(client, "/plugin/ok/poll", {"payload": {}}, headers)
    assert_error(response, 403, "insufficient_scope")
    assert 'scope="plugin:ro"' in response.headers["www-authenticate"]


async def test_enqueue_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/plugin/ok/poll", json={"payload": {}})
    assert_error(response, 401, "unauthorized")


# --- GET /plugins ----------------------------------------------------------------------------


async def test_plugins_lists_valid_and_invalid_plugins(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = bearer(await make_token("jobs:status:ro"))  # any valid token will do
    response = await client.get("/plugins", headers=headers)
    assert response.status_code == 200, response.text
    plugins = response.json()["plugins"]
    by_name = {p["name"]: p for p in plugins}
    assert [p["name"] for p in plugins] == sorted(p["name"] for p in plugins)

    ok = by_name["ok"]
    assert ok["valid"] is True and ok["error"] is None
    assert (ok["version"], ok["concurrency_safe"]) == ("0.1.0", True)
    assert ok["description"] == "Test plugin: answers ok with the payload as the result."
    assert [c["name"] for c in ok["commands"]] == ["poll", "handle", "health"]
    assert ok["commands"][0] == {
        "name": "poll",
        "type": "read",
        "description": "Run once.",
        "input_schema": {"type": "object"},
    }
    assert by_name["strict"]["commands"][1]["type"] == "write"
    assert by_name["serial"]["concurrency_safe"] is False

    invalid_names = {p.name for p in INVALID.iterdir() if p.is_dir()}
    listed_invalid = {p["name"] for p in plugins if not p["valid"]}
    assert listed_invalid == invalid_names, "every broken plugin is listed, none hidden"
    for plugin in plugins:
        if not plugin["valid"]:
            assert isinstance(plugin["error"], str) and plugin["error"].strip(), plugin
    assert "api_key" in by_name["needs_config"]["error"]
    assert {p["name"] for p in plugins if p["valid"]} == set(VALID_NAMES)


async def test_plugins_needs_a_valid_token(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/plugins"), 401, "unauthorized")
    bad = await client.get("/plugins", headers=bearer("qs_" + "A" * 43))
    assert_error(bad, 401, "invalid_token")


# --- POST /job/{id}/cancel -------------------------------------------------------------------


async def test_cancel_a_queued_job(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    job_id = (await store.enqueue(NewJob("ok", "poll", {}))).job_id
    response = await client.post(f"/job/{job_id}/cancel", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == job_id and body["status"] == "canceled"
    assert body["completed_at"] is not None and body["attempts"] == []
    assert body["last_error"] == "canceled by request"
    # A finished job cannot be canceled again.
    again = await client.post(f"/job/{job_id}/cancel", headers=admin)
    body = assert_error(again, 409, "conflict")
    assert "already finished as canceled" in body["error"]


async def test_cancel_a_succeeded_job_is_a_409(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    job_id = (await store.enqueue(NewJob("ok", "poll", {}))).job_id
    await store.set_status(job_id, Status.RUNNING)
    await store.set_status(job_id, Status.SUCCEEDED, result="done")
    response = await client.post(f"/job/{job_id}/cancel", headers=admin)
    assert_error(response, 409, "conflict")
    job = await store.get_job(job_id)
    assert job is not None and job.status is Status.SUCCEEDED


async def test_cancel_an_unknown_job_is_a_404(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post("/job/00000000-0000-0000-0000-000000000000/cancel", headers=admin)
    assert_error(response, 404, "not_found", param="job_id")


@pytest.mark.parametrize("scope", ["jobs:ro", "plugin:rw"])
async def test_cancel_needs_jobs_rw(
    client: httpx.AsyncClient, make_token: TokenFactory, store: SQLiteStore, scope: str
) -> None:
    job_id = (await store.enqueue(NewJob("ok", "poll", {}))).job_id
    response = await client.post(f"/job/{job_id}/cancel", headers=bearer(await make_token(scope)))
    assert_error(response, 403, "insufficient_scope")
    assert 'scope="jobs:rw"' in response.headers["www-authenticate"]
    job = await store.get_job(job_id)
    assert job is not None and job.status is Status.QUEUED


async def test_cancel_a_job_running_elsewhere_answers_202_while_it_stops(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plugin_routes, "CANCEL_WAIT_SECONDS", 0.2)
    job_id = (await store.enqueue(NewJob("ok", "poll", {}))).job_id
    await store.claim_jobs("ok", limit=1, owner="another-process", lease_seconds=60)
    response = await client.post(f"/job/{job_id}/cancel", headers=admin)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    kept = await store.heartbeat([(job_id, 1)], owner="another-process", lease_seconds=60)
    assert kept == {job_id: True}, "the holder learns of the cancel from its heartbeat"


@pytest.fixture
async def running_worker(state: ServiceState) -> AsyncIterator[Worker]:
    worker = Worker(
        state.store,
        state.registry,
        state.config,
        kill_grace=0.3,
        poll_interval=0.05,
        rng=random.Random(1),
    )
    state.worker = worker
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        state.worker = None


async def test_cancel_a_job_running_in_this_process_stops_its_subprocess(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    running_worker: Worker,
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    body = {"payload": {"seconds": 60, "pid_file": str(pid_file)}}
    enqueued = await post_json(client, "/plugin/sleepy/poll", body, admin)
    job_id = enqueued.json()["job_id"]
    deadline = time.monotonic() + 10
    while (pid := read_pid(pid_file)) is None:
        assert time.monotonic() < deadline, "the sleepy plugin never started"
        await asyncio.sleep(0.02)
    try:
        response = await client.post(f"/job/{job_id}/cancel", headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "canceled"
        assert [a["status"] for a in body["attempts"]] == ["canceled"]
        assert not alive(pid), f"plugin process {pid} outlived the cancel"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- GET /schedules --------------------------------------------------------------------------


async def test_schedules_lists_each_schedule_with_its_state(
    client: httpx.AsyncClient, admin: dict[str, str], state: ServiceState
) -> None:
    response = await client.get("/schedules", headers=admin)
    assert response.status_code == 200, response.text
    schedules = response.json()["schedules"]
    assert schedules == [
        {
            "schedule_id": "every-5m",
            "plugin": "ok",
            "command": "poll",
            "every": "5m",
            "cron": None,
            "timezone": "UTC",
            "if_running": "skip",
            "catch_up": "skip",
            "next_run_at": None,
            "last_fired_at": None,
            "last_job_id": None,
            "last_job_status": None,
        },
        {
            "schedule_id": "weekday-9",
            "plugin": "ok",
            "command": "health",
            "every": None,
            "cron": "0 9 * * 1-5",
            "timezone": "Europe/Berlin",
            "if_running": "queue",
            "catch_up": "run_once",
            "next_run_at": None,
            "last_fired_at": None,
            "last_job_id": None,
            "last_job_status": None,
        },
    ]

    # Drive the scheduler with an injected clock: the first tick plans, the next one fires.
    scheduler = Scheduler.from_config(state.store, state.config)
    start = datetime(2026, 3, 2, 7, 58, tzinfo=UTC)  # a Monday, 08:58 in Berlin
    await scheduler.tick(start)
    planned = {
        s["schedule_id"]: s
        for s in (await client.get("/schedules", headers=admin)).json()["schedules"]
    }
    assert planned["every-5m"]["next_run_at"] == "2026-03-02T08:00:00.000000Z"
    assert planned["weekday-9"]["next_run_at"] == "2026-03-02T08:00:00.000000Z"
    assert planned["every-5m"]["last_job_id"] is None

    firings = await scheduler.tick(datetime(2026, 3, 2, 8, 0, 1, tzinfo=UTC))
    assert len(firings) == 2
    fired = {
        s["schedule_id"]: s
        for s in (await client.get("/schedules", headers=admin)).json()["schedules"]
    }
    for schedule_id, command in (("every-5m", "poll"), ("weekday-9", "health")):
        entry = fired[schedule_id]
        assert entry["last_job_id"] is not None and entry["last_fired_at"] is not None
        assert entry["last_job_status"] == "queued"
        job = await state.store.get_job(entry["last_job_id"])
        assert job is not None and job.command == command
    assert fired["every-5m"]["next_run_at"] == "2026-03-02T08:05:00.000000Z"
    assert fired["weekday-9"]["next_run_at"] == "2026-03-03T08:00:00.000000Z"
    # The status follows the job.
    await client.post(f"/job/{fired['every-5m']['last_job_id']}/cancel", headers=admin)
    after = {
        s["schedule_id"]: s
        for s in (await client.get("/schedules", headers=admin)).json()["schedules"]
    }
    assert after["every-5m"]["last_job_status"] == "canceled"


async def test_schedules_needs_jobs_ro(client: httpx.AsyncClient, make_token: TokenFactory) -> None:
    response = await client.get("/schedules", headers=bearer(await make_token("jobs:status:ro")))
    assert_error(response, 403, "insufficient_scope")
    assert 'scope="jobs:ro"' in response.headers["www-authenticate"]
    ok = await client.get("/schedules", headers=bearer(await make_token("jobs:ro")))
    assert ok.status_code == 200


async def test_plugins_and_healthz_report_plugins_that_are_gone(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    """Queued jobs of a plugin no folder holds wait, and are reported, never made dead."""
    health = (await client.get("/healthz")).json()
    assert health["warnings"] == []
    assert (await client.get("/plugins", headers=admin)).json()["missing"] == []
    gone = [(await store.enqueue(NewJob("gone", "poll"))).job_id for _ in range(2)]
    await store.enqueue(NewJob("ok", "poll"))  # installed: not missing
    running = (await store.enqueue(NewJob("vanished", "poll"))).job_id
    await store.set_status(running, Status.RUNNING)  # running, not waiting: not counted
    listed = (await client.get("/plugins", headers=admin)).json()
    assert listed["missing"] == [{"name": "gone", "queued_jobs": 2}]
    health = (await client.get("/healthz")).json()
    assert health["warnings"] == [
        "1 plugin(s) with 2 queued job(s) are not installed; "
        "see GET /plugins (missing) and queue-service cancel"
    ]
    assert "gone" not in str(health), "healthz needs no token: it names no plugin"
    for job_id in gone:
        job = await store.get_job(job_id)
        assert job is not None and job.status is Status.QUEUED


async def test_a_process_without_plugins_reports_none_missing(
    store: SQLiteStore, make_token: TokenFactory
) -> None:
    await store.enqueue(NewJob("gone", "poll"))
    state = ServiceState.for_store(store)  # an API-only process: no plugin folders
    secret, _ = await state.tokens.create("reader", ["jobs:ro"])
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        listed = await c.get("/plugins", headers=bearer(secret))
        health = await c.get("/healthz")
    assert listed.json() == {"plugins": [], "missing": []}
    assert health.json()["warnings"] == []

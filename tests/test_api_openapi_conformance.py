"""Every response the API produces validates against the OpenAPI document it serves.

Response bodies are built as dicts (queue_service/api/responses.py), not through the pydantic
models the document is generated from, so this is what keeps the two the same. Each operation
is called for its success responses and for every error status the document lists for it,
with a store holding local and Databricks jobs, attempts, results, events, logs, schedule
and sync state. Each response is checked against the schema of its operation and status
code (OpenAPI 3.1 schemas are JSON Schema 2020-12; $refs resolve against the document) and
for the headers the document promises.
"""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from queue_service.api import ServiceState, create_app
from queue_service.api import plugins as plugin_routes
from queue_service.api.app import MAX_BODY_BYTES
from queue_service.config import parse_config
from queue_service.databricks.status import EXTRA_FAILURES, EXTRA_FAULT_KIND, EXTRA_LAST_SYNC
from queue_service.plugins import load
from queue_service.scheduler import Scheduler
from queue_service.statuses import AttemptStatus, Status
from queue_service.store import (
    DeliveryStatus,
    ExternalJob,
    NewJob,
    SQLiteStore,
    StoreUnavailable,
    SyncState,
)
from queue_service.store.types import AttemptEnd
from tests.conftest import TokenFactory, bearer
from tests.test_api_plugins import INVALID, PLUGINS

pytestmark = pytest.mark.anyio

DOCUMENT_URI = "urn:queue-service:openapi"
#: (operation id, status) pairs no request can provoke, and why.
UNREACHABLE = {
    ("get_index", 500): "answers fixed links and the version; nothing in it can fail",
    ("get_index", 503): "touches no store; only the concurrency limit answers 503 there",
    ("get_openapi", 500): "serves a document built from the registry; nothing in it can fail",
    ("get_openapi", 503): "touches no store; only the concurrency limit answers 503 there",
}


def config_with_everything() -> Any:
    return parse_config(
        {
            "service": {"plugin_dirs": [str(PLUGINS), str(INVALID)]},
            "plugins": {
                "ok": {
                    "schedules": [
                        {"id": "every-5m", "command": "poll", "every": "5m"},
                        {"id": "weekday-9", "command": "health", "cron": "0 9 * * 1-5"},
                    ]
                }
            },
            "databricks": {
                "workspaces": [
                    {"name": "prod", "host": "https://adb-1.azuredatabricks.net"},
                    {"name": "staging", "host": "https://adb-2.azuredatabricks.net"},
                    {"name": "never-synced"},
                ]
            },
            "alerts": [
                {
                    "name": "ops",
                    "url": "https://hooks.example/services/secret",
                    "format": "slack",
                    "rate_limit": "5m",
                    "headers": {"Authorization": "Bearer secret"},
                },
                {
                    "name": "slow",
                    "url": "http://127.0.0.1:9/",
                    "statuses": [],
                    "running_longer_than": "30m",
                },
            ],
        }
    )


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    config = config_with_everything()
    registry = load(config.service.plugin_dirs, {n: s.config for n, s in config.plugins.items()})
    return ServiceState.for_store(store, config=config, registry=registry)


async def seed(state: ServiceState) -> dict[str, str]:
    """Jobs of every kind the views show; returns their ids by role."""
    store = state.store
    ids: dict[str, str] = {}
    for alert in state.config.alerts:
        await store.route_alert_events(alert.route())  # alerts start from here
    ids["finished"] = (
        await store.enqueue(NewJob("ok", "poll", {"deep": {"list": [1, 2.5, None, "ü"]}}))
    ).job_id
    for end in (
        AttemptEnd(
            status=Status.QUEUED,
            attempt_status=AttemptStatus.FAILED,
            error="boom",
            exit_code=1,
            stderr_tail="Traceback …",
            run_after="2000-01-01T00:00:00.000000Z",
        ),
        AttemptEnd(
            status=Status.SUCCEEDED,
            attempt_status=AttemptStatus.SUCCEEDED,
            result={"status": "ok", "nested": [{"a": 1}], "nan": float("nan")},
            events=[{"type": "note", "payload": {"x": 1}}],
            logs=[{"level": "info", "message": "done"}, "a plain line"],
            exit_code=0,
        ),
    ):
        [job] = await store.claim_jobs("ok", limit=1, owner="w", lease_seconds=60)
        assert job.job_id == ids["finished"]
        await store.finish_attempt(job.job_id, plugin="ok", attempt=job.attempt, owner="w", end=end)
    ids["running"] = (await store.enqueue(NewJob("ok", "handle", {}))).job_id
    await store.claim_jobs("ok", limit=1, owner="elsewhere", lease_seconds=60)
    ids["queued"] = (await store.enqueue(NewJob("ok", "poll", {"n": 1}))).job_id
    await store.upsert_external_jobs(
        [
            ExternalJob(
                job_id=f"databricks:adb-1:{run}",
                plugin="databricks",
                command="nightly etl",
                status=status,
                status_if_new=Status.QUEUED,
                external_id=str(run),
                external_url=f"https://adb-1.azuredatabricks.net/#job/7/run/{run}",
                created_at="2026-11-20T10:00:00.000000Z",
                started_at="2026-11-20T10:00:01.000000Z" if status else None,
                completed_at="2026-11-20T10:05:00.000000Z" if status is Status.FAILED else None,
                attempt=1,
                last_error="cluster died" if status is Status.FAILED else None,
                result={"workspace": "prod", "run_id": run, "state": {"life_cycle": "X"}},
            )
            for run, status in ((1, Status.FAILED), (2, Status.RUNNING), (3, None))
        ]
    )
    ids["databricks"] = "databricks:adb-1:1"
    await store.save_sync_state(
        SyncState(
            workspace="prod",
            host="https://adb-1.azuredatabricks.net",
            watermark_ms=1_700_000_000_000,
            last_success_at="2026-11-20T10:06:00.000000Z",
            runs_ingested=3,
            extra={EXTRA_LAST_SYNC: {"inserted": 3, "updated": 0, "unchanged": 0}},
        )
    )
    await store.save_sync_state(
        SyncState(
            workspace="staging",
            last_error="HTTP 503 from the workspace",
            last_error_at="2026-11-20T10:07:00.000000Z",
            extra={EXTRA_FAILURES: 2, EXTRA_FAULT_KIND: "transient"},
        )
    )
    # A job failed: one alert delivery, tried once and failed, then pending. (The failed
    # Databricks run above ended too long before it was recorded to alert.)
    flaky = (await store.enqueue(NewJob("flaky", "poll", {}, max_attempts=1))).job_id
    await store.claim_jobs("flaky", limit=1, owner="w", lease_seconds=60)
    await store.set_status(flaky, Status.FAILED, last_error="boom")
    await store.route_alert_events(state.config.alerts[0].route(), now=datetime.now(UTC))
    [delivery] = await store.claim_alert_deliveries("ops", owner="s", lease_seconds=5, limit=5)
    await store.finish_alert_delivery(
        delivery.delivery_id,
        owner="s",
        attempt=1,
        status=DeliveryStatus.PENDING,
        response_status=503,
        error="HTTP 503 from https://hooks.example",
        retry_at="2099-01-01T00:00:00.000000Z",
    )
    scheduler = Scheduler.from_config(store, state.config)
    await scheduler.tick(datetime(2026, 3, 2, 7, 58, tzinfo=UTC))
    await scheduler.tick(datetime(2026, 3, 2, 8, 0, 1, tzinfo=UTC))
    return ids


class FailingStore:
    """The store, except that every coroutine method raises `error`."""

    def __init__(self, store: SQLiteStore, error: Exception) -> None:
        self._store = store
        self._error = error

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self._error

        return fail


class Checker:
    """Validates responses against the document and records which (operation, status)
    pairs were seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            DOCUMENT_URI, DRAFT202012.create_resource(document)
        )
        self.operations = {
            spec["operationId"]: (path, method, spec)
            for path, methods in document["paths"].items()
            for method, spec in methods.items()
        }
        self.seen: set[tuple[str, int]] = set()

    def check(self, operation_id: str, response: httpx.Response) -> None:
        path, method, spec = self.operations[operation_id]
        status = response.status_code
        where = f"{method.upper()} {path} answered {status}: {response.text[:300]}"
        assert str(status) in spec["responses"], f"undocumented status; {where}"
        documented = spec["responses"][str(status)]
        for header in documented.get("headers", {}):
            assert header.lower() in response.headers, f"no {header} header; {where}"
        self.seen.add((operation_id, status))
        if "content" not in documented:
            return
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in documented["content"], where
        pointer = "/".join(
            part.replace("~", "~0").replace("/", "~1")
            for part in ("paths", path, method, "responses", str(status), "content", media_type)
        )
        validator = Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#/{pointer}/schema"}, registry=self.registry
        )
        error = best_match(validator.iter_errors(json.loads(response.content)))
        if error is not None:
            at = "/".join(map(str, error.absolute_path))
            pytest.fail(f"{where}\nat /{at}: {error.message[:300]}")


async def test_every_response_validates_against_the_openapi_document(
    state: ServiceState,
    store: SQLiteStore,
    make_token: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = await seed(state)
    monkeypatch.setattr(plugin_routes, "CANCEL_WAIT_SECONDS", 0.05)
    admin = bearer(await make_token("*"))
    status_only = bearer(await make_token("jobs:status:ro"))
    plugin_ro = bearer(await make_token("plugin:ro"))
    transport = httpx.ASGITransport(app=create_app(state), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        document = (await client.get("/openapi.json")).json()
        checker = Checker(document)

        async def call(
            operation_id: str,
            url: str,
            *,
            headers: dict[str, str] | None = None,
            method: str | None = None,
            **kwargs: Any,
        ) -> httpx.Response:
            _, documented_method, _ = checker.operations[operation_id]
            response = await client.request(
                method or documented_method.upper(), url, headers=headers, **kwargs
            )
            checker.check(operation_id, response)
            return response

        job = f"/job/{ids['finished']}"
        # Successes, with every view of every kind of job.
        await call("get_health", "/healthz")
        await call("get_openapi", "/openapi.json")
        for headers in (admin, status_only):
            for role in ("queued", "finished", "running", "databricks"):
                await call("get_job", f"/job/{ids[role]}", headers=headers)
        for query in ("", "?limit=2", "?source=databricks", "?status=failed,running&limit=1"):
            page = await call("list_jobs", f"/jobs{query}", headers=status_only)
            assert page.json()["jobs"], query
        cursor = page.json()["next_cursor"]
        assert cursor is not None
        await call("list_jobs", f"/jobs?status=failed,running&cursor={cursor}", headers=admin)
        await call("list_jobs", "/jobs?plugin=none", headers=admin)
        await call("list_plugins", "/plugins", headers=plugin_ro)
        await call("list_schedules", "/schedules", headers=admin)
        await call("sync_status", "/sync", headers=admin)
        await call("get_metrics", "/metrics", headers=admin)
        alerts = await call("list_alerts", "/alerts", headers=admin)
        assert [a["name"] for a in alerts.json()["alerts"]] == ["ops", "slow"]
        assert "secret" not in alerts.text
        for dedupe in ("new", "new"):  # 202, then 200 deduplicated
            await call("enqueue_job", "/plugin/ok/poll", headers=admin, json={"dedupe_key": dedupe})
        # Each installed command's own operation: 202, then 200 with the same key, with the
        # example the document gives for it.
        per_command = {
            op_id: (path, spec)
            for op_id, (path, _, spec) in checker.operations.items()
            if "{" not in path and path.startswith("/plugin/")
        }
        assert "/plugin/ok/poll" in {path for path, _ in per_command.values()}
        for op_id, (path, spec) in per_command.items():
            body = spec["requestBody"]["content"]["application/json"]["example"]
            for _ in range(2):
                await call(op_id, path, headers=admin, json={**body, "dedupe_key": "doc"})
            text_plain = {**admin, "content-type": "text/plain"}
            await call(op_id, path, headers=text_plain, content=b"{}")  # 415
        await call("cancel_job", f"/job/{ids['queued']}/cancel", headers=admin)  # 200
        await call("cancel_job", f"/job/{ids['running']}/cancel", headers=admin)  # 202

        # Client errors.
        await call("get_job", "/job/nope", headers=admin)  # 404
        await call("cancel_job", "/job/nope/cancel", headers=admin)  # 404
        await call("cancel_job", f"{job}/cancel", headers=admin)  # 409: finished
        await call("enqueue_job", "/plugin/nope/poll", headers=admin)  # 404
        await call("enqueue_job", "/plugin/no_commands/poll", headers=admin)  # 409: invalid
        await call("enqueue_job", "/plugin/ok/handle", headers=plugin_ro)  # 403: a write command
        await call("enqueue_job", "/plugin/ok/poll", headers=admin, content=b"[")  # 400
        await call(
            "enqueue_job",
            "/plugin/ok/poll",
            headers={**admin, "content-type": "text/plain"},
            content=b"{}",
        )  # 415
        await call("list_jobs", "/jobs?status=nope", headers=admin)  # 400 with allowed
        oversized = b" " * (MAX_BODY_BYTES + 1)
        for operation_id, (path, method, spec) in checker.operations.items():
            url = path.replace("{job_id}", ids["finished"])
            url = url.replace("{plugin}", "ok").replace("{command}", "poll")
            if spec["security"]:
                await call(operation_id, url)  # 401: no token
                await call(operation_id, url, headers={"authorization": "Bearer qs_nope"})
                await call(operation_id, url, headers=status_only if "plugin" in url else plugin_ro)
            await call(operation_id, f"{url}?unknown=1", headers=admin)  # 400
            await call(operation_id, url, headers=admin, method="PATCH")  # 405
            await call(operation_id, url, headers=admin, content=oversized)  # 413

        # Server errors: every store call fails.
        for error, status in ((StoreUnavailable("the database is read-only"), 503),
                              (RuntimeError("a bug"), 500)):  # fmt: skip
            failing = FailingStore(store, error)
            with monkeypatch.context() as patch:
                patch.setattr(state, "store", failing)
                patch.setattr(state.tokens, "store", failing)
                for operation_id, (path, _, _) in checker.operations.items():
                    url = path.replace("{job_id}", ids["finished"])
                    url = url.replace("{plugin}", "ok").replace("{command}", "poll")
                    response = await call(operation_id, url, headers=admin)
                    if (operation_id, status) not in UNREACHABLE:
                        assert response.status_code == status, response.text

    documented = {
        (spec["operationId"], int(status))
        for methods in document["paths"].values()
        for spec in methods.values()
        for status in spec["responses"]
    }
    assert documented - checker.seen == set(UNREACHABLE)

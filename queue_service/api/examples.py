"""Example bodies for the OpenAPI document: one per success response and request body, and
one error body per error status.

tests/test_openapi_document.py validates each against the schema it illustrates, so an
example cannot drift from the models. Where real code can produce the example (the sync
status), it does.
"""

from __future__ import annotations

from typing import Any

from queue_service import __version__
from queue_service.databricks.status import build_status
from queue_service.store import SyncState

JOB_ID = "0f6c1a52-5d43-4a8e-9b1f-2f4c7e2d9a10"
_CREATED = "2026-11-23T15:46:40.123456Z"
_STARTED = "2026-11-23T15:46:40.350000Z"
_COMPLETED = "2026-11-23T15:46:41.020000Z"

JOB_STATUS_VIEW: dict[str, Any] = {
    "job_id": JOB_ID,
    "plugin": "echo",
    "command": "poll",
    "status": "succeeded",
    "source": "local",
    "attempt": 1,
    "max_attempts": 4,
    "created_at": _CREATED,
    "started_at": _STARTED,
    "completed_at": _COMPLETED,
    "external_url": None,
}

JOB_DETAIL: dict[str, Any] = {
    **JOB_STATUS_VIEW,
    "payload": {"hello": "world"},
    "result": {"hello": "world"},
    "last_error": None,
    "submitted_by": "ci",
    "events": [],
    "logs": [{"level": "info", "message": "echoed 1 key"}],
    "attempts": [
        {
            "attempt": 1,
            "status": "succeeded",
            "started_at": _STARTED,
            "completed_at": _COMPLETED,
            "exit_code": 0,
            "error": None,
            "stderr_tail": None,
        }
    ],
}

CANCELED_JOB: dict[str, Any] = {
    **JOB_STATUS_VIEW,
    "status": "canceled",
    "attempt": 0,
    "started_at": None,
}

STOPPING_JOB: dict[str, Any] = {**JOB_STATUS_VIEW, "status": "running", "completed_at": None}

JOB_LIST: dict[str, Any] = {
    "jobs": [
        {key: JOB_STATUS_VIEW[key] for key in JOB_STATUS_VIEW if key != "max_attempts"},
    ],
    "total": 1,
    "next_cursor": None,
}

HEALTH: dict[str, Any] = {
    "status": "ok",
    "version": __version__,
    "uptime_seconds": 3600.25,
    "queue_depth": 3,
    "writable": True,
    "warnings": [],
}

#: What GET /healthz answers while the PostgreSQL server refuses connections.
HEALTH_OUTAGE: dict[str, Any] = {
    "error": "the database server cannot be reached right now; try again shortly",
    "code": "unavailable",
}

PLUGIN_LIST: dict[str, Any] = {
    "plugins": [
        {
            "name": "echo",
            "version": "1.0.0",
            "description": "Echoes the request payload back as the job result.",
            "valid": True,
            "error": None,
            "concurrency_safe": True,
            "commands": [
                {
                    "name": "poll",
                    "type": "read",
                    "description": "Return the payload unchanged as the result.",
                    "input_schema": {"type": "object"},
                }
            ],
        }
    ],
    "missing": [],
}

ENQUEUE_REQUEST: dict[str, Any] = {
    "payload": {"hello": "world"},
    "dedupe_key": "greeting-2026-11-23",
}


def enqueued(plugin: str, command: str, *, deduplicated: bool = False) -> dict[str, Any]:
    """The answer to enqueueing `plugin`/`command`."""
    return {
        "job_id": JOB_ID,
        "status": "queued",
        "plugin": plugin,
        "command": command,
        "deduplicated": deduplicated,
    }


SCHEDULE_LIST: dict[str, Any] = {
    "schedules": [
        {
            "schedule_id": "every-5m",
            "plugin": "echo",
            "command": "poll",
            "every": "5m",
            "cron": None,
            "timezone": "UTC",
            "if_running": "skip",
            "catch_up": "latest",
            "next_run_at": "2026-11-23T15:50:00.000000Z",
            "last_fired_at": "2026-11-23T15:45:00.000000Z",
            "last_job_id": JOB_ID,
            "last_job_status": "succeeded",
        }
    ]
}

SYNC_STATUS: dict[str, Any] = build_status(
    [
        SyncState(
            workspace="prod",
            host="https://adb-1234567890123456.7.azuredatabricks.net",
            watermark_ms=1_795_000_000_000,
            last_success_at="2026-11-23T15:45:00.000000Z",
            runs_ingested=1520,
        )
    ],
    enabled=True,
    workspaces=["prod"],
).model_dump()

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "queue-service", "version": __version__},
    "servers": [{"url": "http://127.0.0.1:8080"}],
    "paths": {},
}

#: One error body per status, for the error responses every operation lists.
ERRORS: dict[int, dict[str, Any]] = {
    400: {
        "error": "limit: must be a whole number from 1 to 200, got '0'",
        "code": "invalid_parameter",
        "param": "limit",
    },
    401: {
        "error": "this endpoint needs a bearer token: send 'Authorization: Bearer qs_…'",
        "code": "unauthorized",
    },
    403: {
        "error": "this token lacks the scope 'plugin:rw' (or one that includes it): "
        "command 'handle' is a write command",
        "code": "insufficient_scope",
    },
    404: {"error": f"no job with id {JOB_ID!r}", "code": "not_found", "param": "job_id"},
    405: {
        "error": "PUT is not allowed on this path; use GET",
        "code": "method_not_allowed",
        "allowed": ["GET"],
    },
    409: {"error": "the job already finished (succeeded)", "code": "conflict"},
    413: {"error": "the request body is over the 1048576 byte limit", "code": "payload_too_large"},
    415: {
        "error": "the body must be application/json, not 'text/plain'",
        "code": "unsupported_media_type",
        "allowed": ["application/json", "application/merge-patch+json"],
    },
    500: {"error": "internal error; the server log has the details", "code": "internal_error"},
    503: {
        "error": "the query took too long and was stopped; narrow the filters",
        "code": "unavailable",
    },
}

_DELIVERY: dict[str, Any] = {
    "delivery_id": "7",
    "status": "sent",
    "kind": "status",
    "plugin": "echo",
    "command": "poll",
    "job_id": JOB_ID,
    "job_status": "failed",
    "events": 3,
    "created_at": _COMPLETED,
    "next_attempt_at": None,
    "attempts": 1,
    "last_attempt_at": _COMPLETED,
    "last_error": None,
    "response_status": 200,
    "finished_at": _COMPLETED,
}

ALERTS: dict[str, Any] = {
    "alerts": [
        {
            "name": "ops",
            "target": "https://hooks.example.com",
            "format": "slack",
            "statuses": ["failed", "timed_out", "dead"],
            "running_longer_than": None,
            "plugins": [],
            "commands": [],
            "sources": [],
            "rate_limit": "5m",
            "header_names": [],
            "timeout_seconds": 10.0,
            "max_attempts": 8,
            "counts": {"pending": 0, "sent": 1, "failed": 0},
            "recent": [_DELIVERY],
            "failures": [],
        }
    ]
}

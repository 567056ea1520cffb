"""JSON response bodies, built as plain dicts and serialized with orjson.

The shapes are the pydantic models in queue_service/models.py, which the OpenAPI document is
generated from. Building a model per row validated data the store already typed and cost
more than the store's read, so bodies are built here directly;
tests/test_api_openapi_conformance.py checks every response the API produces against the
document instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from starlette.responses import Response

from queue_service.api.operations import Context
from queue_service.api.params import MAX_TEXT, encode_cursor
from queue_service.errors import ApiError
from queue_service.scopes import grants
from queue_service.store import Job, JobPage, JobSummary

log = logging.getLogger("queue_service.api")


def to_json(content: Any, *, indent: bool = False) -> bytes:
    """`content` as UTF-8 JSON. NaN and infinities become null, as pydantic wrote them.

    Stored data the API would never accept (a lone surrogate, or nesting deeper than orjson
    goes, in a plugin's result, say) must not make a job unreadable: such a body is written
    by the standard library instead, with every non-ASCII character escaped.
    """
    try:
        return orjson.dumps(content, option=orjson.OPT_INDENT_2 if indent else 0)
    except (orjson.JSONEncodeError, RecursionError):
        log.warning("a response body needed the fallback JSON encoder")
        text = json.dumps(
            content, ensure_ascii=True, allow_nan=False, default=str, indent=2 if indent else None
        )
        return text.encode()


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(to_json(content), status_code=status_code, media_type="application/json")


def job_view(job: Job, attempts: list[dict[str, Any]] | None) -> dict[str, Any]:
    """models.JobDetail when `attempts` is given, else models.JobStatusView."""
    view: dict[str, Any] = {
        "job_id": job.job_id,
        "plugin": job.plugin,
        "command": job.command,
        "status": job.status,
        "source": job.source,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "external_url": job.external_url,
    }
    if attempts is not None:
        view["payload"] = job.payload
        view["result"] = job.result
        view["last_error"] = job.last_error
        view["submitted_by"] = job.submitted_by
        view["events"] = job.events
        view["logs"] = job.logs
        # The store's attempt rows have exactly models.Attempt's fields.
        view["attempts"] = attempts
    return view


def _summary(job: JobSummary) -> dict[str, Any]:
    """models.JobSummary. A dict display is twice as fast as a loop over field names."""
    return {
        "job_id": job.job_id,
        "plugin": job.plugin,
        "command": job.command,
        "status": job.status,
        "source": job.source,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "attempt": job.attempt,
        "external_url": job.external_url,
    }


def page_body(page: JobPage) -> dict[str, Any]:
    """A store page as models.JobList, the GET /jobs body (the CLI's --json prints the same)."""
    return {
        "jobs": [_summary(job) for job in page.jobs],
        "total": page.total,
        "next_cursor": encode_cursor(page.next_cursor) if page.next_cursor else None,
    }


def could_be_a_job_id(job_id: str) -> bool:
    """False for text no job id can be: longer than any id, or holding a NUL (which a
    PostgreSQL text column cannot even be compared with). Such an id is a 404 without
    asking the store."""
    return len(job_id) <= MAX_TEXT and "\x00" not in job_id


def job_not_found(job_id: str) -> ApiError:
    return ApiError("not_found", f"no job with id {job_id[:64]!r}", param="job_id")


async def job_response(ctx: Context, job: Job, status_code: int = 200) -> Response:
    """The job as the caller's scope may see it: the detail view with attempts for
    `jobs:ro` and above, else the status view."""
    detailed = ctx.principal is not None and grants(ctx.principal.scopes, "jobs:ro")
    attempts = await ctx.state.store.get_attempts(job.job_id) if detailed else None
    return json_response(job_view(job, attempts), status_code)

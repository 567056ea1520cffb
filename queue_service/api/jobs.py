"""Job routes: GET /job/{job_id}, GET /jobs, and the health check."""

from __future__ import annotations

import json
import logging

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from starlette.requests import Request
from starlette.responses import Response

from queue_service import models
from queue_service.api.operations import Context, Operation
from queue_service.api.params import JOB_LIST_PARAMS, encode_cursor
from queue_service.errors import ApiError
from queue_service.scopes import grants
from queue_service.store import Job, JobFilter, JobPage

log = logging.getLogger("queue_service.api")
_STATUS_FIELDS = tuple(models.JobStatusView.model_fields)
_SUMMARY_FIELDS = tuple(models.JobSummary.model_fields)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    try:
        body = model.model_dump_json()
    except PydanticSerializationError:
        # Stored data the API would never accept (a lone surrogate or very deep nesting in a
        # plugin's result, say) must not make the job unreadable: escape it instead.
        log.warning("%s needed the fallback JSON encoder", type(model).__name__)
        body = json.dumps(model.model_dump(), ensure_ascii=True, allow_nan=False, default=str)
    return Response(body, status_code=status_code, media_type="application/json")


async def health(request: Request, ctx: Context) -> Response:
    from queue_service.api.sync_routes import sync_status

    depth = await ctx.state.store.queue_depth()
    databricks = ctx.state.config.databricks
    body = models.Health(
        status="ok",
        version=ctx.state.version,
        uptime_seconds=ctx.state.uptime_seconds(),
        queue_depth=depth,
        writable=ctx.state.store.read_only is None,
        sync=await sync_status(ctx.state) if databricks and databricks.enabled else None,
    )
    # `sync` is left out when not configured; nested nulls stay (they are schema-required).
    text = body.model_dump_json(exclude={"sync"} if body.sync is None else None)
    return Response(text, media_type="application/json")


def job_view(job: Job, attempts: list[dict[str, object]] | None) -> BaseModel:
    """The detail view when `attempts` is given, else the status view."""
    base = {name: getattr(job, name) for name in _STATUS_FIELDS}
    if attempts is None:
        return models.JobStatusView(**base)
    return models.JobDetail(
        **base,
        payload=job.payload,
        result=job.result,
        last_error=job.last_error,
        submitted_by=job.submitted_by,
        events=job.events,
        logs=job.logs,
        attempts=[models.Attempt(**a) for a in attempts],  # type: ignore[arg-type]
    )


def job_not_found(job_id: str) -> ApiError:
    return ApiError("not_found", f"no job with id {job_id[:64]!r}", param="job_id")


async def job_response(ctx: Context, job: Job, status_code: int = 200) -> Response:
    """The job as the caller's scope may see it: the detail view with attempts for
    `jobs:ro` and above, else the status view."""
    detailed = ctx.principal is not None and grants(ctx.principal.scopes, "jobs:ro")
    attempts = await ctx.state.store.get_attempts(job.job_id) if detailed else None
    return json_response(job_view(job, attempts), status_code)


def page_body(page: JobPage) -> models.JobList:
    """A store page in the GET /jobs shape (the CLI's --json prints the same)."""
    return models.JobList(
        jobs=[
            models.JobSummary(**{name: getattr(j, name) for name in _SUMMARY_FIELDS})
            for j in page.jobs
        ],
        total=page.total,
        next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None,
    )


async def get_job(request: Request, ctx: Context) -> Response:
    job_id = request.path_params["job_id"]
    job = await ctx.state.store.get_job(job_id) if len(job_id) <= 200 else None
    if job is None:
        raise job_not_found(job_id)
    return await job_response(ctx, job)


async def list_jobs(request: Request, ctx: Context) -> Response:
    query = ctx.query
    filters = JobFilter(
        plugin=query["plugin"],
        command=query["command"],
        statuses=query["status"],
        sources=query["source"],
        created_after=query["created_after"],
        created_before=query["created_before"],
    )
    page = await ctx.state.store.list_jobs(filters, limit=query["limit"], cursor=query["cursor"])
    body = page_body(page)
    return json_response(body)


OPERATIONS = (
    Operation(
        method="GET",
        path="/healthz",
        operation_id="health",
        summary="Liveness, version and queue depth",
        description="Needs no token. `queue_depth` counts jobs that are queued or running.",
        handler=health,
        scope=None,
        responses={200: (models.Health, "The service is up.")},
        tags=("service",),
    ),
    Operation(
        method="GET",
        path="/job/{job_id}",
        operation_id="get_job",
        summary="One job",
        description=(
            "A `jobs:status:ro` token gets the status view. `jobs:ro`, `jobs:rw` and `*` also "
            "get payload, result, last_error, submitted_by, events, logs and every attempt. "
            "An unknown id, well-formed or not, is a 404."
        ),
        handler=get_job,
        scope="jobs:status:ro",
        responses={
            200: ([models.JobDetail, models.JobStatusView], "The job."),
            404: (models.ErrorBody, "No job has this id."),
        },
        tags=("jobs",),
    ),
    Operation(
        method="GET",
        path="/jobs",
        operation_id="list_jobs",
        summary="List jobs, newest first",
        description=(
            "Filters combine with AND. Sorted by created_at descending, ties broken by "
            "insertion order; page with `cursor`. `total` counts every match, ignoring "
            "`limit` and `cursor`."
        ),
        handler=list_jobs,
        scope="jobs:status:ro",
        query=JOB_LIST_PARAMS,
        responses={200: (models.JobList, "A page of jobs.")},
        tags=("jobs",),
    ),
)

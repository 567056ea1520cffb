"""Job routes: GET /job/{job_id}, GET /jobs, and the health check."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from queue_service import models
from queue_service.api.operations import Context, Operation
from queue_service.api.params import JOB_LIST_PARAMS
from queue_service.api.responses import job_not_found, job_response, json_response, page_body
from queue_service.api.sync_routes import sync_status
from queue_service.store import JobFilter


async def health(request: Request, ctx: Context) -> Response:
    depth = await ctx.state.store.queue_depth()
    body: dict[str, object] = {
        "status": "ok",
        "version": ctx.state.version,
        "uptime_seconds": ctx.state.uptime_seconds(),
        "queue_depth": depth,
        "writable": ctx.state.store.read_only is None,
        "warnings": await _warnings(ctx),
    }
    databricks = ctx.state.config.databricks
    # `sync` is left out when not configured.
    if databricks and databricks.enabled:
        body["sync"] = (await sync_status(ctx.state)).model_dump()
    return json_response(body)


async def _warnings(ctx: Context) -> list[str]:
    missing = await ctx.state.registry.missing(ctx.state.store)
    if not missing:
        return []
    jobs = sum(missing.values())
    return [
        f"{len(missing)} plugin(s) with {jobs} queued job(s) are not installed; "
        "see GET /plugins (missing) and queue-service cancel"
    ]


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
    return json_response(page_body(page))


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

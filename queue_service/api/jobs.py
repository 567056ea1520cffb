"""Job routes: GET /job/{job_id}, GET /jobs, and the health check."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from queue_service import models
from queue_service.api import examples
from queue_service.api.operations import Context, Operation, insufficient_scope
from queue_service.api.params import JOB_LIST_PARAMS
from queue_service.api.responses import (
    could_be_a_job_id,
    job_not_found,
    job_response,
    json_response,
    page_body,
)
from queue_service.api.sync_routes import sync_status
from queue_service.scopes import grants
from queue_service.store import JobFilter

#: What reading any job's status view needs; without it a token reads only its own jobs.
READ_ANY_JOB = "jobs:status:ro"


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
    job = await ctx.state.store.get_job(job_id) if could_be_a_job_id(job_id) else None
    if job is None or not _may_read(ctx, job.submitted_by_token):
        # Another token's job is a 404 like an unknown id, so that a token without
        # jobs:status:ro cannot learn which ids exist.
        raise job_not_found(job_id)
    return await job_response(ctx, job)


def _may_read(ctx: Context, submitted_by_token: int | None) -> bool:
    principal = ctx.principal
    assert principal is not None
    return grants(principal.scopes, READ_ANY_JOB) or submitted_by_token == principal.token_id


async def list_jobs(request: Request, ctx: Context) -> Response:
    query = ctx.query
    assert ctx.principal is not None
    if not query["mine"] and not grants(ctx.principal.scopes, READ_ANY_JOB):
        raise insufficient_scope(READ_ANY_JOB, "pass mine=true to list this token's own jobs")
    filters = JobFilter(
        plugin=query["plugin"],
        command=query["command"],
        statuses=query["status"],
        sources=query["source"],
        created_after=query["created_after"],
        created_before=query["created_before"],
        submitted_by_token=ctx.principal.token_id if query["mine"] else None,
    )
    page = await ctx.state.store.list_jobs(filters, limit=query["limit"], cursor=query["cursor"])
    return json_response(page_body(page))


OPERATIONS = (
    Operation(
        method="GET",
        path="/healthz",
        operation_id="get_health",
        summary="Liveness, version and queue depth",
        description=(
            "`queue_depth` counts jobs that are queued or running. A 503 means the process "
            "is up but its database does not answer (a PostgreSQL server that is down, "
            "restarting or refusing connections, say); it answers 200 again as soon as the "
            "database does, without a restart."
        ),
        handler=health,
        scope=None,
        responses={
            200: (models.Health, "The service is up."),
            503: (
                models.ErrorBody,
                "The database does not answer: unreachable, busy, or a query ran too long "
                "(`code` unavailable, `Retry-After: 1`).",
            ),
        },
        examples={200: examples.HEALTH, 503: examples.HEALTH_OUTAGE},
        tags=("service",),
    ),
    Operation(
        method="GET",
        path="/job/{job_id}",
        operation_id="get_job",
        summary="One job",
        description=(
            "The status view (JobStatusView) for most tokens; `jobs:ro`, `jobs:rw` and `*` "
            "get the detail view (JobDetail): also payload, result, last_error, "
            "submitted_by, events, logs and every attempt. A token without "
            "`jobs:status:ro` reads only the jobs it enqueued itself (poll after "
            "enqueueing); another token's job is a 404, like an unknown id, so that such a "
            "token cannot learn which ids exist."
        ),
        handler=get_job,
        scope=READ_ANY_JOB,
        scope_text=(
            "Needs scope `jobs:status:ro` (or a scope that includes it) for any job, or any "
            "valid token for the jobs that token enqueued."
        ),
        own_jobs=True,
        responses={
            200: ([models.JobDetail, models.JobStatusView], "The job."),
            404: (
                models.ErrorBody,
                "No job has this id, or another token enqueued it and this token lacks "
                "`jobs:status:ro`.",
            ),
        },
        examples={200: examples.JOB_DETAIL},
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
            "`limit` and `cursor`. `mine=true` keeps the jobs this token enqueued."
        ),
        handler=list_jobs,
        scope=READ_ANY_JOB,
        scope_text=(
            "Needs scope `jobs:status:ro` (or a scope that includes it), or any valid token "
            "with `mine=true`."
        ),
        own_jobs=True,
        query=JOB_LIST_PARAMS,
        responses={
            200: (models.JobList, "A page of jobs."),
            403: (
                models.ErrorBody,
                "The token lacks `jobs:status:ro` and did not ask for `mine=true`.",
            ),
        },
        examples={200: examples.JOB_LIST},
        tags=("jobs",),
    ),
)

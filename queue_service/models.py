"""Pydantic models that shape every response. The OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from queue_service.databricks.status import SyncStatus
from queue_service.errors import ERROR_CODES
from queue_service.statuses import Source, Status

Timestamp = str

#: RFC 3339 `date-time` with at most 9 fraction digits: what the API accepts as a time, in a
#: query or a body (queue_service.api.params.parse_timestamp reads it). The JSON Schema pairs
#: the pattern with `format: date-time` for what a pattern cannot say (real calendar dates,
#: hours 00-23, offsets up to 23:59, a leap second only at 23:59:60 UTC).
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
TIMESTAMP_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "pattern": TIMESTAMP_PATTERN,
}
#: How deeply a request's JSON may nest (the payload's own levels included).
MAX_JSON_DEPTH = 64


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class ErrorBody(_Model):
    """The canonical error body of every non-2xx response."""

    error: str = Field(description="What went wrong, in words a person can act on.")
    code: Annotated[str, WithJsonSchema({"type": "string", "enum": list(ERROR_CODES)})] = Field(
        description="A stable machine code: one of the enum, each always sent with the same "
        "HTTP status (queue_service/errors.py)."
    )
    param: str | None = Field(
        default=None, description="The parameter at fault, for parameter errors."
    )
    allowed: list[str] | None = Field(
        default=None, description="The accepted values, when they come from a fixed set."
    )


class JobSummary(_Model):
    """One job in a listing."""

    job_id: str
    plugin: str
    command: str
    status: Status
    source: Source
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    attempt: int
    external_url: str | None


class JobStatusView(_Model):
    """A job as a `jobs:status:ro` token sees it."""

    job_id: str
    plugin: str
    command: str
    status: Status
    source: Source
    attempt: int
    max_attempts: int
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    external_url: str | None


class Attempt(_Model):
    """One run of a job's command."""

    attempt: int
    status: str = Field(
        description="running, succeeded, failed, timed_out, canceled, lost (the lease "
        "expired: the worker died) or interrupted (shut down before it finished)."
    )
    started_at: Timestamp
    completed_at: Timestamp | None
    exit_code: int | None
    error: str | None
    stderr_tail: str | None


class JobDetail(JobStatusView):
    """A job as `jobs:ro`, `jobs:rw` and `*` tokens see it."""

    payload: Any = Field(description="The JSON payload the job was enqueued with.")
    result: Any = Field(description="The plugin's result (or the Databricks run summary).")
    last_error: str | None
    submitted_by: str | None
    events: list[Any] | None = Field(description="Events the plugin emitted.")
    logs: list[Any] | None = Field(description="Log lines the plugin returned.")
    attempts: list[Attempt] = Field(description="Every attempt, oldest first.")


class JobList(_Model):
    """A page of jobs, newest first."""

    jobs: list[JobSummary]
    total: int = Field(description="Every job matching the filters, ignoring limit and cursor.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class Health(_Model):
    status: str = Field(description="Always ok when the service answers.")
    version: str
    uptime_seconds: float
    queue_depth: int = Field(description="Jobs that are queued or running.")
    writable: bool = Field(
        description="False when the database was opened read-only (file or folder not "
        "writable): reads work, writes answer 503."
    )
    sync: SyncStatus | None = Field(
        default=None, description="The Databricks sync, when it is configured."
    )
    warnings: list[str] = Field(
        description="What an operator should look at; empty when all is well. Names no "
        "plugin (this endpoint needs no token): GET /plugins has the details."
    )


class IndexLinks(_Model):
    openapi: str = Field(description="The OpenAPI 3.1 document of the REST API.")
    mcp: str = Field(description="The MCP endpoint (streamable HTTP; bearer token).")
    health: str = Field(description="Liveness, version and queue depth (no token).")


class ServiceIndex(_Model):
    """What `GET /` answers: where to go next. Holds no data, so it needs no token."""

    name: str
    version: str
    description: str
    links: IndexLinks = Field(description="Routes of this server, relative to its base URL.")
    docs: dict[str, str] = Field(
        description="The documentation, by topic: paths in the project's source tree and "
        "source distribution (they are not served over HTTP)."
    )


class CommandInfo(_Model):
    name: str
    type: str = Field(description="read (needs plugin:ro) or write (needs plugin:rw).")
    description: str
    input_schema: dict[str, Any] | None = Field(
        description="JSON Schema the payload must satisfy; null accepts any payload."
    )


class PluginInfo(_Model):
    name: str
    version: str | None
    description: str | None
    valid: bool
    error: str | None = Field(description="Why the plugin is unusable; null when valid.")
    concurrency_safe: bool
    commands: list[CommandInfo]


class MissingPlugin(_Model):
    name: str = Field(description="A plugin that queued jobs name but no plugin folder holds.")
    queued_jobs: int = Field(
        description="Its queued local jobs. They wait (they are never made dead) until the "
        "plugin is installed again or `queue-service cancel --plugin NAME` cancels them."
    )


class PluginList(_Model):
    plugins: list[PluginInfo]
    missing: list[MissingPlugin] = Field(
        description="Plugins that are not installed but have queued jobs, by name. Empty "
        "in a process that loads no plugins (it cannot tell)."
    )


class EnqueueRequest(_Model):
    """The body of POST /plugin/{plugin}/{command}. An empty body means `{}`.

    Validated strictly: `true` or `"3"` is not an integer, as the JSON Schema says.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="Checked against the command's input_schema. Nested at most "
        f"{MAX_JSON_DEPTH} levels deep; numbers must be finite; strings must be valid Unicode.",
    )
    dedupe_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        # No NUL character: a PostgreSQL store cannot hold one, and every store takes the same keys.
        pattern=r"^[^\x00]*$",
        description="While a job with this plugin, command and key is queued or running, "
        "enqueueing again returns that job (200, deduplicated) instead of a new one. "
        "No NUL character.",
    )
    max_attempts: int | None = Field(
        default=None, ge=1, le=100, description="Default: the plugin's max_attempts (4)."
    )
    run_after: Annotated[str, WithJsonSchema(TIMESTAMP_SCHEMA)] | None = Field(
        default=None,
        description="RFC 3339 time before which the job is not run, e.g. 2026-11-23T15:46:40Z "
        "(at most 9 fraction digits), at most service.max_run_after_days (default 365) days "
        "ahead: a later one is a 400. Default: now.",
    )


class EnqueueResponse(_Model):
    job_id: str
    status: Status
    plugin: str
    command: str
    deduplicated: bool = Field(
        default=False, description="True when an active job with the same dedupe_key was returned."
    )


class ScheduleInfo(_Model):
    schedule_id: str
    plugin: str
    command: str
    every: str | None
    cron: str | None
    timezone: str
    if_running: str
    catch_up: str
    next_run_at: Timestamp | None
    last_fired_at: Timestamp | None
    last_job_id: str | None
    last_job_status: Status | None


class ScheduleList(_Model):
    schedules: list[ScheduleInfo]

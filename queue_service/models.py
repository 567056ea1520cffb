"""Pydantic models that shape every response. The OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from queue_service.statuses import Source, Status

Timestamp = str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class ErrorBody(_Model):
    """The canonical error body of every non-2xx response."""

    error: str = Field(description="What went wrong, in words a person can act on.")
    code: str = Field(description="A stable machine code, e.g. invalid_parameter.")
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

"""Plain data that crosses the store boundary. No SQL here."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from queue_service.statuses import AttemptStatus, Source, Status
from queue_service.timeutil import parse_rfc3339

JSON = Any


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration of a backend."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue. `job_id` is generated when None."""

    plugin: str
    command: str
    payload: JSON = None
    max_attempts: int = 4
    submitted_by: str | None = None
    #: The id of the token that enqueued it (None for the CLI, the scheduler, ...): that
    #: token may read the job's status view whatever its scopes.
    submitted_by_token: int | None = None
    dedupe_key: str | None = None
    run_after: str | None = None  # fixed-width UTC text; None means now
    schedule_id: str | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    job_id: str
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the jobs table, JSON columns decoded."""

    job_id: str
    plugin: str
    command: str
    status: Status
    source: Source
    payload: JSON
    result: JSON
    events: JSON
    logs: JSON
    last_error: str | None
    attempt: int
    max_attempts: int
    submitted_by: str | None
    external_id: str | None
    external_url: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    run_after: str | None
    lease_expires_at: str | None
    dedupe_key: str | None
    schedule_id: str | None
    seq: int
    #: The id of the token that enqueued it; None when no token did.
    submitted_by_token: int | None = None


@dataclass(frozen=True, slots=True)
class JobSummary:
    """The columns a listing returns: no payload or result, so pages stay small."""

    job_id: str
    plugin: str
    command: str
    status: Status
    source: Source
    created_at: str
    started_at: str | None
    completed_at: str | None
    attempt: int
    external_url: str | None
    seq: int


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Filters for listing jobs. Empty tuples mean "any"."""

    plugin: str | None = None
    command: str | None = None
    statuses: tuple[Status, ...] = ()
    sources: tuple[Source, ...] = ()
    created_after: str | None = None  # exclusive, fixed-width UTC text
    created_before: str | None = None  # exclusive
    #: Only jobs enqueued by the token with this id (NewJob.submitted_by_token).
    submitted_by_token: int | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the (created_at, seq) of the last job on the previous page."""

    created_at: str
    seq: int


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobSummary]
    total: int
    next_cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class ExternalJob:
    """A job mirrored from an external system (Databricks), upserted by job_id.

    `status` None means "the remote state is unknown to us": an existing row keeps
    its status and a new row gets `status_if_new`.
    """

    job_id: str
    plugin: str
    command: str
    status: Status | None
    status_if_new: Status
    external_id: str
    external_url: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    attempt: int
    last_error: str | None
    result: JSON
    source: Source = Source.DATABRICKS


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


class JobCount(NamedTuple):
    """How many jobs have one (plugin, command, source, status): a row of the exact counts."""

    plugin: str
    command: str
    source: Source
    status: Status
    n: int


@dataclass(slots=True)
class SyncState:
    """Per-workspace progress of the Databricks sync."""

    workspace: str
    host: str | None = None
    watermark_ms: int | None = None
    last_success_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    runs_ingested: int = 0
    healthy: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    scopes: tuple[str, ...]
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None
    token_id: int


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How an attempt ended, as the worker reports it to `finish_attempt`.

    `status` is the job's next status: a terminal status, or `queued` for a retry
    (then `run_after` says when). `attempt_status` is what the attempt itself was:
    succeeded, failed, timed_out or canceled.
    """

    status: Status
    attempt_status: AttemptStatus
    result: JSON = None
    events: JSON = None
    logs: JSON = None
    error: str | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    run_after: str | None = None
    state_updates: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """A job whose lease expired, and the status recovery gave it."""

    job_id: str
    status: Status
    attempt: int


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the store persists per schedule key. Timestamps are fixed-width UTC text."""

    next_run_at: str | None = None
    last_fired_at: str | None = None
    last_job_id: str | None = None


class FireOutcome(StrEnum):
    ENQUEUED = "enqueued"
    #: The (schedule, slot) pair was already recorded: another process or an earlier
    #: run fired it. Nothing was enqueued.
    ALREADY_FIRED = "already_fired"
    #: `if_running = "skip"` and a job of the schedule was queued or running. The slot
    #: is recorded and the state advanced; nothing was enqueued.
    SKIPPED_RUNNING = "skipped_running"


@dataclass(frozen=True, slots=True)
class FireResult:
    """What `store.fire_schedule_slot` did. `job_id` is set when a job was enqueued."""

    outcome: FireOutcome
    job_id: str | None = None


# -- alerts ---------------------------------------------------------------------------


class AlertEventKind(StrEnum):
    #: A job became failed, timed_out or dead (written by the store with the change).
    STATUS = "status"
    #: A job has been running longer than a threshold (`record_long_running`).
    RUNNING_LONG = "running_long"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    #: Given up: every attempt failed.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One row of the alert outbox: what happened to which job, and when it was recorded."""

    event_id: int
    kind: AlertEventKind
    job_id: str
    plugin: str
    command: str
    source: str
    status: str
    attempt: int
    last_error: str | None
    external_url: str | None
    started_at: str | None
    completed_at: str | None
    #: The threshold of a running_long event, in seconds; None for a status event.
    running_seconds: int | None
    recorded_at: str


@dataclass(frozen=True, slots=True)
class AlertRoute:
    """Which outbox events one configured alert sends, and how they are grouped. Empty
    tuples mean "any"; `rate_limit_seconds` None sends one message per event."""

    alert: str
    statuses: tuple[str, ...] = ()
    running_seconds: int | None = None
    plugins: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    rate_limit_seconds: float | None = None
    #: A status event about a job that ended more than this long before the event was
    #: recorded (a Databricks run the sync first sees long after it ended) is not sent.
    stale_seconds: float = 86400.0

    def matches(self, event: AlertEvent) -> bool:
        """Whether this route sends `event` (pure: no clock, no store)."""
        if self.plugins and event.plugin not in self.plugins:
            return False
        if self.commands and event.command not in self.commands:
            return False
        if self.sources and event.source not in self.sources:
            return False
        if event.kind is AlertEventKind.RUNNING_LONG:
            return event.running_seconds == self.running_seconds
        if event.status not in self.statuses:
            return False
        return not _older_than(event.completed_at, event.recorded_at, self.stale_seconds)


def _older_than(moment: str | None, reference: str, seconds: float) -> bool:
    if moment is None:
        return False
    age = parse_rfc3339(reference) - parse_rfc3339(moment)
    return age.total_seconds() > seconds


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    """One message for one alert: the events it carries (the first and the last of
    `events` folded together by a rate limit) and how sending it went."""

    delivery_id: str
    alert: str
    plugin: str
    status: DeliveryStatus
    events: int
    created_at: str
    not_before: str
    next_attempt_at: str
    attempts: int
    last_attempt_at: str | None
    last_error: str | None
    response_status: int | None
    finished_at: str | None
    first_event: AlertEvent | None
    last_event: AlertEvent | None

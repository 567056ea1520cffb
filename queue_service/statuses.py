"""The one job-status vocabulary: statuses, aliases and legal transitions.

Everything that names a status (the store, the API, the CLI, the Databricks
mapping and the docs tests) imports it from here.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    DEAD = "dead"


class Source(StrEnum):
    LOCAL = "local"
    DATABRICKS = "databricks"


class AttemptStatus(StrEnum):
    """How one attempt of a job went (job_attempts.status)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    #: The lease expired: the worker running it stopped (crash, kill, hang). It counts.
    LOST = "lost"
    #: The worker shut down gracefully before it finished. It does not count.
    INTERRUPTED = "interrupted"


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
SOURCES: tuple[str, ...] = tuple(s.value for s in Source)

#: Names accepted on input that mean a native status (ductile compatibility).
ALIASES: dict[str, Status] = {
    "pending": Status.QUEUED,
    "ok": Status.SUCCEEDED,
    "error": Status.FAILED,
}

#: Every word a client may use for a status, in documentation order.
STATUS_WORDS: tuple[str, ...] = STATUSES + tuple(ALIASES)

ACTIVE: frozenset[Status] = frozenset({Status.QUEUED, Status.RUNNING})
TERMINAL: frozenset[Status] = frozenset(Status) - ACTIVE

#: Legal transitions for local jobs. Terminal statuses are final.
#: running -> queued is a retry, a recovered lease or a graceful shutdown.
LOCAL_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELED, Status.DEAD}),
    Status.RUNNING: frozenset(
        {
            Status.QUEUED,
            Status.SUCCEEDED,
            Status.FAILED,
            Status.TIMED_OUT,
            Status.CANCELED,
            Status.DEAD,
        }
    ),
    **{s: frozenset() for s in TERMINAL},
}


class UnknownStatus(ValueError):
    """A status word that is neither a native status nor an alias."""

    def __init__(self, word: str) -> None:
        super().__init__(f"unknown status {word!r}")
        self.word = word


def normalize_status(word: str) -> Status:
    """Map a native status or an alias (any case, surrounding spaces ignored) to a Status."""
    key = word.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    try:
        return Status(key)
    except ValueError:
        raise UnknownStatus(word) from None


def allowed_predecessors(new: Status, source: Source = Source.LOCAL) -> frozenset[Status]:
    """Statuses from which a job of `source` may move to `new`.

    Local jobs follow LOCAL_TRANSITIONS. A Databricks job mirrors a remote run
    whose state we only sample, so any status may follow any other: between two
    polls a run can go from queued to finished, and a repair re-runs a finished
    run under the same run_id (the one allowed exit from a terminal status).
    """
    if source is Source.DATABRICKS:
        return frozenset(Status) - {new}
    return frozenset(old for old, targets in LOCAL_TRANSITIONS.items() if new in targets)


def can_transition(old: Status, new: Status, source: Source = Source.LOCAL) -> bool:
    return old in allowed_predecessors(new, source)

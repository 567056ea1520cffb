"""Pure mapping of one Databricks run (Jobs API 2.2 JSON) to a store ``ExternalJob``.

Nothing here does I/O or logging: the sync worker decides what to log. The
input is the raw JSON dict, not the SDK's dataclasses, because the SDK turns
enum strings it does not know into ``None`` and we must keep them.

Decisions recorded here (the issue leaves them to us):

- ``job_id`` is ``uuid5(RUN_NAMESPACE, f"{canonical_host(host)}#{run_id}")``.
  ``RUN_NAMESPACE`` is fixed forever: changing it, or the name format, would
  duplicate every mirrored run.
- ``command`` is the Databricks job's name when the caller knows it (the sync
  looks it up with ``jobs/get`` and caches it), else the run's ``run_name``,
  else ``"Untitled"`` (the name Databricks itself gives unnamed runs).
- Status mapping: see :func:`map_status`.
- When the status is unknown, ``status`` is ``None`` (the store keeps the
  existing row's status) and ``status_if_new`` is ``running`` while the run has
  no ``end_time`` and ``dead`` once it has one (it ended, but we cannot tell how).
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from queue_service.statuses import Source, Status
from queue_service.store.types import ExternalJob

#: Namespace of mirrored-run job ids; equal to uuid5(NAMESPACE_URL, "queue-service:databricks-run").
RUN_NAMESPACE = uuid.UUID("25f5c7c9-2a25-5aee-a237-6f30aa046c6c")

PLUGIN = "databricks"
UNTITLED = "Untitled"

#: 10000-01-01T00:00:00Z in epoch milliseconds: the first instant without a 4-digit year.
_END_OF_TIME_MS = 253_402_300_800_000


class MalformedRun(ValueError):
    """A run dict that cannot be mapped; the sync skips it and logs ``str(exc)``."""

    def __init__(self, run_id: object, reason: str) -> None:
        super().__init__(f"malformed Databricks run (run_id={run_id!r}): {reason}")
        self.run_id = run_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RunState:
    """The raw state strings of a run, exactly as the API sent them (None when absent)."""

    status_state: str | None = None
    termination_code: str | None = None
    termination_type: str | None = None
    life_cycle_state: str | None = None
    result_state: str | None = None


_QUEUED_PHASES = frozenset({"QUEUED", "BLOCKED", "WAITING", "WAITING_FOR_RETRY"})
_RUNNING_PHASES = frozenset({"PENDING", "RUNNING", "TERMINATING"})

_RESULT_STATES: dict[str, Status] = {
    "SUCCESS": Status.SUCCEEDED,
    "SUCCESS_WITH_FAILURES": Status.SUCCEEDED,
    "FAILED": Status.FAILED,
    "TIMEDOUT": Status.TIMED_OUT,
    "CANCELED": Status.CANCELED,
    "EXCLUDED": Status.CANCELED,
    "UPSTREAM_CANCELED": Status.CANCELED,
    "UPSTREAM_FAILED": Status.CANCELED,
    "DISABLED": Status.CANCELED,
    "MAXIMUM_CONCURRENT_RUNS_REACHED": Status.CANCELED,
}

# termination_details.code of a TERMINATED run. INTERNAL_ERROR is decided by the
# termination type (see map_status). The codes documented as failures of the
# run map to failed; a code we do not know falls back to result_state.
_TERMINATION_CODES: dict[str, Status] = {
    "SUCCESS": Status.SUCCEEDED,
    "SUCCESS_WITH_FAILURES": Status.SUCCEEDED,
    "USER_CANCELED": Status.CANCELED,
    "CANCELED": Status.CANCELED,
    "SKIPPED": Status.CANCELED,
    "DISABLED": Status.CANCELED,
    "MAX_CONCURRENT_RUNS_EXCEEDED": Status.CANCELED,
    "MAX_JOB_QUEUE_SIZE_EXCEEDED": Status.CANCELED,
    **{
        code: Status.FAILED
        for code in (
            "DRIVER_ERROR",
            "CLUSTER_ERROR",
            "RUN_EXECUTION_ERROR",
            "LIBRARY_INSTALLATION_ERROR",
            "REPOSITORY_CHECKOUT_FAILED",
            "INVALID_CLUSTER_REQUEST",
            "WORKSPACE_RUN_LIMIT_EXCEEDED",
            "FEATURE_DISABLED",
            "CLUSTER_REQUEST_LIMIT_EXCEEDED",
            "STORAGE_ACCESS_ERROR",
            "UNAUTHORIZED_ERROR",
            "MAX_SPARK_CONTEXTS_EXCEEDED",
            "RESOURCE_NOT_FOUND",
            "INVALID_RUN_CONFIGURATION",
            "CLOUD_FAILURE",
            "BREAKING_CHANGE",
            "BUDGET_POLICY_LIMIT_EXCEEDED",
            "CLUSTER_TERMINATED_BY_USER",
        )
    },
}

#: Statuses whose state or termination message becomes ``last_error``.
_ERROR_STATUSES = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CANCELED, Status.DEAD})


def _internal_error(termination_type: str | None) -> Status:
    return Status.FAILED if termination_type == "CLIENT_ERROR" else Status.DEAD


def _from_phase(phase: str, s: RunState) -> Status | None:
    if phase in _QUEUED_PHASES:
        return Status.QUEUED
    if phase in _RUNNING_PHASES:
        return Status.RUNNING
    if phase == "SKIPPED":
        return Status.CANCELED
    if phase == "INTERNAL_ERROR":
        return _internal_error(s.termination_type)
    if phase != "TERMINATED":
        return None
    # No termination code means a timeout: Databricks reports it as code
    # CANCELED, so result_state TIMEDOUT is the only place it shows.
    if s.result_state == "TIMEDOUT":
        return Status.TIMED_OUT
    if s.termination_code == "INTERNAL_ERROR":
        return _internal_error(s.termination_type)
    if s.termination_code in _TERMINATION_CODES:
        return _TERMINATION_CODES[s.termination_code]
    return _RESULT_STATES.get(s.result_state or "")


def map_status(s: RunState) -> Status | None:
    """Map raw run state strings to a job status; None means "unknown to us".

    ``status.state`` (with ``status.termination_details``) decides when present;
    ``state.life_cycle_state`` (with ``state.result_state``) decides otherwise,
    and also when ``status.state`` holds a value we do not know.

    ============================================================  ===========
    QUEUED, BLOCKED, WAITING, WAITING_FOR_RETRY                   queued
    PENDING, RUNNING, TERMINATING                                 running
    TERMINATED + SUCCESS / SUCCESS_WITH_FAILURES                  succeeded
    TERMINATED + FAILED or a failure termination code             failed
    TERMINATED + result_state TIMEDOUT (whatever the code)        timed_out
    TERMINATED + CANCELED, USER_CANCELED, SKIPPED, EXCLUDED,      canceled
    UPSTREAM_CANCELED, UPSTREAM_FAILED, DISABLED,
    MAXIMUM_CONCURRENT_RUNS_REACHED (and the code spellings
    MAX_CONCURRENT_RUNS_EXCEEDED, MAX_JOB_QUEUE_SIZE_EXCEEDED);
    life cycle SKIPPED
    INTERNAL_ERROR (life cycle or code) + type CLIENT_ERROR       failed
    INTERNAL_ERROR otherwise                                      dead
    anything else                                                 None
    ============================================================  ===========
    """
    for phase in (s.status_state, s.life_cycle_state):
        if phase is not None:
            status = _from_phase(phase, s)
            if status is not None:
                return status
    return None


@functools.lru_cache(maxsize=256)
def canonical_host(host: str) -> str:
    """``scheme://host[:port][/path]``, lower-cased, default port and trailing slash dropped.

    A host without a scheme gets ``https://``, as the SDK does.
    """
    text = host.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    hostname = (parts.hostname or "").lower()
    if ":" in hostname:
        hostname = f"[{hostname}]"
    default_port = {"https": 443, "http": 80}.get(scheme)
    port = "" if parts.port is None or parts.port == default_port else f":{parts.port}"
    return f"{scheme}://{hostname}{port}{parts.path.rstrip('/')}"


@functools.lru_cache(maxsize=256)
def _run_id_hash(host: str) -> Any:
    """SHA-1 of uuid5's input up to the run id, for the workspace at ``host``."""
    prefix = RUN_NAMESPACE.bytes + f"{canonical_host(host)}#".encode()
    return hashlib.sha1(prefix, usedforsecurity=False)  # uuid5 is SHA-1 by definition


def run_job_id(host: str, run_id: int) -> str:
    """The deterministic job id of run ``run_id`` in the workspace at ``host``:
    ``str(uuid5(RUN_NAMESPACE, f"{canonical_host(host)}#{run_id}"))``, computed
    from the host's hash prefix (three times faster; a test holds them equal)."""
    digest = _run_id_hash(host).copy()
    digest.update(str(run_id).encode())
    x = digest.hexdigest()
    # uuid5 keeps the first 16 bytes, with version 5 and the RFC 4122 variant (10xx).
    variant = "89ab"[int(x[16], 16) & 3]
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{variant}{x[17:20]}-{x[20:32]}"


def ms_to_timestamp(ms: int) -> str:
    """Epoch milliseconds (>= 0) -> the store's fixed-width UTC text, as
    ``timeutil.format_ts`` writes it (exact, no float rounding).

    Raises OverflowError past year 9999.
    """
    if ms >= _END_OF_TIME_MS:
        raise OverflowError(f"{ms} ms is after year 9999")
    seconds, millis = divmod(ms, 1000)
    # %Y has 4 digits here: the year is between 1970 and 9999.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}000Z"


def _int(run: Mapping[str, Any], key: str, run_id: object, *, required: bool = False) -> int | None:
    value = run.get(key)
    if value is None:
        if required:
            raise MalformedRun(run_id, f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRun(run_id, f"{key} is not an integer: {value!r}")
    if value < 0:
        raise MalformedRun(run_id, f"{key} is negative: {value}")
    return value


def _str(obj: Mapping[str, Any], key: str, run_id: object) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedRun(run_id, f"{key} is not a string: {value!r}")


def _obj(obj: Mapping[str, Any], key: str, run_id: object) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise MalformedRun(run_id, f"{key} is not an object: {value!r}")


def run_state(run: Mapping[str, Any]) -> RunState:
    """Extract the raw state strings of a run; raises MalformedRun on wrong types."""
    return _state_parts(run, run.get("run_id"))[0]


def _state_parts(
    run: Mapping[str, Any], run_id: object
) -> tuple[RunState, Mapping[str, Any], Mapping[str, Any]]:
    """The run's RunState, its ``state`` and its ``status.termination_details``."""
    state = _obj(run, "state", run_id)
    status = _obj(run, "status", run_id)
    details = _obj(status, "termination_details", run_id)
    raw = RunState(
        status_state=_str(status, "state", run_id),
        termination_code=_str(details, "code", run_id),
        termination_type=_str(details, "type", run_id),
        life_cycle_state=_str(state, "life_cycle_state", run_id),
        result_state=_str(state, "result_state", run_id),
    )
    return raw, state, details


def map_run(
    run: Mapping[str, Any], *, workspace: str, host: str, job_name: str | None = None
) -> ExternalJob:
    """Map one raw run dict to the ExternalJob the store upserts.

    ``workspace`` is the configured workspace name (kept in ``result``), ``host``
    the resolved workspace URL (part of the job id), ``job_name`` the Databricks
    job's name if known. Raises MalformedRun when a field the mapping needs is
    missing or of the wrong type; fields it does not need are not checked.
    """
    if not isinstance(run, Mapping):
        raise MalformedRun(None, f"a run must be a JSON object, got {type(run).__name__}")
    raw_id = run.get("run_id")
    run_id = _int(run, "run_id", raw_id, required=True)
    assert run_id is not None
    start_ms = _int(run, "start_time", run_id, required=True)
    if not start_ms:
        raise MalformedRun(run_id, "start_time is 0")
    end_ms = _int(run, "end_time", run_id) or 0
    attempt_number = _int(run, "attempt_number", run_id) or 0
    databricks_job_id = _int(run, "job_id", run_id)
    original_attempt = _int(run, "original_attempt_run_id", run_id)
    run_duration = _int(run, "run_duration", run_id)
    run_name = _str(run, "run_name", run_id)
    run_page_url = _str(run, "run_page_url", run_id)
    trigger = _str(run, "trigger", run_id)
    raw, state, details = _state_parts(run, run_id)
    message = _str(details, "message", run_id) or _str(state, "state_message", run_id) or None
    try:
        started_at = ms_to_timestamp(start_ms)
        completed_at = ms_to_timestamp(end_ms) if end_ms else None
    except (OverflowError, ValueError) as exc:
        raise MalformedRun(run_id, f"timestamp out of range: {exc}") from None

    status = map_status(raw)
    status_if_new = status or (Status.DEAD if end_ms else Status.RUNNING)
    return ExternalJob(
        job_id=run_job_id(host, run_id),
        plugin=PLUGIN,
        command=job_name or run_name or UNTITLED,
        status=status,
        status_if_new=status_if_new,
        external_id=str(run_id),
        external_url=run_page_url,
        created_at=started_at,
        started_at=started_at,
        completed_at=completed_at,
        attempt=attempt_number + 1,
        last_error=message if status_if_new in _ERROR_STATUSES else None,
        result={
            "workspace": workspace,
            "job_id": databricks_job_id,
            "run_id": run_id,
            "original_attempt_run_id": original_attempt,
            "life_cycle_state": raw.life_cycle_state,
            "result_state": raw.result_state,
            "status_state": raw.status_state,
            "termination_code": raw.termination_code,
            "termination_type": raw.termination_type,
            "trigger": trigger,
            "run_duration_ms": run_duration,
        },
        source=Source.DATABRICKS,
    )

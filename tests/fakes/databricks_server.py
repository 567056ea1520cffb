"""A fake Databricks workspace: a real HTTP server on 127.0.0.1 speaking Jobs API 2.2.

Endpoints (GET only):

- ``/api/2.2/jobs/runs/list`` (also ``/api/2.1/...``): ``limit`` 1-25, default 20,
  0 = the maximum, anything else 400 ``INVALID_PARAMETER_VALUE``; ``page_token``
  (opaque keyset cursor); ``active_only`` / ``completed_only`` (both true = 400);
  ``start_time_from`` / ``start_time_to`` (epoch ms, inclusive); ``job_id``;
  ``run_type``; ``expand_tasks`` (``tasks`` are left out unless true). The answer
  is ``{runs?, has_more, next_page_token?}``, newest ``start_time`` first
  (ties: higher ``run_id`` first); ``runs`` is absent when empty and
  ``next_page_token`` absent on the last page.
- ``/api/2.2/jobs/runs/get?run_id=``: the run; a missing run answers like
  Databricks does, 400 ``INVALID_PARAMETER_VALUE`` "Run N does not exist.".
- ``/api/2.2/jobs/get?job_id=``: ``{job_id, settings: {name}, ...}``; missing:
  400 ``INVALID_PARAMETER_VALUE`` "Job N does not exist.".
- ``/.well-known/databricks-config``: 404, as on workspaces that predate it.
- Anything else: 404 ``ENDPOINT_NOT_FOUND``.

``/api/`` requests need ``Authorization: Bearer <token>``: none gives 401
``{"error_code": "UNAUTHENTICATED"}``, a wrong one 403
``{"error_code": 403, "message": "Invalid access token."}`` (numeric, as seen in practice).
Errors are ``{"error_code": ..., "message": ...}``.

Runs are plain dicts in the API's JSON shape, created and changed through the
Python API (:meth:`FakeDatabricks.start_run`, :meth:`finish_run`,
:meth:`repair_run`, :meth:`remove_run`, :meth:`put_run` for arbitrary or
malformed dicts). Faults are injected with :meth:`inject` (one-shot or
persistent, by path) and :meth:`fail_randomly` (one request in N, seeded).
Listing is a bisect over a sorted index, so 10k+ runs page quickly.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACTIVE_STATES = frozenset({"QUEUED", "PENDING", "RUNNING", "TERMINATING"})
COMPLETED_STATES = frozenset({"TERMINATED", "SKIPPED", "INTERNAL_ERROR"})
MAX_LIMIT = 25
DEFAULT_LIMIT = 20

# result_state -> (termination code, termination type) for the status block.
_TERMINATION = {
    "SUCCESS": ("SUCCESS", "SUCCESS"),
    "SUCCESS_WITH_FAILURES": ("SUCCESS_WITH_FAILURES", "SUCCESS"),
    "FAILED": ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
    # Databricks has no TIMEOUT code: a timeout is a platform cancel.
    "TIMEDOUT": ("CANCELED", "SUCCESS"),
    "CANCELED": ("USER_CANCELED", "SUCCESS"),
    "EXCLUDED": ("SKIPPED", "SUCCESS"),
    "UPSTREAM_CANCELED": ("SKIPPED", "SUCCESS"),
    "UPSTREAM_FAILED": ("SKIPPED", "CLIENT_ERROR"),
    "DISABLED": ("DISABLED", "CLIENT_ERROR"),
    "MAXIMUM_CONCURRENT_RUNS_REACHED": ("MAX_CONCURRENT_RUNS_EXCEEDED", "CLIENT_ERROR"),
}
# life_cycle_state -> status.state
_STATUS_STATE = {
    "QUEUED": "QUEUED",
    "PENDING": "PENDING",
    "RUNNING": "RUNNING",
    "TERMINATING": "TERMINATING",
    "TERMINATED": "TERMINATED",
    "SKIPPED": "TERMINATED",
    "INTERNAL_ERROR": "TERMINATED",
    "BLOCKED": "BLOCKED",
    "WAITING_FOR_RETRY": "WAITING",
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Fault:
    """What to answer instead of the real response. Build with the class methods."""

    kind: str
    status: int = 0
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0

    @staticmethod
    def _json(status: int, error_code: object, message: str, **kw: Any) -> Fault:
        body = json.dumps({"error_code": error_code, "message": message}).encode()
        return Fault(kind=kw.pop("kind", f"http_{status}"), status=status, body=body, **kw)

    @classmethod
    def rate_limited(cls, retry_after: int | str | None = 1) -> Fault:
        """429 REQUEST_LIMIT_EXCEEDED with ``Retry-After`` (None: no header)."""
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        return cls._json(
            429,
            "REQUEST_LIMIT_EXCEEDED",
            "Too many requests. Please wait a moment and try again.",
            headers=headers,
            kind="rate_limited",
        )

    @classmethod
    def unavailable(cls, retry_after: int | None = None) -> Fault:
        """503 TEMPORARILY_UNAVAILABLE (the SDK retries it)."""
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        return cls._json(
            503,
            "TEMPORARILY_UNAVAILABLE",
            "The service is temporarily unavailable.",
            headers=headers,
            kind="unavailable",
        )

    @classmethod
    def internal_error(cls) -> Fault:
        """500 INTERNAL_ERROR (the SDK does not retry it)."""
        return cls._json(500, "INTERNAL_ERROR", "Internal error.", kind="internal_error")

    @classmethod
    def unauthorized(cls, numeric: bool = True) -> Fault:
        """401 with a numeric ``error_code`` (or the string UNAUTHENTICATED)."""
        code: object = 401 if numeric else "UNAUTHENTICATED"
        return cls._json(401, code, "Unauthorized: the token is expired.", kind="unauthorized")

    @classmethod
    def forbidden(cls, numeric: bool = True) -> Fault:
        """403 with a numeric ``error_code`` (or PERMISSION_DENIED)."""
        code: object = 403 if numeric else "PERMISSION_DENIED"
        return cls._json(403, code, "Invalid access token.", kind="forbidden")

    @classmethod
    def forbidden_html(cls) -> Fault:
        """403 with an HTML page, as old endpoints and proxies answer."""
        body = (
            b"<html><head><meta http-equiv='Content-Type' content='text/html'/>"
            b"<title>Error 403 Invalid access token.</title></head><body>"
            b"<h2>HTTP ERROR 403</h2><p>Problem accessing /api/2.2/jobs/runs/list. "
            b"Reason:<pre>    Invalid access token.</pre></p></body></html>"
        )
        return Fault(kind="forbidden_html", status=403, body=body, content_type="text/html")

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 with a truncated JSON body."""
        return Fault(kind="malformed_json", status=200, body=b'{"runs": [{"run_id": 1, "sta')

    @classmethod
    def wrong_shape(cls) -> Fault:
        """200 with valid JSON that is not a runs/list answer."""
        return Fault(kind="wrong_shape", status=200, body=b'{"runs": "nope", "has_more": 7}')

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` then answer normally."""
        return Fault(kind="slow", delay=seconds)

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without answering."""
        return Fault(kind="disconnect")

    @classmethod
    def not_found_endpoint(cls) -> Fault:
        """A bare 404 ENDPOINT_NOT_FOUND (not proof that a run is gone)."""
        return cls._json(404, "ENDPOINT_NOT_FOUND", "No API found", kind="not_found_endpoint")


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int | None  # None: until cleared
    path: str
    skip: int = 0  # matching requests to let through first


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    fault: str | None


@dataclass(slots=True)
class _Entry:
    key: tuple[int, int]  # (-start_time, -run_id): ascending order = newest first
    run: dict[str, Any]
    job_id: int | None
    life_cycle_state: str | None
    run_type: str | None


@dataclass(slots=True)
class _RandomFailures:
    one_in: int
    rng: random.Random
    faults: list[Fault] = field(default_factory=list)
    path: str = "/api/"


class _ApiError(Exception):
    def __init__(self, status: int, error_code: object, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid value for {name}: {value!r}")


def _int(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _ApiError(
            400, "INVALID_PARAMETER_VALUE", f"Invalid value for {name}: {value!r}"
        ) from None


def _encode_token(key: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        a, b = json.loads(raw)
        return int(a), int(b)
    except (ValueError, TypeError, binascii.Error):
        raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid page_token: {token!r}") from None


class FakeDatabricks:
    """A fake workspace. Use as a context manager, or call :meth:`start`/:meth:`stop`.

    ``url`` is ``http://127.0.0.1:PORT`` once started; ``token`` the accepted
    bearer token (assign a new one to make the old token invalid).
    """

    def __init__(self, token: str = "dapi-fake-token-0123456789") -> None:
        self.token = token
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}
        self._keys: list[tuple[int, int]] = []  # sorted
        self._jobs: dict[int, dict[str, Any]] = {}
        self._next_run_id = 1_000
        self._next_job_id = 100
        self._armed: list[_Armed] = []
        self._random: _RandomFailures | None = None
        self._stopping = threading.Event()
        self._release_generation = 0
        self.requests: deque[RecordedRequest] = deque(maxlen=100_000)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeDatabricks:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeDatabricks:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ jobs/runs

    def add_job(self, name: str, job_id: int | None = None) -> int:
        """Create a job (only its name matters to the sync). Returns its id."""
        with self._lock:
            if job_id is None:
                job_id = self._next_job_id
                self._next_job_id += 1
            self._jobs[job_id] = {
                "job_id": job_id,
                "creator_user_name": "someone@example.com",
                "created_time": now_ms(),
                "settings": {"name": name, "max_concurrent_runs": 1},
            }
            return job_id

    def rename_job(self, job_id: int, name: str) -> None:
        with self._lock:
            self._jobs[job_id]["settings"]["name"] = name

    def delete_job(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def _new_run_id(self) -> int:
        run_id = self._next_run_id
        self._next_run_id += 1
        return run_id

    def _index(self, run: dict[str, Any], start_ms: int | None = None) -> None:
        run_id = run["run_id"]
        start = run.get("start_time") if start_ms is None else start_ms
        start = start if isinstance(start, int) else 0
        old = self._entries.get(run_id)
        if old is not None:
            i = bisect.bisect_left(self._keys, old.key)
            del self._keys[i]
        state = run.get("state")
        if not isinstance(state, dict):
            state = {}
        job_id = run.get("job_id")
        entry = _Entry(
            key=(-start, -run_id),
            run=run,
            job_id=job_id if isinstance(job_id, int) else None,
            life_cycle_state=state.get("life_cycle_state"),
            run_type=run.get("run_type"),
        )
        self._entries[run_id] = entry
        bisect.insort(self._keys, entry.key)

    def _base_run(
        self,
        run_id: int,
        job_id: int | None,
        run_name: str | None,
        start: int,
        attempt_number: int,
        original_attempt_run_id: int | None,
        trigger: str,
        run_type: str,
    ) -> dict[str, Any]:
        if run_name is None:
            job = self._jobs.get(job_id) if job_id is not None else None
            run_name = job["settings"]["name"] if job else "Untitled"
        run: dict[str, Any] = {
            "run_id": run_id,
            "number_in_job": run_id,
            "run_name": run_name,
            "original_attempt_run_id": original_attempt_run_id or run_id,
            "attempt_number": attempt_number,
            "creator_user_name": "someone@example.com",
            "start_time": start,
            "end_time": 0,
            "setup_duration": 0,
            "execution_duration": 0,
            "cleanup_duration": 0,
            "run_duration": 0,
            "queue_duration": 0,
            "trigger": trigger,
            "run_type": run_type,
            "format": "MULTI_TASK",
            "run_page_url": f"{self.url if self._server else 'http://fake'}/?o=0#job/"
            f"{job_id or 0}/run/{run_id}",
            "tasks": [{"task_key": "main", "run_id": run_id + 1_000_000_000}],
            "job_parameters": [],
            "repair_history": [],
        }
        if job_id is not None:
            run["job_id"] = job_id
        return run

    def start_run(
        self,
        job_id: int | None = None,
        *,
        run_name: str | None = None,
        start_time: int | None = None,
        life_cycle_state: str = "RUNNING",
        attempt_number: int = 0,
        original_attempt_run_id: int | None = None,
        trigger: str = "ONE_TIME",
        run_type: str = "JOB_RUN",
        run_id: int | None = None,
        with_status: bool = True,
    ) -> int:
        """Create an active run (QUEUED, PENDING, RUNNING...). Returns its run_id."""
        with self._lock:
            run_id = self._new_run_id() if run_id is None else run_id
            run = self._base_run(
                run_id,
                job_id,
                run_name,
                now_ms() if start_time is None else start_time,
                attempt_number,
                original_attempt_run_id,
                trigger,
                run_type,
            )
            run["state"] = {
                "life_cycle_state": life_cycle_state,
                "state_message": "",
                "user_cancelled_or_timedout": False,
            }
            if life_cycle_state == "QUEUED":
                run["state"]["queue_reason"] = "Queued due to reaching maximum concurrent runs"
            if with_status:
                run["status"] = {"state": _STATUS_STATE.get(life_cycle_state, life_cycle_state)}
                if life_cycle_state == "QUEUED":
                    run["status"]["queue_details"] = {
                        "code": "MAX_CONCURRENT_RUNS_REACHED",
                        "message": "Queued due to reaching maximum concurrent runs",
                    }
            self._index(run)
            return run_id

    def finish_run(
        self,
        run_id: int,
        result_state: str = "SUCCESS",
        *,
        end_time: int | None = None,
        message: str = "",
        life_cycle_state: str = "TERMINATED",
        termination_code: str | None = None,
        termination_type: str | None = None,
    ) -> None:
        """End a run: sets state, status (if the run has one), end_time and durations."""
        with self._lock:
            run = self._entries[run_id].run
            end = now_ms() if end_time is None else end_time
            end = max(end, run["start_time"] + 1)
            run["end_time"] = end
            run["run_duration"] = end - run["start_time"]
            run["execution_duration"] = run["run_duration"]
            run["state"] = {
                "life_cycle_state": life_cycle_state,
                "result_state": result_state,
                "state_message": message,
                "user_cancelled_or_timedout": result_state in ("CANCELED", "TIMEDOUT"),
            }
            if "status" in run:
                code, kind = _TERMINATION.get(result_state, ("INTERNAL_ERROR", "INTERNAL_ERROR"))
                run["status"] = {
                    "state": "TERMINATED",
                    "termination_details": {
                        "code": termination_code or code,
                        "type": termination_type or kind,
                        "message": message,
                    },
                }
            self._record_history_end(run)
            self._index(run)

    def set_state(
        self,
        run_id: int,
        *,
        state: Mapping[str, Any] | None = None,
        status: Mapping[str, Any] | None = None,
        end_time: int | None = None,
    ) -> None:
        """Replace a run's raw ``state`` and/or ``status`` blocks (None: remove it)."""
        with self._lock:
            run = self._entries[run_id].run
            for key, value in (("state", state), ("status", status)):
                if value is None:
                    run.pop(key, None)
                else:
                    run[key] = copy.deepcopy(dict(value))
            if end_time is not None:
                run["end_time"] = end_time
            self._index(run)

    def repair_run(self, run_id: int, *, repair_time: int | None = None) -> int:
        """Re-run a finished run under the same run_id: back to RUNNING, end_time 0,
        repair_history grows. Returns the repair id."""
        with self._lock:
            run = self._entries[run_id].run
            history: list[dict[str, Any]] = run.setdefault("repair_history", [])
            if not history:
                history.append(
                    {
                        "type": "ORIGINAL",
                        "start_time": run["start_time"],
                        "end_time": run.get("end_time", 0),
                        "state": copy.deepcopy(run.get("state", {})),
                        "status": copy.deepcopy(run.get("status", {})),
                        "task_run_ids": [run_id + 1_000_000_000],
                    }
                )
            repair_id = self._new_run_id() + 5_000_000
            history.append(
                {
                    "type": "REPAIR",
                    "id": repair_id,
                    "start_time": now_ms() if repair_time is None else repair_time,
                    "end_time": 0,
                    "state": {"life_cycle_state": "RUNNING", "state_message": ""},
                    "status": {"state": "RUNNING"},
                    "task_run_ids": [repair_id + 1],
                }
            )
            run["end_time"] = 0
            run["state"] = {
                "life_cycle_state": "RUNNING",
                "state_message": "",
                "user_cancelled_or_timedout": False,
            }
            if "status" in run:
                run["status"] = {"state": "RUNNING"}
            self._index(run)
            return repair_id

    def _record_history_end(self, run: dict[str, Any]) -> None:
        history = run.get("repair_history") or []
        if history and history[-1].get("type") == "REPAIR":
            history[-1]["end_time"] = run["end_time"]
            history[-1]["state"] = copy.deepcopy(run["state"])
            if "status" in run:
                history[-1]["status"] = copy.deepcopy(run["status"])

    def remove_run(self, run_id: int) -> None:
        """Make a run disappear (older than 60 days, or deleted with its job)."""
        with self._lock:
            entry = self._entries.pop(run_id)
            del self._keys[bisect.bisect_left(self._keys, entry.key)]

    def put_run(self, run: Mapping[str, Any], *, start_time: int | None = None) -> None:
        """Store an arbitrary run dict as is (unknown enums, malformed fields...).

        It needs an integer ``run_id``; ``start_time`` orders it when the dict's
        own ``start_time`` is missing or not an integer.
        """
        with self._lock:
            self._index(copy.deepcopy(dict(run)), start_time)

    def add_finished_runs(
        self,
        count: int,
        *,
        job_id: int | None = None,
        newest_start: int | None = None,
        step_ms: int = 1_000,
        result_state: str = "SUCCESS",
        duration_ms: int = 500,
    ) -> list[int]:
        """Bulk-add ``count`` finished runs, one every ``step_ms`` back from
        ``newest_start`` (default: now). Returns their run ids, newest first."""
        newest = now_ms() if newest_start is None else newest_start
        ids: list[int] = []
        with self._lock:
            code, kind = _TERMINATION[result_state]
            for i in range(count):
                run_id = self._new_run_id()
                start = newest - i * step_ms
                run = self._base_run(run_id, job_id, None, start, 0, None, "PERIODIC", "JOB_RUN")
                run["end_time"] = start + duration_ms
                run["run_duration"] = duration_ms
                run["state"] = {
                    "life_cycle_state": "TERMINATED",
                    "result_state": result_state,
                    "state_message": "",
                    "user_cancelled_or_timedout": False,
                }
                run["status"] = {
                    "state": "TERMINATED",
                    "termination_details": {"code": code, "type": kind, "message": ""},
                }
                entry = _Entry(
                    key=(-start, -run_id),
                    run=run,
                    job_id=job_id,
                    life_cycle_state="TERMINATED",
                    run_type="JOB_RUN",
                )
                self._entries[run_id] = entry
                ids.append(run_id)
            self._keys = sorted(e.key for e in self._entries.values())
        return ids

    def run(self, run_id: int) -> dict[str, Any]:
        """A copy of the stored run."""
        with self._lock:
            return copy.deepcopy(self._entries[run_id].run)

    def run_ids(self) -> list[int]:
        """All run ids, newest start first."""
        with self._lock:
            return [-k[1] for k in self._keys]

    # ----------------------------------------------------------------- faults

    def inject(
        self, fault: Fault, *, times: int | None = 1, path: str = "/api/", skip: int = 0
    ) -> None:
        """Answer ``times`` requests whose path starts with ``path`` with ``fault``
        (``times=None``: until :meth:`clear_faults`), after letting ``skip`` such
        requests through. Faults are used in the order they were injected."""
        with self._lock:
            self._armed.append(_Armed(fault, times, path, skip))

    def fail_randomly(
        self,
        one_in: int,
        *,
        seed: int,
        faults: list[Fault] | None = None,
        path: str = "/api/",
    ) -> None:
        """Fail one request in ``one_in`` at random (reproducible with ``seed``)
        with a fault picked from ``faults`` (default: 503, 429 with Retry-After 0,
        500, malformed JSON, disconnect)."""
        with self._lock:
            self._random = _RandomFailures(
                one_in=one_in,
                rng=random.Random(seed),
                faults=faults
                or [
                    Fault.unavailable(retry_after=0),
                    Fault.rate_limited(retry_after=0),
                    Fault.internal_error(),
                    Fault.malformed_json(),
                    Fault.disconnect(),
                ],
                path=path,
            )

    def clear_faults(self) -> None:
        """Disarm every fault and cut short the slow responses in progress."""
        with self._lock:
            self._armed.clear()
            self._random = None
            self._release_generation += 1

    def _sleep(self, seconds: float) -> None:
        """Sleep for a slow fault; ends early on stop() or clear_faults()."""
        generation = self._release_generation
        deadline = time.monotonic() + seconds
        while generation == self._release_generation and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, 0.02))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for armed in self._armed:
                if path.startswith(armed.path):
                    if armed.skip > 0:
                        armed.skip -= 1
                        return None
                    if armed.remaining is not None:
                        armed.remaining -= 1
                        if armed.remaining <= 0:
                            self._armed.remove(armed)
                    return armed.fault
            rnd = self._random
            if rnd is not None and path.startswith(rnd.path) and rnd.rng.randrange(rnd.one_in) == 0:
                return rnd.rng.choice(rnd.faults)
        return None

    def count(self, path: str, **query: str) -> int:
        """How many recorded requests hit ``path`` with (at least) these query values."""
        return sum(
            1
            for r in list(self.requests)
            if r.path == path and all(r.query.get(k) == v for k, v in query.items())
        )

    # --------------------------------------------------------------- handlers

    def _list_runs(self, query: Mapping[str, str]) -> bytes:
        raw_limit = _int(query, "limit")
        limit = DEFAULT_LIMIT if raw_limit is None else raw_limit
        if limit == 0:
            limit = MAX_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"The limit must be between 0 and {MAX_LIMIT}, got {limit}",
            )
        active_only = _bool(query, "active_only")
        completed_only = _bool(query, "completed_only")
        if active_only and completed_only:
            raise _ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "active_only and completed_only cannot both be true",
            )
        expand_tasks = _bool(query, "expand_tasks")
        start_from = _int(query, "start_time_from")
        start_to = _int(query, "start_time_to")
        job_id = _int(query, "job_id")
        run_type = query.get("run_type")
        token = query.get("page_token")
        with self._lock:
            pos = 0
            if start_to is not None:
                pos = bisect.bisect_left(self._keys, (-start_to, -(2**62)))
            if token:
                pos = max(pos, bisect.bisect_right(self._keys, _decode_token(token)))
            picked: list[_Entry] = []
            for key in self._keys[pos:]:
                if start_from is not None and -key[0] < start_from:
                    break
                entry = self._entries[-key[1]]
                if job_id is not None and entry.job_id != job_id:
                    continue
                if run_type is not None and entry.run_type != run_type:
                    continue
                if active_only and entry.life_cycle_state not in ACTIVE_STATES:
                    continue
                if completed_only and entry.life_cycle_state not in COMPLETED_STATES:
                    continue
                picked.append(entry)
                if len(picked) > limit:
                    break
            has_more = len(picked) > limit
            page = picked[:limit]
            runs = []
            for entry in page:
                if expand_tasks or "tasks" not in entry.run:
                    runs.append(entry.run)
                else:
                    runs.append({k: v for k, v in entry.run.items() if k != "tasks"})
            body: dict[str, Any] = {"has_more": has_more}
            if runs:
                body["runs"] = runs
            if has_more:
                body["next_page_token"] = _encode_token(page[-1].key)
            # Encode under the lock: the Python API may change these dicts.
            return json.dumps(body).encode()

    def _get_run(self, query: Mapping[str, str]) -> bytes:
        run_id = _int(query, "run_id")
        if run_id is None:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "Missing required field: run_id")
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")
            return json.dumps(entry.run).encode()

    def _get_job(self, query: Mapping[str, str]) -> bytes:
        job_id = _int(query, "job_id")
        if job_id is None:
            raise _ApiError(400, "INVALID_PARAMETER_VALUE", "Missing required field: job_id")
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _ApiError(400, "INVALID_PARAMETER_VALUE", f"Job {job_id} does not exist.")
            return json.dumps(job).encode()

    def _route(self, path: str) -> Callable[[Mapping[str, str]], bytes] | None:
        for version in ("2.2", "2.1"):
            if path == f"/api/{version}/jobs/runs/list":
                return self._list_runs
            if path == f"/api/{version}/jobs/runs/get":
                return self._get_run
            if path == f"/api/{version}/jobs/get":
                return self._get_job
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDatabricks
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients
    # wait ~40 ms for a delayed ACK on every response.
    disable_nagle_algorithm = True
    server_version = "FakeDatabricks/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, error_code: object, message: str) -> None:
        self._send(status, json.dumps({"error_code": error_code, "message": message}).encode())

    def _record(self, path: str, query: dict[str, str], status: int, fault: str | None) -> None:
        self.fake.requests.append(RecordedRequest(self.command, path, query, status, fault))

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        fault = self.fake._take_fault(path)
        if fault is not None:
            if fault.delay:
                self.fake._sleep(fault.delay)
            if fault.kind == "disconnect":
                self._record(path, query, 0, fault.kind)
                self.close_connection = True
                return
            if fault.status:
                self._record(path, query, fault.status, fault.kind)
                self._send(fault.status, fault.body, fault.content_type, fault.headers)
                return
        fault_kind = fault.kind if fault is not None else None
        if path == "/.well-known/databricks-config":
            self._record(path, query, 404, fault_kind)
            self._error(404, "NOT_FOUND", "Not Found")
            return
        handler = self.fake._route(path)
        if handler is None:
            self._record(path, query, 404, fault_kind)
            self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for 'GET {path}'")
            return
        auth = self.headers.get("Authorization")
        if not auth:
            self._record(path, query, 401, fault_kind)
            self._error(
                401,
                "UNAUTHENTICATED",
                "Credential was not sent or was of an unsupported type for this API.",
            )
            return
        if auth != f"Bearer {self.fake.token}":
            self._record(path, query, 403, fault_kind)
            self._error(403, 403, "Invalid access token.")
            return
        try:
            body = handler(query)
        except _ApiError as err:
            self._record(path, query, err.status, fault_kind)
            self._error(err.status, err.error_code, err.message)
            return
        self._record(path, query, 200, fault_kind)
        self._send(200, body)

    def _not_allowed(self) -> None:
        self._error(405, "METHOD_NOT_ALLOWED", f"{self.command} is not supported here")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


def iter_pages(fake: FakeDatabricks, **query: str) -> Iterator[dict[str, Any]]:
    """Convenience for tests: every page of runs/list as the server would answer."""
    token: str | None = None
    while True:
        q = dict(query)
        if token:
            q["page_token"] = token
        body = json.loads(fake._list_runs(q))
        yield body
        token = body.get("next_page_token")
        if not token:
            return

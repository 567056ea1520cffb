"""Table-driven tests of the Databricks run -> job mapping (issue 4's status table)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from queue_service.databricks.mapping import (
    RUN_NAMESPACE,
    MalformedRun,
    RunState,
    canonical_host,
    map_run,
    map_status,
    ms_to_timestamp,
    run_job_id,
)
from queue_service.statuses import Source, Status
from queue_service.timeutil import format_ts

HOST = "https://adb-123.4.azuredatabricks.net"
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
END = START + 90_500


def legacy(life_cycle_state: str, result_state: str | None = None) -> RunState:
    """Only the deprecated ``state`` block."""
    return RunState(life_cycle_state=life_cycle_state, result_state=result_state)


def v2(
    state: str,
    code: str | None = None,
    kind: str | None = None,
    *,
    life_cycle_state: str | None = None,
    result_state: str | None = None,
) -> RunState:
    """The ``status`` block (plus, optionally, the deprecated one)."""
    return RunState(
        status_state=state,
        termination_code=code,
        termination_type=kind,
        life_cycle_state=life_cycle_state,
        result_state=result_state,
    )


# Every row of the table, each spelled in every vocabulary it occurs in.
STATUS_TABLE: list[tuple[str, RunState, Status | None]] = [
    # QUEUED, BLOCKED, WAITING, WAITING_FOR_RETRY -> queued
    ("status QUEUED", v2("QUEUED"), Status.QUEUED),
    ("status BLOCKED", v2("BLOCKED"), Status.QUEUED),
    ("status WAITING", v2("WAITING"), Status.QUEUED),
    ("legacy QUEUED", legacy("QUEUED"), Status.QUEUED),
    ("legacy BLOCKED", legacy("BLOCKED"), Status.QUEUED),
    ("legacy WAITING_FOR_RETRY", legacy("WAITING_FOR_RETRY"), Status.QUEUED),
    # PENDING, RUNNING, TERMINATING -> running
    ("status PENDING", v2("PENDING"), Status.RUNNING),
    ("status RUNNING", v2("RUNNING"), Status.RUNNING),
    ("status TERMINATING", v2("TERMINATING"), Status.RUNNING),
    ("legacy PENDING", legacy("PENDING"), Status.RUNNING),
    ("legacy RUNNING", legacy("RUNNING"), Status.RUNNING),
    ("legacy TERMINATING", legacy("TERMINATING"), Status.RUNNING),
    # TERMINATED + SUCCESS or SUCCESS_WITH_FAILURES -> succeeded
    ("legacy SUCCESS", legacy("TERMINATED", "SUCCESS"), Status.SUCCEEDED),
    (
        "legacy SUCCESS_WITH_FAILURES",
        legacy("TERMINATED", "SUCCESS_WITH_FAILURES"),
        Status.SUCCEEDED,
    ),
    ("code SUCCESS", v2("TERMINATED", "SUCCESS", "SUCCESS"), Status.SUCCEEDED),
    (
        "code SUCCESS_WITH_FAILURES",
        v2("TERMINATED", "SUCCESS_WITH_FAILURES", "SUCCESS"),
        Status.SUCCEEDED,
    ),
    # TERMINATED + FAILED -> failed (and the failure termination codes)
    ("legacy FAILED", legacy("TERMINATED", "FAILED"), Status.FAILED),
    (
        "code RUN_EXECUTION_ERROR",
        v2("TERMINATED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
        Status.FAILED,
    ),
    ("code DRIVER_ERROR", v2("TERMINATED", "DRIVER_ERROR", "INTERNAL_ERROR"), Status.FAILED),
    ("code CLUSTER_ERROR", v2("TERMINATED", "CLUSTER_ERROR", "CLIENT_ERROR"), Status.FAILED),
    (
        "code LIBRARY_INSTALLATION_ERROR",
        v2("TERMINATED", "LIBRARY_INSTALLATION_ERROR", "CLIENT_ERROR"),
        Status.FAILED,
    ),
    ("code CLOUD_FAILURE", v2("TERMINATED", "CLOUD_FAILURE", "CLOUD_FAILURE"), Status.FAILED),
    # TERMINATED + TIMEDOUT -> timed_out (no TIMEOUT code exists: the code says CANCELED)
    ("legacy TIMEDOUT", legacy("TERMINATED", "TIMEDOUT"), Status.TIMED_OUT),
    (
        "status CANCELED code + legacy TIMEDOUT",
        v2(
            "TERMINATED",
            "CANCELED",
            "SUCCESS",
            life_cycle_state="TERMINATED",
            result_state="TIMEDOUT",
        ),
        Status.TIMED_OUT,
    ),
    # TERMINATED + CANCELED, USER_CANCELED; SKIPPED; EXCLUDED, UPSTREAM_CANCELED,
    # UPSTREAM_FAILED, DISABLED, MAXIMUM_CONCURRENT_RUNS_REACHED -> canceled
    ("legacy CANCELED", legacy("TERMINATED", "CANCELED"), Status.CANCELED),
    ("code CANCELED", v2("TERMINATED", "CANCELED", "SUCCESS"), Status.CANCELED),
    ("code USER_CANCELED", v2("TERMINATED", "USER_CANCELED", "SUCCESS"), Status.CANCELED),
    ("code SKIPPED", v2("TERMINATED", "SKIPPED", "SUCCESS"), Status.CANCELED),
    ("legacy life cycle SKIPPED", legacy("SKIPPED"), Status.CANCELED),
    ("legacy EXCLUDED", legacy("TERMINATED", "EXCLUDED"), Status.CANCELED),
    ("legacy UPSTREAM_CANCELED", legacy("TERMINATED", "UPSTREAM_CANCELED"), Status.CANCELED),
    ("legacy UPSTREAM_FAILED", legacy("TERMINATED", "UPSTREAM_FAILED"), Status.CANCELED),
    ("legacy DISABLED", legacy("TERMINATED", "DISABLED"), Status.CANCELED),
    ("code DISABLED", v2("TERMINATED", "DISABLED", "CLIENT_ERROR"), Status.CANCELED),
    (
        "legacy MAXIMUM_CONCURRENT_RUNS_REACHED",
        legacy("TERMINATED", "MAXIMUM_CONCURRENT_RUNS_REACHED"),
        Status.CANCELED,
    ),
    (
        "code MAX_CONCURRENT_RUNS_EXCEEDED",
        v2("TERMINATED", "MAX_CONCURRENT_RUNS_EXCEEDED", "CLIENT_ERROR"),
        Status.CANCELED,
    ),
    # INTERNAL_ERROR with termination type CLIENT_ERROR -> failed
    (
        "code INTERNAL_ERROR + CLIENT_ERROR",
        v2("TERMINATED", "INTERNAL_ERROR", "CLIENT_ERROR"),
        Status.FAILED,
    ),
    (
        "life cycle INTERNAL_ERROR + CLIENT_ERROR",
        RunState(
            life_cycle_state="INTERNAL_ERROR",
            result_state="FAILED",
            termination_type="CLIENT_ERROR",
        ),
        Status.FAILED,
    ),
    # INTERNAL_ERROR otherwise -> dead
    (
        "code INTERNAL_ERROR + INTERNAL_ERROR",
        v2("TERMINATED", "INTERNAL_ERROR", "INTERNAL_ERROR"),
        Status.DEAD,
    ),
    (
        "code INTERNAL_ERROR + CLOUD_FAILURE",
        v2("TERMINATED", "INTERNAL_ERROR", "CLOUD_FAILURE"),
        Status.DEAD,
    ),
    ("legacy life cycle INTERNAL_ERROR", legacy("INTERNAL_ERROR", "FAILED"), Status.DEAD),
    ("legacy life cycle INTERNAL_ERROR, no result", legacy("INTERNAL_ERROR"), Status.DEAD),
    # anything unknown -> None (keep the previous status)
    ("unknown status and legacy", v2("HIBERNATING", life_cycle_state="HIBERNATING"), None),
    ("unknown legacy life cycle", legacy("HIBERNATING"), None),
    ("TERMINATED, unknown code, no result", v2("TERMINATED", "NEW_CODE", "SUCCESS"), None),
    ("TERMINATED, unknown result state", legacy("TERMINATED", "PARTIALLY_DONE"), None),
    ("TERMINATED, no result at all", legacy("TERMINATED"), None),
    ("no state at all", RunState(), None),
    # precedence: status decides; legacy only when status is absent or unknown
    (
        "status wins over legacy",
        v2("RUNNING", life_cycle_state="TERMINATED", result_state="FAILED"),
        Status.RUNNING,
    ),
    (
        "code wins over legacy result",
        v2(
            "TERMINATED",
            "USER_CANCELED",
            "SUCCESS",
            life_cycle_state="TERMINATED",
            result_state="FAILED",
        ),
        Status.CANCELED,
    ),
    (
        "unknown status.state falls back to legacy",
        v2("HIBERNATING", life_cycle_state="RUNNING"),
        Status.RUNNING,
    ),
    (
        "unknown code falls back to legacy result",
        v2(
            "TERMINATED",
            "NEW_CODE",
            "SUCCESS",
            life_cycle_state="TERMINATED",
            result_state="FAILED",
        ),
        Status.FAILED,
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [(r, e) for _, r, e in STATUS_TABLE], ids=[n for n, _, _ in STATUS_TABLE]
)
def test_status_table(raw: RunState, expected: Status | None) -> None:
    assert map_status(raw) is expected


def make_run(**overrides: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "job_id": 77,
        "run_id": 4242,
        "run_name": "nightly-etl",
        "original_attempt_run_id": 4242,
        "attempt_number": 0,
        "start_time": START,
        "end_time": END,
        "run_duration": 90_500,
        "trigger": "PERIODIC",
        "run_type": "JOB_RUN",
        "run_page_url": f"{HOST}/?o=1#job/77/run/4242",
        "state": {
            "life_cycle_state": "TERMINATED",
            "result_state": "SUCCESS",
            "state_message": "",
            "user_cancelled_or_timedout": False,
        },
        "status": {
            "state": "TERMINATED",
            "termination_details": {"code": "SUCCESS", "type": "SUCCESS", "message": ""},
        },
    }
    run.update(overrides)
    return run


def status_block(
    state: str, code: str | None = None, kind: str | None = None, message: str = ""
) -> dict[str, Any]:
    block: dict[str, Any] = {"state": state}
    if code is not None:
        block["termination_details"] = {"code": code, "type": kind, "message": message}
    return block


# The same table through the full run mapping: status, status_if_new and raw strings.
RUN_TABLE: list[tuple[str, dict[str, Any], Status | None, Status]] = [
    (
        "queued",
        make_run(end_time=0, state={"life_cycle_state": "QUEUED"}, status=status_block("QUEUED")),
        Status.QUEUED,
        Status.QUEUED,
    ),
    (
        "running",
        make_run(end_time=0, state={"life_cycle_state": "RUNNING"}, status=status_block("RUNNING")),
        Status.RUNNING,
        Status.RUNNING,
    ),
    ("succeeded", make_run(), Status.SUCCEEDED, Status.SUCCEEDED),
    (
        "failed",
        make_run(
            state={
                "life_cycle_state": "TERMINATED",
                "result_state": "FAILED",
                "state_message": "boom",
            },
            status=status_block(
                "TERMINATED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR", "Task main failed"
            ),
        ),
        Status.FAILED,
        Status.FAILED,
    ),
    (
        "timed out",
        make_run(
            state={
                "life_cycle_state": "TERMINATED",
                "result_state": "TIMEDOUT",
                "state_message": "timeout",
            },
            status=status_block("TERMINATED", "CANCELED", "SUCCESS", "Run timed out"),
        ),
        Status.TIMED_OUT,
        Status.TIMED_OUT,
    ),
    (
        "canceled",
        make_run(
            state={"life_cycle_state": "TERMINATED", "result_state": "CANCELED"},
            status=status_block("TERMINATED", "USER_CANCELED", "SUCCESS", "Canceled by alice"),
        ),
        Status.CANCELED,
        Status.CANCELED,
    ),
    (
        "internal error, client",
        make_run(
            state={"life_cycle_state": "INTERNAL_ERROR", "result_state": "FAILED"},
            status=status_block(
                "TERMINATED", "INTERNAL_ERROR", "CLIENT_ERROR", "bad notebook path"
            ),
        ),
        Status.FAILED,
        Status.FAILED,
    ),
    (
        "internal error, platform",
        make_run(
            state={"life_cycle_state": "INTERNAL_ERROR", "state_message": "platform fault"},
            status=None,
        ),
        Status.DEAD,
        Status.DEAD,
    ),
    (
        "unknown, still going",
        make_run(
            end_time=0,
            state={"life_cycle_state": "TELEPORTING"},
            status=status_block("TELEPORTING"),
        ),
        None,
        Status.RUNNING,
    ),
    (
        "unknown, ended",
        make_run(
            state={"life_cycle_state": "TERMINATED", "result_state": "HALF_DONE"},
            status=status_block("TERMINATED", "BRAND_NEW_CODE", "SOMETHING"),
        ),
        None,
        Status.DEAD,
    ),
]


@pytest.mark.parametrize(
    ("run", "status", "if_new"),
    [(r, s, n) for _, r, s, n in RUN_TABLE],
    ids=[name for name, *_ in RUN_TABLE],
)
def test_run_table(run: dict[str, Any], status: Status | None, if_new: Status) -> None:
    if run.get("status") is None:
        run.pop("status", None)
    job = map_run(run, workspace="prod", host=HOST)
    assert job.status is status
    assert job.status_if_new is if_new
    # The raw strings always survive, known or not.
    assert job.result["life_cycle_state"] == run["state"].get("life_cycle_state")
    assert job.result["result_state"] == run["state"].get("result_state")
    status_raw = run.get("status") or {}
    details = status_raw.get("termination_details") or {}
    assert job.result["status_state"] == status_raw.get("state")
    assert job.result["termination_code"] == details.get("code")
    assert job.result["termination_type"] == details.get("type")


def test_every_field_of_a_finished_run() -> None:
    run = make_run(
        attempt_number=2,
        original_attempt_run_id=4000,
        state={
            "life_cycle_state": "TERMINATED",
            "result_state": "FAILED",
            "state_message": "legacy text",
        },
        status=status_block(
            "TERMINATED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR", "Task main failed: 1/0"
        ),
    )
    job = map_run(run, workspace="prod", host=HOST, job_name="Nightly ETL")
    assert job.job_id == str(uuid.uuid5(RUN_NAMESPACE, f"{HOST}#4242"))
    assert job.plugin == "databricks"
    assert job.source is Source.DATABRICKS
    assert job.command == "Nightly ETL"
    assert job.external_id == "4242"
    assert job.external_url == f"{HOST}/?o=1#job/77/run/4242"
    assert job.created_at == "2026-01-01T00:00:00.000000Z"
    assert job.started_at == "2026-01-01T00:00:00.000000Z"
    assert job.completed_at == "2026-01-01T00:01:30.500000Z"
    assert job.attempt == 3
    assert job.last_error == "Task main failed: 1/0"
    assert job.result == {
        "workspace": "prod",
        "job_id": 77,
        "run_id": 4242,
        "original_attempt_run_id": 4000,
        "life_cycle_state": "TERMINATED",
        "result_state": "FAILED",
        "status_state": "TERMINATED",
        "termination_code": "RUN_EXECUTION_ERROR",
        "termination_type": "CLIENT_ERROR",
        "trigger": "PERIODIC",
        "run_duration_ms": 90_500,
    }


def test_active_run_has_no_completion_and_no_error() -> None:
    run = make_run(
        end_time=0,
        run_duration=None,
        state={"life_cycle_state": "RUNNING", "state_message": "In run"},
        status=status_block("RUNNING"),
    )
    job = map_run(run, workspace="prod", host=HOST)
    assert job.status is Status.RUNNING
    assert job.completed_at is None
    assert job.last_error is None
    assert job.attempt == 1
    assert job.result["run_duration_ms"] is None


def test_legacy_message_is_used_without_status_block() -> None:
    run = make_run(
        state={
            "life_cycle_state": "TERMINATED",
            "result_state": "FAILED",
            "state_message": "it broke",
        }
    )
    del run["status"]
    job = map_run(run, workspace="prod", host=HOST)
    assert (job.status, job.last_error) == (Status.FAILED, "it broke")
    assert job.result["status_state"] is None


def test_success_has_no_last_error_even_with_a_message() -> None:
    run = make_run(status=status_block("TERMINATED", "SUCCESS", "SUCCESS", "all good"))
    assert map_run(run, workspace="prod", host=HOST).last_error is None


def test_empty_message_is_none() -> None:
    run = make_run(
        state={"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": ""},
        status=status_block("TERMINATED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR", ""),
    )
    job = map_run(run, workspace="prod", host=HOST)
    assert job.status is Status.FAILED
    assert job.last_error is None


@pytest.mark.parametrize(
    ("job_name", "run_name", "expected"),
    [
        ("Job name", "run name", "Job name"),
        (None, "run name", "run name"),
        (None, None, "Untitled"),
        ("", "", "Untitled"),
    ],
)
def test_command_falls_back_to_run_name(
    job_name: str | None, run_name: str | None, expected: str
) -> None:
    run = make_run(run_name=run_name)
    assert map_run(run, workspace="w", host=HOST, job_name=job_name).command == expected


def test_job_id_is_deterministic_and_host_scoped() -> None:
    a = map_run(make_run(), workspace="a", host=HOST).job_id
    assert a == map_run(make_run(), workspace="renamed", host=HOST).job_id
    assert uuid.UUID(a).version == 5
    # Spellings of the same host agree; another host or run differs.
    for spelling in (
        HOST + "/",
        HOST.upper(),
        "adb-123.4.azuredatabricks.net",
        HOST.replace(".net", ".net:443"),
    ):
        assert run_job_id(spelling, 4242) == a
    assert run_job_id("https://other.cloud.databricks.com", 4242) != a
    assert run_job_id(HOST, 4243) != a


def test_canonical_host() -> None:
    assert canonical_host("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert canonical_host("HTTP://LOCALHOST:80") == "http://localhost"
    assert canonical_host("example.com") == "https://example.com"


def test_ms_to_timestamp_is_exact_and_fixed_width() -> None:
    assert ms_to_timestamp(1) == "1970-01-01T00:00:00.001000Z"
    assert ms_to_timestamp(1_795_449_464_884) == "2026-11-23T15:57:44.884000Z"
    assert len({len(ms_to_timestamp(ms)) for ms in (1, 10**12, 2 * 10**12)}) == 1


def test_run_job_id_is_uuid5_of_the_canonical_host_and_run_id() -> None:
    rng = random.Random(4)
    run_ids = [0, 1, 9, 10, 2**63 - 1, *(rng.randrange(2**53) for _ in range(2_000))]
    for host in (HOST, "http://127.0.0.1:8080/", "https://Other.cloud.databricks.com"):
        canonical = canonical_host(host)
        for run_id in run_ids:
            expected = str(uuid.uuid5(RUN_NAMESPACE, f"{canonical}#{run_id}"))
            assert run_job_id(host, run_id) == expected, (host, run_id)


def test_ms_to_timestamp_agrees_with_format_ts_up_to_year_9999() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    last = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
    rng = random.Random(7)
    for ms in [0, 999, 1_000, 951_782_400_000, last, *(rng.randrange(last) for _ in range(5_000))]:
        assert ms_to_timestamp(ms) == format_ts(epoch + timedelta(milliseconds=ms)), ms
    with pytest.raises(OverflowError):
        ms_to_timestamp(last + 1)


MALFORMED: list[tuple[str, Any, str]] = [
    ("not an object", ["run"], "JSON object"),
    ("no run_id", {"start_time": START}, "run_id is missing"),
    ("string run_id", make_run(run_id="4242"), "run_id is not an integer"),
    ("bool run_id", make_run(run_id=True), "run_id is not an integer"),
    (
        "no start_time",
        {k: v for k, v in make_run().items() if k != "start_time"},
        "start_time is missing",
    ),
    ("zero start_time", make_run(start_time=0), "start_time is 0"),
    ("float end_time", make_run(end_time=1.5), "end_time is not an integer"),
    ("negative attempt", make_run(attempt_number=-1), "attempt_number is negative"),
    ("state not an object", make_run(state="TERMINATED"), "state is not an object"),
    (
        "numeric life cycle",
        make_run(state={"life_cycle_state": 7}),
        "life_cycle_state is not a string",
    ),
    (
        "details not an object",
        make_run(status={"state": "TERMINATED", "termination_details": []}),
        "termination_details",
    ),
    ("url not a string", make_run(run_page_url=5), "run_page_url is not a string"),
    ("start_time out of range", make_run(start_time=10**18), "out of range"),
]


@pytest.mark.parametrize(
    ("run", "reason"), [(r, m) for _, r, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_runs_raise(run: Any, reason: str) -> None:
    with pytest.raises(MalformedRun, match=reason):
        map_run(run, workspace="w", host=HOST)


def test_unrelated_fields_are_not_checked() -> None:
    # Fields the mapping does not use may be anything.
    job = map_run(
        make_run(tasks="whatever", repair_history=None, creator_user_name=5),
        workspace="w",
        host=HOST,
    )
    assert job.status is Status.SUCCEEDED

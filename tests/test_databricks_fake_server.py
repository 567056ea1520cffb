"""The fake Databricks workspace speaks the Jobs API 2.2 wire format, faults included.

Checked twice: with a plain HTTP client (exact status codes, headers and bodies)
and with the real databricks-sdk, which is what the sync worker uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.databricks_server import FakeDatabricks, Fault, now_ms

LIST = "/api/2.2/jobs/runs/list"
GET_RUN = "/api/2.2/jobs/runs/get"
GET_JOB = "/api/2.2/jobs/get"


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    with FakeDatabricks() as server:
        yield server


@pytest.fixture
def http(fake: FakeDatabricks) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=fake.url, headers={"Authorization": f"Bearer {fake.token}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Keep the SDK from resolving anything from this machine's environment."""
    import os

    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))


def page(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get(LIST, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def all_pages(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    pages = []
    token = params.pop("page_token", None)
    while True:
        body = page(http, **params, **({"page_token": token} if token else {}))
        pages.append(body)
        token = body.get("next_page_token")
        if not token:
            return pages


def ids(pages: list[dict[str, Any]]) -> list[int]:
    return [r["run_id"] for p in pages for r in p.get("runs", [])]


# ------------------------------------------------------------------ runs/list


def test_pagination_newest_first_with_has_more_and_no_token_on_last_page(
    fake: FakeDatabricks, http: httpx.Client
) -> None:
    job = fake.add_job("nightly")
    created = fake.add_finished_runs(60, job_id=job)
    pages = all_pages(http, limit=25)
    assert [len(p["runs"]) for p in pages] == [25, 25, 10]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert "next_page_token" in pages[0] and "next_page_token" in pages[1]
    assert "next_page_token" not in pages[2]
    assert ids(pages) == created  # newest start first, each once
    starts = [r["start_time"] for p in pages for r in p["runs"]]
    assert starts == sorted(starts, reverse=True)


def test_limit_default_zero_and_bounds(fake: FakeDatabricks, http: httpx.Client) -> None:
    fake.add_finished_runs(30)
    assert len(page(http)["runs"]) == 20  # default
    assert len(page(http, limit=0)["runs"]) == 25  # 0 = the maximum
    assert len(page(http, limit=1)["runs"]) == 1
    assert len(page(http, limit=25)["runs"]) == 25
    for bad in (26, -1, 1000, "ten"):
        response = http.get(LIST, params={"limit": bad})
        assert response.status_code == 400
        body = response.json()
        assert set(body) == {"error_code", "message"}
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"


def test_runs_key_absent_when_empty(fake: FakeDatabricks, http: httpx.Client) -> None:
    assert page(http) == {"has_more": False}
    fake.add_finished_runs(3, newest_start=now_ms() - 10_000)
    assert page(http, start_time_from=now_ms()) == {"has_more": False}


def test_active_and_completed_filters(fake: FakeDatabricks, http: httpx.Client) -> None:
    job = fake.add_job("j")
    finished = fake.add_finished_runs(5, job_id=job, newest_start=now_ms() - 60_000)
    running = fake.start_run(job)
    queued = fake.start_run(job, life_cycle_state="QUEUED")
    terminating = fake.start_run(job, life_cycle_state="TERMINATING")
    skipped = fake.start_run(job)
    fake.finish_run(skipped, "EXCLUDED", life_cycle_state="SKIPPED")
    assert set(ids([page(http, active_only="true")])) == {running, queued, terminating}
    assert set(ids([page(http, completed_only="true")])) == {*finished, skipped}
    response = http.get(LIST, params={"active_only": "true", "completed_only": "true"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_start_time_window_is_inclusive_in_milliseconds(
    fake: FakeDatabricks, http: httpx.Client
) -> None:
    base = now_ms() - 100_000
    runs = fake.add_finished_runs(10, newest_start=base, step_ms=1_000)  # base, base-1000, ...
    window = ids([page(http, start_time_from=base - 3_000, start_time_to=base - 1_000)])
    assert window == runs[1:4]
    assert ids([page(http, start_time_from=base)]) == [runs[0]]
    assert ids([page(http, start_time_to=base - 9_000)]) == [runs[9]]


def test_job_id_filter(fake: FakeDatabricks, http: httpx.Client) -> None:
    a, b = fake.add_job("a"), fake.add_job("b")
    runs_a = fake.add_finished_runs(3, job_id=a)
    fake.add_finished_runs(4, job_id=b)
    assert ids([page(http, job_id=a)]) == runs_a


def test_tasks_only_with_expand_tasks(fake: FakeDatabricks, http: httpx.Client) -> None:
    fake.start_run(fake.add_job("j"))
    assert "tasks" not in page(http)["runs"][0]
    assert page(http, expand_tasks="true")["runs"][0]["tasks"]


def test_bad_page_token_is_400(http: httpx.Client) -> None:
    response = http.get(LIST, params={"page_token": "not-a-token!"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_ten_thousand_runs_page_completely(fake: FakeDatabricks, http: httpx.Client) -> None:
    created = fake.add_finished_runs(10_000, step_ms=10)
    fake.start_run(None, run_name="one more")  # an index update on a large workspace
    seen = ids(all_pages(http, limit=25))
    assert len(seen) == 10_001
    assert seen[1:] == created


def test_paging_is_stable_while_runs_are_added(fake: FakeDatabricks, http: httpx.Client) -> None:
    created = fake.add_finished_runs(30, newest_start=now_ms() - 60_000)
    first = page(http, limit=10)
    fake.start_run(None)  # newer than everything: must not shift the cursor
    rest = all_pages(http, limit=10, page_token=first["next_page_token"])
    assert ids([first]) + ids(rest) == created


# ------------------------------------------------------------ runs/get, jobs/get


def test_runs_get_and_jobs_get(fake: FakeDatabricks, http: httpx.Client) -> None:
    job = fake.add_job("Nightly ETL")
    run_id = fake.start_run(job)
    body = http.get(GET_RUN, params={"run_id": run_id}).json()
    assert body["run_id"] == run_id and body["job_id"] == job
    assert body["state"]["life_cycle_state"] == "RUNNING"
    assert body["status"]["state"] == "RUNNING"
    assert body["end_time"] == 0
    assert http.get(GET_JOB, params={"job_id": job}).json()["settings"]["name"] == "Nightly ETL"


def test_missing_run_and_job_answer_like_databricks(http: httpx.Client) -> None:
    response = http.get(GET_RUN, params={"run_id": 999})
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Run 999 does not exist.",
    }
    response = http.get(GET_JOB, params={"job_id": 5})
    assert response.status_code == 400
    assert response.json()["message"] == "Job 5 does not exist."


def test_well_known_and_unknown_paths_are_404(fake: FakeDatabricks) -> None:
    response = httpx.get(f"{fake.url}/.well-known/databricks-config")
    assert response.status_code == 404
    assert set(response.json()) == {"error_code", "message"}
    response = httpx.get(f"{fake.url}/api/2.0/clusters/list", headers={"Authorization": "x"})
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_bearer_token_is_checked(fake: FakeDatabricks) -> None:
    response = httpx.get(f"{fake.url}{LIST}")
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"
    response = httpx.get(f"{fake.url}{LIST}", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 403
    assert response.json() == {"error_code": 403, "message": "Invalid access token."}


def test_finish_repair_and_finish_again(fake: FakeDatabricks, http: httpx.Client) -> None:
    run_id = fake.start_run(fake.add_job("j"), start_time=now_ms() - 5_000)
    fake.finish_run(run_id, "FAILED", message="boom")
    run = http.get(GET_RUN, params={"run_id": run_id}).json()
    assert run["state"]["result_state"] == "FAILED"
    assert run["status"]["termination_details"]["code"] == "RUN_EXECUTION_ERROR"
    assert run["end_time"] > run["start_time"]
    start = run["start_time"]

    fake.repair_run(run_id)
    run = http.get(GET_RUN, params={"run_id": run_id}).json()
    assert run["run_id"] == run_id and run["start_time"] == start
    assert run["state"]["life_cycle_state"] == "RUNNING"
    assert "result_state" not in run["state"]
    assert run["end_time"] == 0
    assert [h["type"] for h in run["repair_history"]] == ["ORIGINAL", "REPAIR"]
    assert run_id in ids([page(http, active_only="true")])

    fake.finish_run(run_id, "SUCCESS")
    fake.repair_run(run_id)
    run = http.get(GET_RUN, params={"run_id": run_id}).json()
    assert [h["type"] for h in run["repair_history"]] == ["ORIGINAL", "REPAIR", "REPAIR"]
    assert run["repair_history"][1]["state"]["result_state"] == "SUCCESS"


def test_run_that_disappears(fake: FakeDatabricks, http: httpx.Client) -> None:
    run_id = fake.start_run(None)
    fake.remove_run(run_id)
    assert page(http) == {"has_more": False}
    assert http.get(GET_RUN, params={"run_id": run_id}).status_code == 400


# --------------------------------------------------------------------- faults


def test_fault_wire_forms(fake: FakeDatabricks, http: httpx.Client) -> None:
    fake.start_run(None)
    fake.inject(Fault.rate_limited(retry_after=7))
    response = http.get(LIST)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"

    fake.inject(Fault.unavailable())
    assert http.get(LIST).status_code == 503

    fake.inject(Fault.internal_error())
    assert http.get(LIST).status_code == 500

    fake.inject(Fault.unauthorized())
    response = http.get(LIST)
    assert response.status_code == 401 and response.json()["error_code"] == 401

    fake.inject(Fault.forbidden())
    response = http.get(LIST)
    assert response.status_code == 403 and response.json()["error_code"] == 403

    fake.inject(Fault.forbidden_html())
    response = http.get(LIST)
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "text/html"
    assert response.text.startswith("<html>")

    fake.inject(Fault.malformed_json())
    response = http.get(LIST)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)

    fake.inject(Fault.disconnect())
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(LIST)

    # One-shot faults are used up: the next request is normal again.
    assert page(http)["runs"]
    assert [r.fault for r in fake.requests if r.fault] == [
        "rate_limited",
        "unavailable",
        "internal_error",
        "unauthorized",
        "forbidden",
        "forbidden_html",
        "malformed_json",
        "disconnect",
    ]


def test_slow_response(fake: FakeDatabricks, http: httpx.Client) -> None:
    fake.inject(Fault.slow(0.3))
    started = time.monotonic()
    assert page(http) == {"has_more": False}
    assert time.monotonic() - started >= 0.3


def test_persistent_and_path_scoped_faults(fake: FakeDatabricks, http: httpx.Client) -> None:
    run_id = fake.start_run(None)
    fake.inject(Fault.unavailable(), times=None, path=GET_RUN)
    for _ in range(3):
        assert http.get(GET_RUN, params={"run_id": run_id}).status_code == 503
    assert page(http)["runs"]  # other paths unaffected
    fake.clear_faults()
    assert http.get(GET_RUN, params={"run_id": run_id}).status_code == 200


def test_random_failures_are_seeded(fake: FakeDatabricks, http: httpx.Client) -> None:
    def statuses() -> list[int]:
        fake.fail_randomly(4, seed=42, faults=[Fault.unavailable(), Fault.internal_error()])
        return [http.get(LIST).status_code for _ in range(200)]

    first = statuses()
    assert first == statuses()  # same seed, same failures
    failures = sum(1 for s in first if s != 200)
    assert 25 <= failures <= 80  # about one in four
    assert set(first) == {200, 500, 503}


# ------------------------------------------------------------ the real SDK


@pytest.mark.usefixtures("sdk_env")
def test_sdk_lists_every_page_and_reads_runs_and_jobs(fake: FakeDatabricks) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.jobs import RunLifeCycleState

    job = fake.add_job("Nightly ETL")
    created = fake.add_finished_runs(60, job_id=job, newest_start=now_ms() - 60_000)
    running = fake.start_run(job)
    w = WorkspaceClient(host=fake.url, token=fake.token)
    runs = list(w.jobs.list_runs(limit=25))
    assert [r.run_id for r in runs] == [running, *created]
    assert fake.count(LIST) == 3  # 61 runs in pages of 25
    assert runs[0].state is not None
    assert runs[0].state.life_cycle_state is RunLifeCycleState.RUNNING
    assert [r.run_id for r in w.jobs.list_runs(active_only=True)] == [running]
    assert w.jobs.get_run(running).run_id == running
    settings = w.jobs.get(job).settings
    assert settings is not None and settings.name == "Nightly ETL"
    assert fake.count("/.well-known/databricks-config") == 1


@pytest.mark.usefixtures("sdk_env")
def test_sdk_error_mapping(fake: FakeDatabricks) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config
    from databricks.sdk.errors import (
        InvalidParameterValue,
        PermissionDenied,
        ResourceDoesNotExist,
        Unauthenticated,
    )

    w = WorkspaceClient(config=Config(host=fake.url, token=fake.token, retry_timeout_seconds=2))
    with pytest.raises(ResourceDoesNotExist):
        w.jobs.get_run(12345)
    with pytest.raises(ResourceDoesNotExist):
        w.jobs.get(12345)
    with pytest.raises(InvalidParameterValue):
        w.api_client.do("GET", LIST, query={"limit": 26})
    fake.inject(Fault.unauthorized())
    with pytest.raises(Unauthenticated):
        list(w.jobs.list_runs())
    fake.inject(Fault.forbidden_html())
    with pytest.raises(PermissionDenied):
        list(w.jobs.list_runs())
    fake.token = "rotated"
    with pytest.raises(PermissionDenied, match="Invalid access token"):
        list(w.jobs.list_runs())


@pytest.mark.usefixtures("sdk_env")
def test_sdk_retries_429_and_503_itself(fake: FakeDatabricks) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    run_id = fake.start_run(None)
    w = WorkspaceClient(config=Config(host=fake.url, token=fake.token, retry_timeout_seconds=10))
    fake.inject(Fault.rate_limited(retry_after=0))
    fake.inject(Fault.unavailable(retry_after=0))
    assert [r.run_id for r in w.jobs.list_runs()] == [run_id]
    assert [r.status for r in fake.requests if r.path == LIST] == [429, 503, 200]


@pytest.mark.usefixtures("sdk_env")
def test_sdk_turns_unknown_enums_into_none_but_raw_json_keeps_them(fake: FakeDatabricks) -> None:
    from databricks.sdk import WorkspaceClient

    fake.put_run(
        {
            "run_id": 7,
            "start_time": now_ms(),
            "state": {"life_cycle_state": "HIBERNATING"},
            "status": {"state": "HIBERNATING"},
        }
    )
    w = WorkspaceClient(host=fake.url, token=fake.token)
    (run,) = list(w.jobs.list_runs())
    assert run.state is not None and run.state.life_cycle_state is None
    raw = w.api_client.do("GET", LIST, query={"limit": 25})
    assert isinstance(raw, dict)
    assert raw["runs"][0]["state"]["life_cycle_state"] == "HIBERNATING"

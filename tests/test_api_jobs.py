"""GET /healthz, GET /job/{id}, GET /jobs, in-process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from queue_service.statuses import STATUS_WORDS, Status
from queue_service.store import NewJob, SQLiteStore, StoreUnavailable
from tests.conftest import TokenFactory, assert_error, bearer

pytestmark = pytest.mark.anyio

STATUS_FIELDS = {
    "job_id",
    "plugin",
    "command",
    "status",
    "source",
    "attempt",
    "max_attempts",
    "created_at",
    "started_at",
    "completed_at",
    "external_url",
}
DETAIL_FIELDS = STATUS_FIELDS | {
    "payload",
    "result",
    "last_error",
    "submitted_by",
    "events",
    "logs",
    "attempts",
}
ITEM_FIELDS = {
    "job_id",
    "plugin",
    "command",
    "status",
    "source",
    "created_at",
    "started_at",
    "completed_at",
    "attempt",
    "external_url",
}


async def test_healthz_needs_no_token_and_counts_active_jobs(
    client: httpx.AsyncClient, store: SQLiteStore
) -> None:
    await store.enqueue(NewJob("p", "c"))
    done = (await store.enqueue(NewJob("p", "c"))).job_id
    await store.set_status(done, Status.RUNNING)
    await store.set_status(done, Status.SUCCEEDED)
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["queue_depth"] == 1
    assert isinstance(body["uptime_seconds"], float) and body["version"]
    assert body["writable"] is True


async def test_healthz_answers_503_while_the_database_does_not_and_200_after(
    client: httpx.AsyncClient, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real outage (a PostgreSQL server refusing connections) is driven in
    tests/test_storage_faults_postgresql.py; here the answer's shape."""
    real_depth = store.queue_depth
    outage = [StoreUnavailable("cannot reach PostgreSQL: the server is restarting")]

    async def depth() -> int:
        if outage:
            raise outage[0]
        return await real_depth()

    monkeypatch.setattr(store, "queue_depth", depth)
    response = await client.get("/healthz")
    body = assert_error(response, 503, "unavailable")
    assert body["error"] == "cannot reach PostgreSQL: the server is restarting"
    assert response.headers["retry-after"] == "1"
    outage.clear()
    assert (await client.get("/healthz")).status_code == 200


async def test_a_503_names_no_database_location_and_the_log_keeps_it(
    client: httpx.AsyncClient,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/healthz needs no token: what it says of an outage must not map the network."""
    detail = "cannot reach PostgreSQL (postgresql://db.internal:5433/queue): refused"
    failure = StoreUnavailable(detail, public="the database server cannot be reached")

    async def depth() -> int:
        raise failure

    monkeypatch.setattr(store, "queue_depth", depth)
    with caplog.at_level(logging.WARNING, logger="queue_service.api"):
        for _ in range(3):
            body = assert_error(await client.get("/healthz"), 503, "unavailable")
            assert body["error"] == "the database server cannot be reached"
    logged = [r.getMessage() for r in caplog.records if "db.internal" in r.getMessage()]
    assert logged == [f"answering 503: {detail}"], "logged once for the three answers"


async def test_empty_listing_shape(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/jobs?status=ok", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {"jobs": [], "total": 0, "next_cursor": None}


async def test_listing_items_and_paging(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    ids = [(await store.enqueue(NewJob("echo", "poll", {"i": i}))).job_id for i in range(5)]
    first = (await client.get("/jobs?limit=2", headers=admin_headers)).json()
    assert first["total"] == 5
    assert [j["job_id"] for j in first["jobs"]] == ids[::-1][:2]
    assert set(first["jobs"][0]) == ITEM_FIELDS
    assert first["jobs"][0]["started_at"] is None
    seen = [j["job_id"] for j in first["jobs"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (
            await client.get("/jobs", params={"limit": 2, "cursor": cursor}, headers=admin_headers)
        ).json()
        assert page["total"] == 5
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
    assert seen == ids[::-1]


async def test_status_aliases_and_lists(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    queued = (await store.enqueue(NewJob("p", "c"))).job_id
    ok = (await store.enqueue(NewJob("p", "c"))).job_id
    bad = (await store.enqueue(NewJob("p", "c"))).job_id
    for job_id, end in ((ok, Status.SUCCEEDED), (bad, Status.FAILED)):
        await store.set_status(job_id, Status.RUNNING)
        await store.set_status(job_id, end)

    async def ids(query: str) -> set[str]:
        body = (await client.get(f"/jobs?{query}", headers=admin_headers)).json()
        assert body["total"] == len(body["jobs"])
        return {j["job_id"] for j in body["jobs"]}

    assert await ids("status=pending") == {queued}
    assert await ids("status=ok") == {ok}
    assert await ids("status=error") == {bad}
    assert await ids("status=OK,%20error") == {ok, bad}
    assert await ids("status=queued,succeeded,failed") == {queued, ok, bad}
    assert await ids("source=local&plugin=p&command=c") == {queued, ok, bad}
    assert await ids("source=databricks") == set()


async def test_created_bounds(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    old = (await store.enqueue(NewJob("p", "c"))).job_id
    await asyncio.sleep(0.002)
    new = (await store.enqueue(NewJob("p", "c"))).job_id
    old_job = await store.get_job(old)
    assert old_job is not None
    body = (
        await client.get(
            "/jobs", params={"created_after": old_job.created_at}, headers=admin_headers
        )
    ).json()
    assert [j["job_id"] for j in body["jobs"]] == [new] and body["total"] == 1
    body = (
        await client.get(
            "/jobs", params={"created_before": "2000-01-01T00:00:00+02:00"}, headers=admin_headers
        )
    ).json()
    assert body == {"jobs": [], "total": 0, "next_cursor": None}


async def test_get_job_views_by_scope(
    client: httpx.AsyncClient, store: SQLiteStore, make_token: TokenFactory
) -> None:
    job_id = (
        await store.enqueue(NewJob("echo", "poll", {"secret": "payload"}, submitted_by="ops"))
    ).job_id
    status_only = await client.get(
        f"/job/{job_id}", headers=bearer(await make_token("jobs:status:ro"))
    )
    assert status_only.status_code == 200
    assert set(status_only.json()) == STATUS_FIELDS
    assert "payload" not in status_only.json()
    for scope in ("jobs:ro", "jobs:rw", "*"):
        full = await client.get(f"/job/{job_id}", headers=bearer(await make_token(scope)))
        assert full.status_code == 200, scope
        body = full.json()
        assert set(body) == DETAIL_FIELDS
        assert body["payload"] == {"secret": "payload"} and body["submitted_by"] == "ops"
        assert body["attempts"] == []


@pytest.mark.parametrize(
    "job_id",
    ["00000000-0000-0000-0000-000000000000", "nope", "%00", "x" * 300, "..%2F..%2Fetc"],
)
async def test_unknown_job_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], job_id: str
) -> None:
    response = await client.get(f"/job/{job_id}", headers=admin_headers)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("status=fail", "status"),
        ("status=", "status"),
        ("status=ok,", "status"),
        ("source=remote", "source"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-01-01", "created_before"),
        ("cursor=garbage", "cursor"),
        ("cursor=WyJ4IiwxXQ", "cursor"),  # valid base64 of ["x",1]: not a timestamp
        ("plugin=", "plugin"),
        ("plugin=a%00b", "plugin"),
        ("command=" + "x" * 201, "command"),
        ("limit=5&limit=6", "limit"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, admin_headers: dict[str, str], query: str, param: str
) -> None:
    response = await client.get(f"/jobs?{query}", headers=admin_headers)
    assert_error(response, 400, "invalid_parameter", param=param)


async def test_bad_status_lists_the_allowed_words(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/jobs?status=fail", headers=admin_headers)
    body = assert_error(
        response, 400, "invalid_parameter", param="status", allowed=list(STATUS_WORDS)
    )
    assert "'fail'" in body["error"]


async def test_unknown_parameter_is_named(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/jobs?stauts=ok", headers=admin_headers)
    body = assert_error(response, 400, "unknown_parameter", param="stauts")
    assert "status" in body["allowed"]
    response = await client.get("/job/x?verbose=1", headers=admin_headers)
    assert_error(response, 400, "unknown_parameter", param="verbose")


async def test_cursor_paging_survives_concurrent_inserts(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    original = [(await store.enqueue(NewJob("p", "c"))).job_id for _ in range(30)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/jobs", params=params, headers=admin_headers)).json()
        seen += [j["job_id"] for j in page["jobs"]]
        # Writers keep adding jobs between pages; they are newer than the cursor.
        await store.enqueue_many([NewJob("p", "c") for _ in range(3)])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)), "a job was repeated"
    assert seen == original[::-1], "a job was skipped or reordered"


# -- regressions found by fuzzing (tests/test_fuzz_openapi.py) and hostile input --------------
# The OpenAPI document must describe exactly what the server accepts: anything its schema
# allows is served (positive_data_acceptance), anything it forbids is a 400
# (negative_data_rejection), and nothing is a 500.


@pytest.mark.parametrize(
    "cursor",
    ["00000000000000000000-1", "99999999999999999999-999999999999999999", "20261123154640123456-7"],
)
async def test_any_cursor_the_schema_allows_is_served(
    client: httpx.AsyncClient, admin_headers: dict[str, str], cursor: str
) -> None:
    # Before: the schema allowed any 1-200 url-safe characters, the server refused most of them.
    response = await client.get("/jobs", params={"cursor": cursor}, headers=admin_headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "cursor",
    [
        "0",
        "WyIyMDI2LTExLTIzVDE1OjU1OjM5LjI1NTEyNloiLDNd",  # the old base64 form
        "00000000000000000000-0",
        "00000000000000000000-1\n",
        "0000000000000000000-1",
        "00000000000000000000-1234567890123456789",
    ],
)
async def test_a_cursor_the_schema_forbids_is_a_400(
    client: httpx.AsyncClient, admin_headers: dict[str, str], cursor: str
) -> None:
    response = await client.get("/jobs", params={"cursor": cursor}, headers=admin_headers)
    assert_error(response, 400, "invalid_parameter", param="cursor")


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: was a 500 (OverflowError)
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC: was a 500
        "0000-01-01T00:00:00Z",  # year 0 is RFC 3339; was a 400
        "2016-12-31T23:59:60Z",  # a leap second; was a 400
        "2016-12-31T22:59:60-01:00",
        "2026-11-23t15:46:40.123456789z",
    ],
)
async def test_every_rfc3339_time_the_schema_allows_is_served(
    client: httpx.AsyncClient, admin_headers: dict[str, str], moment: str
) -> None:
    for name in ("created_after", "created_before"):
        response = await client.get("/jobs", params={name: moment}, headers=admin_headers)
        assert response.status_code == 200, (name, moment, response.text)


@pytest.mark.parametrize(
    "moment",
    [
        "2026-11-23 15:46:40Z",  # a space is not RFC 3339 date-time; was accepted
        "2026-11-23T15:46:40Z\n",  # Python's `$` matched before a trailing newline
        "2026-11-23T12:30:60Z",  # a leap second only exists at 23:59:60 UTC
        "2026-02-29T00:00:00Z",
        "2026-11-23T15:46:40.1234567891Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T15:46:40+24:00",
        "\uff12\uff10\uff12\uff16-11-23T15:46:40Z",  # FULLWIDTH digits
    ],
)
async def test_a_time_the_schema_forbids_is_a_400(
    client: httpx.AsyncClient, admin_headers: dict[str, str], moment: str
) -> None:
    response = await client.get("/jobs", params={"created_after": moment}, headers=admin_headers)
    assert_error(response, 400, "invalid_parameter", param="created_after")


async def test_times_before_year_1000_order_correctly(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    # strftime("%Y") wrote year 999 as "999-…", which sorts after "2026-…": every job
    # looked older than year 999.
    await store.enqueue(NewJob("p", "c"))
    after = await client.get(
        "/jobs", params={"created_after": "0999-01-01T00:00:00Z"}, headers=admin_headers
    )
    before = await client.get(
        "/jobs", params={"created_before": "0999-01-01T00:00:00Z"}, headers=admin_headers
    )
    assert after.json()["total"] == 1 and before.json()["total"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("plugin", "echo\n"),
        ("command", "poll\n"),
        ("limit", "5\n"),
        ("status", "ok\n"),
        ("status", "ok\t"),
        ("status", "o\u212a"),  # KELVIN SIGN lower-cases to "k"
        ("status", "ok\u00a0"),  # a no-break space is stripped by str.strip()
        ("source", "databric\u212as"),
        ("source", "local\u2003"),
    ],
)
async def test_values_python_would_bend_into_valid_ones_are_400(
    client: httpx.AsyncClient, admin_headers: dict[str, str], name: str, value: str
) -> None:
    response = await client.get("/jobs", params={name: value}, headers=admin_headers)
    assert_error(response, 400, "invalid_parameter", param=name)


async def test_limit_takes_leading_zeros_of_any_length(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for text, ok in (("0000000000050", True), ("0000000000201", False), ("00", False)):
        response = await client.get("/jobs", params={"limit": text}, headers=admin_headers)
        if ok:
            assert response.status_code == 200, response.text
        else:
            assert_error(response, 400, "invalid_parameter", param="limit")


async def test_an_unknown_parameter_name_is_echoed_only_in_part(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    name = "x" * 60_000  # httpx caps a URL at 64 KiB
    response = await client.get(f"/jobs?{name}=1", headers=admin_headers)
    body = assert_error(response, 400, "unknown_parameter")
    assert len(response.content) < 2_000 and body["param"] == "x" * 100

"""Own-job reads: any valid token reads the status view of the jobs it enqueued itself
(GET /job/{id}, GET /jobs?mine=true), whatever its scopes; other tokens' jobs are 404.

The last test is the issue's acceptance test over TCP: a real `queue-service serve` with its
worker and the echo plugin, a `plugin:rw` token that enqueues and polls to `succeeded`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service.api import ServiceState
from queue_service.config import parse_config
from queue_service.plugins import load
from queue_service.store import NewJob, SQLiteStore
from tests.conftest import TokenFactory, assert_error, bearer
from tests.live_server import ROOT, start_server

DETAIL_ONLY = {"payload", "result", "last_error", "submitted_by", "events", "logs", "attempts"}
LATER = "2999-01-01T00:00:00Z"


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    config = parse_config(
        {"service": {"plugin_dirs": [str(ROOT / "plugins")], "max_run_after_days": 400_000}}
    )
    return ServiceState.for_store(store, config=config, registry=load(config.service.plugin_dirs))


async def _enqueue(client: httpx.AsyncClient, token: str, command: str = "handle") -> str:
    response = await client.post(
        f"/plugin/echo/{command}",
        json={"payload": {"n": 1}, "run_after": LATER},
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


@pytest.mark.anyio
async def test_a_plugin_token_reads_its_own_jobs_status_view_only(
    client: httpx.AsyncClient, store: SQLiteStore, make_token: TokenFactory
) -> None:
    mine, other = await make_token("plugin:rw"), await make_token("plugin:rw")
    own = await _enqueue(client, mine)
    theirs = await _enqueue(client, other)
    by_cli = (await store.enqueue(NewJob("echo", "poll", {}, submitted_by="cli"))).job_id

    response = await client.get(f"/job/{own}", headers=bearer(mine))
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["job_id"] == own and view["status"] == "queued"
    assert not DETAIL_ONLY & set(view), "the status view only, without jobs:ro"

    # Another token's job, and a job no token enqueued, are as unknown as a made-up id.
    unknown = assert_error(
        await client.get("/job/no-such-job", headers=bearer(mine)), 404, "not_found"
    )
    for job_id in (theirs, by_cli):
        error = assert_error(
            await client.get(f"/job/{job_id}", headers=bearer(mine)), 404, "not_found"
        )
        assert error["error"] == unknown["error"].replace("no-such-job", job_id)

    # Cancelling still needs jobs:rw, own job or not.
    assert_error(
        await client.post(f"/job/{own}/cancel", headers=bearer(mine)), 403, "insufficient_scope"
    )


@pytest.mark.anyio
async def test_job_scopes_still_read_every_job_in_their_view(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    submitter = await make_token("plugin:rw")
    job_id = await _enqueue(client, submitter)
    status_only = await client.get(
        f"/job/{job_id}", headers=bearer(await make_token("jobs:status:ro"))
    )
    assert status_only.status_code == 200 and not DETAIL_ONLY & set(status_only.json())
    detail = await client.get(f"/job/{job_id}", headers=bearer(await make_token("jobs:ro")))
    assert detail.status_code == 200 and DETAIL_ONLY <= set(detail.json())
    # A token with both reads its own job in the detail view.
    both = await make_token("plugin:rw", "jobs:ro")
    own = await _enqueue(client, both)
    response = await client.get(f"/job/{own}", headers=bearer(both))
    assert response.json()["payload"] == {"n": 1}


@pytest.mark.anyio
async def test_mine_lists_only_the_tokens_own_jobs(
    client: httpx.AsyncClient, store: SQLiteStore, make_token: TokenFactory
) -> None:
    mine, other, admin = (
        await make_token("plugin:ro"),
        await make_token("plugin:rw"),
        await make_token("*"),
    )
    own = [await _enqueue(client, mine, "poll") for _ in range(3)]
    await _enqueue(client, other)
    await _enqueue(client, admin)
    await store.enqueue(NewJob("echo", "poll", {}, submitted_by="scheduler"))

    forbidden = assert_error(
        await client.get("/jobs", headers=bearer(mine)), 403, "insufficient_scope"
    )
    assert "mine=true" in forbidden["error"]
    assert_error(
        await client.get("/jobs?mine=false", headers=bearer(mine)), 403, "insufficient_scope"
    )

    first = (await client.get("/jobs?mine=true&limit=2", headers=bearer(mine))).json()
    assert first["total"] == 3 and len(first["jobs"]) == 2
    rest = (
        await client.get(
            f"/jobs?mine=true&limit=2&cursor={first['next_cursor']}", headers=bearer(mine)
        )
    ).json()
    assert [j["job_id"] for j in first["jobs"] + rest["jobs"]] == own[::-1]
    assert rest["next_cursor"] is None
    # Other filters combine with it.
    filtered = await client.get(
        "/jobs?mine=true&status=queued&plugin=echo&command=poll", headers=bearer(mine)
    )
    assert filtered.json()["total"] == 3
    none = await client.get("/jobs?mine=true&status=failed", headers=bearer(mine))
    assert none.json() == {"jobs": [], "total": 0, "next_cursor": None}
    # An admin token asking for mine gets its own only; without it, everything.
    assert (await client.get("/jobs?mine=true", headers=bearer(admin))).json()["total"] == 1
    assert (await client.get("/jobs", headers=bearer(admin))).json()["total"] == 6

    bad = assert_error(
        await client.get("/jobs?mine=yes", headers=bearer(mine)),
        400,
        "invalid_parameter",
        param="mine",
        allowed=["true", "false"],
    )
    assert "true or false" in bad["error"]


@pytest.mark.anyio
async def test_a_new_token_with_a_revoked_tokens_name_reads_none_of_its_jobs(
    client: httpx.AsyncClient, state: ServiceState, store: SQLiteStore
) -> None:
    """Names are free again after revoke, so jobs are owned by token id, not name."""
    old, _ = await state.tokens.create("ci", ["plugin:rw"])
    job_id = await _enqueue(client, old)
    assert await store.revoke_token("ci")
    new, _ = await state.tokens.create("ci", ["plugin:rw"])
    assert_error(await client.get(f"/job/{job_id}", headers=bearer(new)), 404, "not_found")
    listed = (await client.get("/jobs?mine=true", headers=bearer(new))).json()
    assert listed["total"] == 0
    job = await store.get_job(job_id)
    assert job is not None and job.submitted_by == "ci"  # the name stays for people


# -- acceptance, over TCP with the real worker --------------------------------------------


@pytest.mark.slow
def test_a_plugin_rw_token_enqueues_and_polls_to_succeeded(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        plugin_rw = server.headers("plugin:rw")
        response = httpx.post(
            f"{server.base}/plugin/echo/handle",
            json={"payload": {"hello": "agent"}},
            headers=plugin_rw,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 30
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            polled = httpx.get(f"{server.base}/job/{job_id}", headers=plugin_rw)
            assert polled.status_code == 200, polled.text
            view = polled.json()
            if view["status"] in ("succeeded", "failed", "dead", "canceled", "timed_out"):
                break
            time.sleep(0.1)
        assert view["status"] == "succeeded", view
        assert not DETAIL_ONLY & set(view)

        # A job someone else submitted (the seeded ones, a plugin:ro token's) is a 404.
        theirs = httpx.post(
            f"{server.base}/plugin/echo/poll", json={}, headers=server.headers("plugin:ro")
        ).json()["job_id"]
        for other in (theirs, server.seeded.all_job_ids[0]):
            response = httpx.get(f"{server.base}/job/{other}", headers=plugin_rw)
            assert response.status_code == 404 and response.json()["code"] == "not_found"

        listed = httpx.get(f"{server.base}/jobs?mine=true", headers=plugin_rw).json()
        assert [j["job_id"] for j in listed["jobs"]] == [job_id] and listed["total"] == 1
        everything = httpx.get(f"{server.base}/jobs", headers=plugin_rw)
        assert everything.status_code == 403
    finally:
        server.stop()

"""MCP, spoken to with the SDK's own client: over streamable HTTP against a real `serve`
process, and over stdio against `queue-service mcp` started by the client as an agent host
would. The client checks every structured result against the tool's output schema, so each
successful call here is also a check of that schema against what the route answers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.mcp import TOOL_SPECS, build_tools
from queue_service.api.openapi import build_openapi
from queue_service.api.params import JOB_LIST_PARAMS
from queue_service.auth import TokenService
from queue_service.models import EnqueueRequest
from queue_service.scopes import SCOPES
from queue_service.statuses import STATUS_WORDS
from queue_service.store import NewJob, SQLiteStore
from queue_service.timeutil import format_ts, utcnow
from tests.conftest import assert_error
from tests.live_server import LiveServer, start_server
from tests.processes import ENV, Processes, with_store

pytestmark = pytest.mark.anyio

#: A run_after within service.max_run_after_days: the server's worker leaves such a job queued.
LATER = format_ts(utcnow() + timedelta(days=30))

ALL_TOOLS = {"list_jobs", "get_job", "enqueue_job", "cancel_job", "list_plugins", "sync_status"}
#: What each scope may call, as issue 11 puts it: a jobs:status:ro token reads jobs and no more.
TOOLS_BY_SCOPE = {
    "*": ALL_TOOLS,
    "jobs:rw": {"list_jobs", "get_job", "cancel_job", "sync_status"},
    "jobs:ro": {"list_jobs", "get_job", "sync_status"},
    "jobs:status:ro": {"list_jobs", "get_job"},
    # Their own jobs only (issue 11, own-job reads).
    "plugin:rw": {"enqueue_job", "list_plugins", "list_jobs", "get_job"},
    "plugin:ro": {"enqueue_job", "list_plugins", "list_jobs", "get_job"},
    "metrics:ro": set(),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("mcp"))
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def connect(
    server: LiveServer, scope: str = "*", mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's client on /mcp with the seeded token of `scope`; `mode` "legacy" speaks the
    initialize handshake, "auto" the per-request protocol."""
    async with (
        httpx2.AsyncClient(headers=server.headers(scope)) as http,
        Client(
            streamable_http_client(f"{server.base}/mcp", http_client=http), cache=None, mode=mode
        ) as client,
    ):
        yield client


def rest(server: LiveServer, path: str, scope: str = "*") -> Any:
    response = httpx.get(f"{server.base}{path}", headers=server.headers(scope))
    assert response.status_code == 200, response.text
    return response.json()


def structured(result: mcp_types.CallToolResult) -> Any:
    """A successful result's object, checked to be the same as its JSON text block."""
    assert not result.is_error, result.content
    text = result.content[0]
    assert isinstance(text, mcp_types.TextContent)
    assert json.loads(text.text) == result.structured_content
    return result.structured_content


def tool_error(result: mcp_types.CallToolResult) -> dict[str, Any]:
    """A tool error's canonical error body."""
    assert result.is_error, result.structured_content
    text = result.content[0]
    assert isinstance(text, mcp_types.TextContent)
    body: dict[str, Any] = json.loads(text.text)
    assert set(body) <= {"error", "code", "param", "allowed"} and body["error"], body
    return body


# -- streamable HTTP ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_every_tool_answers_what_its_route_answers(live: LiveServer, mode: str) -> None:
    succeeded = live.seeded.jobs["succeeded"][0]
    async with connect(live, mode=mode) as client:
        listed = await client.list_tools()
        assert {tool.name for tool in listed.tools} == ALL_TOOLS
        cases: dict[tuple[str, str], dict[str, Any]] = {
            ("list_jobs", "/jobs?status=ok,failed&limit=3"): {"status": "ok,failed", "limit": 3},
            ("list_jobs", "/jobs?plugin=echo&source=local"): {"plugin": "echo", "source": "local"},
            ("get_job", f"/job/{succeeded}"): {"job_id": succeeded},
            ("list_plugins", "/plugins"): {},
            ("sync_status", "/sync"): {},
        }
        for (name, path), arguments in cases.items():
            answer = structured(await client.call_tool(name, arguments))
            assert answer == rest(live, path), name

        # A page's cursor from the tool leads to the same next page as the route's.
        first = structured(await client.call_tool("list_jobs", {"limit": 2}))
        assert first["next_cursor"] is not None
        second = structured(
            await client.call_tool("list_jobs", {"limit": 2, "cursor": first["next_cursor"]})
        )
        assert second == rest(live, f"/jobs?limit=2&cursor={first['next_cursor']}")
        assert {j["job_id"] for j in first["jobs"]}.isdisjoint(j["job_id"] for j in second["jobs"])


@pytest.mark.slow
async def test_enqueue_poll_and_cancel_through_tools(live: LiveServer) -> None:
    async with connect(live) as client:
        queued = structured(
            await client.call_tool(
                "enqueue_job",
                {"plugin": "echo", "command": "poll", "payload": {"hello": "mcp ✓"}},
            )
        )
        assert queued["status"] == "queued" and queued["deduplicated"] is False
        assert (queued["plugin"], queued["command"]) == ("echo", "poll")
        # The server's own worker runs it; poll as a plugin would.
        job = await poll_until_finished(client, queued["job_id"])
        assert job["status"] == "succeeded", job
        assert job["payload"] == {"hello": "mcp ✓"}
        assert job["result"] == {"hello": "mcp ✓"}  # echo, with no prefix configured

        # The same dedupe_key while the first job is active returns it.
        args = {"plugin": "echo", "command": "poll", "dedupe_key": "mcp-once"}
        args["run_after"] = LATER
        first = structured(await client.call_tool("enqueue_job", args))
        again = structured(await client.call_tool("enqueue_job", args))
        assert again == {**first, "deduplicated": True}

        canceled = structured(await client.call_tool("cancel_job", {"job_id": first["job_id"]}))
        assert canceled["status"] == "canceled"
        assert rest(live, f"/job/{first['job_id']}")["status"] == "canceled"
        # Canceling a finished job is the route's 409, as a tool error.
        finished = tool_error(await client.call_tool("cancel_job", {"job_id": first["job_id"]}))
        assert finished["code"] == "conflict"


async def poll_until_finished(client: Client, job_id: str, within: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        job = structured(await client.call_tool("get_job", {"job_id": job_id}))
        if job["status"] not in ("queued", "running"):
            return job
        if loop.time() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {within} s")
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("scope", SCOPES)
async def test_a_scope_sees_only_the_tools_it_may_call(live: LiveServer, scope: str) -> None:
    async with connect(live, scope) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed == TOOLS_BY_SCOPE[scope]
        # A tool it does not see is refused on call too, with the scope that would do.
        job_id = live.seeded.jobs["queued"][0]
        arguments = {
            "list_jobs": {},
            "get_job": {"job_id": job_id},
            "enqueue_job": {"plugin": "echo", "command": "poll", "run_after": LATER},
            "cancel_job": {"job_id": "no-such-job"},
            "list_plugins": {},
            "sync_status": {},
        }
        for name in sorted(ALL_TOOLS - listed):
            error = tool_error(await client.call_tool(name, arguments[name]))
            assert error["code"] == "insufficient_scope", (name, error)
    assert rest(live, f"/job/{job_id}")["status"] == "queued"


@pytest.mark.slow
async def test_scopes_trim_the_results_as_the_routes_do(live: LiveServer) -> None:
    job_id = live.seeded.jobs["succeeded"][0]
    async with connect(live, "jobs:status:ro") as client:
        view = structured(await client.call_tool("get_job", {"job_id": job_id}))
    assert view == rest(live, f"/job/{job_id}", "jobs:status:ro")
    assert "payload" not in view and "attempts" not in view
    async with connect(live, "jobs:ro") as client:
        detail = structured(await client.call_tool("get_job", {"job_id": job_id}))
    assert detail == rest(live, f"/job/{job_id}", "jobs:ro")
    assert detail["result"] == {"answer": 42, "list": ["x", {"y": None}]}
    # plugin:ro sees enqueue_job, and the route still refuses it a write command.
    async with connect(live, "plugin:ro") as client:
        refused = tool_error(
            await client.call_tool("enqueue_job", {"plugin": "echo", "command": "handle"})
        )
    assert refused["code"] == "insufficient_scope" and "plugin:rw" in refused["error"]


@pytest.mark.slow
async def test_bad_arguments_are_tool_errors_in_the_canonical_shape(live: LiveServer) -> None:
    async with connect(live, "jobs:status:ro") as client:
        unknown = tool_error(await client.call_tool("list_jobs", {"status": "fail"}))
        assert unknown["code"] == "invalid_parameter" and unknown["param"] == "status"
        assert unknown["allowed"] == list(STATUS_WORDS)
        assert "'fail'" in unknown["error"]

        extra = tool_error(await client.call_tool("list_jobs", {"statuses": "ok"}))
        assert extra["code"] == "unknown_parameter" and extra["param"] == "statuses"
        assert "status" in extra["allowed"]

        limit = tool_error(await client.call_tool("list_jobs", {"limit": 1000}))
        assert (limit["code"], limit["param"]) == ("invalid_parameter", "limit")

        missing = tool_error(await client.call_tool("get_job", {"job_id": "nope"}))
        assert (missing["code"], missing["param"]) == ("not_found", "job_id")

        untyped = tool_error(await client.call_tool("get_job", {"job_id": 7}))
        assert (untyped["code"], untyped["param"]) == ("invalid_parameter", "job_id")
    async with connect(live) as client:
        payload = tool_error(
            await client.call_tool("enqueue_job", {"plugin": "echo", "command": "nope"})
        )
        assert payload["code"] == "not_found" and "poll" in payload["allowed"]


@pytest.mark.slow
def test_mcp_without_a_good_token_is_the_rest_apis_401(live: LiveServer) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    url = f"{live.base}/mcp"
    response = httpx.post(url, json=initialize, headers=accept)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="queue-service"'
    for name in ("expired", "revoked"):
        response = httpx.post(url, json=initialize, headers={**accept, **live.headers(name)})
        assert_error(response, 401, "invalid_token")
    # Stateless: there is no event stream to open and no session to delete.
    for method in ("GET", "DELETE"):
        response = httpx.request(method, url, headers=live.headers())
        assert_error(response, 405, "method_not_allowed", allowed=["POST"])


# -- stdio ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_queue_service_mcp_over_stdio_for_an_agent_host(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        for n in range(3):
            await store.enqueue(NewJob("echo", "poll", {"n": n}))
        token, _ = await TokenService(store).create("agent", ["jobs:status:ro"])
    finally:
        await store.close()
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "queue_service", "mcp", "--db", str(db)],
        env={**ENV, "QS_TOKEN": token},
    )
    async with Client(server, cache=None) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed == TOOLS_BY_SCOPE["jobs:status:ro"]
        page = structured(await client.call_tool("list_jobs", {"status": "pending", "limit": 2}))
        assert page["total"] == 3 and len(page["jobs"]) == 2
        assert {job["status"] for job in page["jobs"]} == {"queued"}
        refused = tool_error(await client.call_tool("cancel_job", {"job_id": "x"}))
        assert refused["code"] == "insufficient_scope"
    # The client stopped the server it started.
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and holds(pid, str(db))]


def holds(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_mcp_refuses_a_bad_token_before_serving(tmp_path: Path, processes: Processes) -> None:
    db = tmp_path / "agent.db"
    with_store(db, lambda store: store.schema_version())
    env_token = "qs_" + "A" * 43
    proc = processes.start_command(
        "mcp",
        [sys.executable, "-m", "queue_service", "mcp", "--db", str(db), "--token", env_token],
    )
    assert proc.wait(timeout=30) == 1
    assert "the bearer token is unknown" in processes.log_of(proc)
    assert env_token not in processes.log_of(proc)


# -- schemas: one truth with the REST API --------------------------------------------------------


def test_tool_schemas_are_the_routes_own() -> None:
    tools = build_tools(list(CORE_OPERATIONS))
    document = build_openapi(CORE_OPERATIONS)
    assert [spec.name for spec in TOOL_SPECS] == list(tools)
    for spec in TOOL_SPECS:
        tool = tools[spec.name]
        entry = document["paths"][spec.path][spec.method.lower()]
        properties = tool.definition.input_schema["properties"]
        for parameter in entry["parameters"]:
            expected = {**parameter["schema"]}
            if "description" in parameter:
                expected["description"] = parameter["description"]
            assert properties[parameter["name"]] == expected, (spec.name, parameter["name"])
        assert tool.definition.input_schema["additionalProperties"] is False
    # list_jobs takes exactly GET /jobs's query parameters, each with its REST schema.
    list_jobs = tools["list_jobs"].definition.input_schema["properties"]
    assert list(list_jobs) == [param.name for param in JOB_LIST_PARAMS]
    for param in JOB_LIST_PARAMS:
        assert list_jobs[param.name] == {**param.schema, "description": param.description}
    # enqueue_job's body fields are EnqueueRequest's.
    enqueue = tools["enqueue_job"].definition.input_schema
    body = EnqueueRequest.model_json_schema()
    assert set(enqueue["properties"]) == {"plugin", "command", *body["properties"]}
    for name, schema in body["properties"].items():
        assert enqueue["properties"][name] == schema


def test_the_status_schema_accepts_what_the_route_accepts() -> None:
    """Whatever form the REST status parameter takes (a pattern, an enum), the tool's is the
    same, so an agent's schema-checked value is one the route takes."""
    import jsonschema

    status = build_tools(list(CORE_OPERATIONS))["list_jobs"].definition.input_schema["properties"][
        "status"
    ]
    (rest_param,) = [param for param in JOB_LIST_PARAMS if param.name == "status"]
    for word in STATUS_WORDS:
        jsonschema.validate(word, status)
        assert rest_param.parse(word)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("fail", status)
    with pytest.raises(ValueError, match="unknown status"):
        rest_param.parse("fail")


def test_mcp_without_a_token_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from queue_service.cli import main

    monkeypatch.delenv("QS_TOKEN", raising=False)
    assert main(["mcp", "--db", str(tmp_path / "none.db")]) == 1
    error = capsys.readouterr().err
    assert "set QS_TOKEN" in error and "--scope jobs:status:ro" in error
    assert not (tmp_path / "none.db").exists()

"""Hostile input: every query parameter of every route, request bodies and path ids.

Every case answers 4xx with the canonical error (tests.conftest.assert_error), never 5xx,
and leaves the job tables byte-for-byte unchanged. The routes and their parameters come from
the operation registry, so a new route or parameter is attacked without editing this file.

The first part runs in-process (httpx's ASGI transport); the second sends the same and worse
over TCP to a real `queue-service serve`, where uvicorn's parser and the 16 KiB request-head
limit are part of what is tested.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import pytest
from starlette.types import ASGIApp, Message

from queue_service import models
from queue_service.api import ServiceState, create_app
from queue_service.api.app import CORE_OPERATIONS, MAX_BODY_BYTES
from queue_service.api.operations import Operation
from queue_service.api.params import exact_pattern
from queue_service.config import parse_config
from queue_service.plugins import load
from queue_service.store import NewJob, SQLiteStore
from tests.conftest import STORE_BACKENDS, RawDatabase, TokenFactory, assert_error, bearer
from tests.live_server import (
    ROOT,
    SNAPSHOT_QUERIES,
    LiveServer,
    jobs_snapshot,
    live_database,
    raw_request,
    start_server,
)

HUGE = "x" * 100_000
#: Values no parameter of ours should take, by family.
HOSTILE_VALUES: dict[str, list[str]] = {
    "wrong type": ["abc", "1.5", "-1", "true", "null", "[]", "{}", "0x10", "1e3"],
    "empty": ["", " ", "%"],
    "huge": [HUGE, "9" * 5000, ",".join(["ok"] * 20_000)],
    "unicode": ["é", "😀", "\u212a", "\u202eevil", "\ufeff", "\ud7ff", "Ω" * 201],
    "nul and control": ["\x00", "a\x00b", "ok\x00", "a\r\nX-Injected: 1", "\x7f", "a\nb"],
    "sql": ["' OR 1=1 --", '"; DROP TABLE jobs; --', "%' OR '1'='1", "*", "_", "\\"],
}
ALL_HOSTILE = [(family, value) for family, values in HOSTILE_VALUES.items() for value in values]


def _route_path(op: Operation, job_id: str = "00000000-0000-0000-0000-000000000000") -> str:
    return (
        op.path.replace("{job_id}", job_id).replace("{plugin}", "echo").replace("{command}", "poll")
    )


def _param_cases() -> list[Any]:
    """(operation, parameter name) for every query parameter of every route; a route
    without parameters is attacked through a name it does not know."""
    cases = []
    for op in CORE_OPERATIONS:
        for name in [p.name for p in op.query] or ["unknown"]:
            cases.append(pytest.param(op, name, id=f"{op.method} {op.path} {name}"))
    return cases


def _valid_for(op: Operation, name: str, value: str) -> bool:
    """Whether the parameter's own schema admits `value` (the free-text filters admit SQL
    metacharacters and unicode: those must be served, and must match nothing)."""
    spec = next((p for p in op.query if p.name == name), None)
    if spec is not None and spec.schema.get("type") == "boolean":
        return value in ("true", "false")  # `true` lists the admin's own jobs: none
    if spec is None or spec.schema.get("type") != "string" or "format" in spec.schema:
        return False
    schema = spec.schema
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9):
        return False
    pattern = exact_pattern(schema)
    return pattern is not None and re.fullmatch(pattern, value) is not None


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    config = parse_config({"service": {"plugin_dirs": [str(ROOT / "plugins")]}})
    registry = load(config.service.plugin_dirs, {})
    return ServiceState.for_store(store, config=config, registry=registry)


@pytest.fixture
async def seeded(store: SQLiteStore) -> list[str]:
    return [
        (
            await store.enqueue(NewJob("echo", "poll", {"i": i}, run_after="2999-01-01T00:00:00Z"))
        ).job_id
        for i in range(3)
    ]


@pytest.fixture
async def admin(make_token: TokenFactory) -> dict[str, str]:
    return bearer(await make_token("*"))


@pytest.fixture
def app(state: ServiceState) -> ASGIApp:
    return create_app(state)


async def asgi_request(
    app: ASGIApp,
    method: str,
    path: str,
    query: bytes = b"",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> httpx.Response:
    """One request straight into the ASGI app: no client-side URL length cap or
    normalization, so 100 KB values and raw escapes arrive exactly as written."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> Message:
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [(k.decode(), v.decode()) for k, v in message["headers"]]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return httpx.Response(answer["status"], headers=answer["headers"], content=answer["body"])


class Unchanged:
    """Asserts the job tables are exactly as they were when it was made (on any backend)."""

    def __init__(self, raw: RawDatabase) -> None:
        self.raw = raw
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, list[tuple[object, ...]]]:
        return {
            name: sorted(self.raw.execute(sql), key=repr) for name, sql in SNAPSHOT_QUERIES.items()
        }

    def check(self) -> None:
        assert self.snapshot() == self.before, "a hostile request changed the database"


@pytest.fixture
def unchanged(raw_db: RawDatabase, seeded: list[str]) -> Iterator[Unchanged]:
    guard = Unchanged(raw_db)
    yield guard
    guard.check()


# -- query parameters, in-process --------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("op", "name"), _param_cases())
async def test_hostile_query_parameter(
    app: ASGIApp, admin: dict[str, str], unchanged: Unchanged, op: Operation, name: str
) -> None:
    for family, value in ALL_HOSTILE:
        why = f"{family}: {value[:40]!r}"
        query = urlencode({name: value}).encode()
        response = await asgi_request(app, op.method, _route_path(op), query, admin)
        assert response.status_code < 500, (why, response.text)
        if not op.query:
            body = assert_error(response, 400, "unknown_parameter")
            assert len(body["param"]) <= 100, why
        elif _valid_for(op, name, value):
            # A legal filter value: served, and (SQL text is data, not code) matches nothing.
            assert response.status_code == 200, (why, response.text)
            assert response.json()["total"] == 0, (why, response.text)
        else:
            body = assert_error(response, 400, "invalid_parameter", param=name)
            assert len(response.content) < 4096, f"{why}: a huge value was echoed back"
            assert "\x00" not in body["error"], why


@pytest.mark.anyio
@pytest.mark.parametrize("op", [op for op in CORE_OPERATIONS if op.query], ids=lambda o: o.path)
async def test_every_parameter_repeated_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged, op: Operation
) -> None:
    for spec in op.query:
        valid = {"limit": "5", "status": "ok", "source": "local", "plugin": "echo"}.get(
            spec.name, "x"
        )
        query = f"{spec.name}={valid}&{spec.name}={valid}"
        response = await client.request(op.method, f"{_route_path(op)}?{query}", headers=admin)
        assert_error(response, 400, "invalid_parameter", param=spec.name)


@pytest.mark.anyio
async def test_percent_escapes_that_decode_to_nothing_sane(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged
) -> None:
    for raw in ("status=%ff%fe", "plugin=%c0%af", "limit=%00", "status=ok%2C%00", "cursor=%zz"):
        response = await client.get(f"/jobs?{raw}", headers=admin)
        assert_error(response, 400, "invalid_parameter")


# -- bodies, in-process ------------------------------------------------------------------


def _nested(levels: int) -> bytes:
    payload: object = {}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return json.dumps({"payload": payload}).encode()


BAD_BODIES: list[Any] = [
    pytest.param(b"not json", "application/json", 400, "invalid_body", id="not-json"),
    pytest.param(b"{", "application/json", 400, "invalid_body", id="truncated"),
    pytest.param(b"{'payload': {}}", "application/json", 400, "invalid_body", id="single-quotes"),
    pytest.param(b"\xff\xfe\x00", "application/json", 400, "invalid_body", id="bad-utf8"),
    pytest.param(b"[]", "application/json", 400, "invalid_body", id="array"),
    pytest.param(b'"text"', "application/json", 400, "invalid_body", id="string"),
    pytest.param(b"null", "application/json", 400, "invalid_body", id="null"),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "invalid_body", id="100k-deep"
    ),
    pytest.param(
        _nested(models.MAX_JSON_DEPTH), "application/json", 400, "invalid_body", id="65-deep"
    ),
    pytest.param(_nested(300), "application/json", 400, "invalid_body", id="300-deep"),
    pytest.param(b'{"payload": {"a": NaN}}', "application/json", 400, "invalid_body", id="nan"),
    pytest.param(
        b'{"payload": {"a": -Infinity}}', "application/json", 400, "invalid_body", id="infinity"
    ),
    pytest.param(b'{"payload": {"a": 1e400}}', "application/json", 400, "invalid_body", id="1e400"),
    pytest.param(
        b'{"payload": {"a": ' + b"9" * 5000 + b"}}",
        "application/json",
        400,
        "invalid_body",
        id="5000-digit-int",
    ),
    pytest.param(
        b'{"payload": {"a": "\\ud800"}}', "application/json", 400, "invalid_body", id="surrogate"
    ),
    pytest.param(
        b'{"payload": {"\\udfff": 1}}', "application/json", 400, "invalid_body", id="surrogate-key"
    ),
    pytest.param(b'{"payload": 3}', "application/json", 400, "invalid_body", id="payload-int"),
    pytest.param(b'{"payload": {}, "x": 1}', "application/json", 400, "invalid_body", id="extra"),
    pytest.param(
        b'{"max_attempts": true}', "application/json", 400, "invalid_body", id="attempts-bool"
    ),
    pytest.param(
        b'{"max_attempts": "3"}', "application/json", 400, "invalid_body", id="attempts-str"
    ),
    pytest.param(
        b'{"max_attempts": 1.5}', "application/json", 400, "invalid_body", id="attempts-float"
    ),
    pytest.param(
        b'{"max_attempts": 101}', "application/json", 400, "invalid_body", id="attempts-101"
    ),
    pytest.param(b'{"dedupe_key": 5}', "application/json", 400, "invalid_body", id="dedupe-int"),
    pytest.param(
        b'{"dedupe_key": "' + b"k" * 201 + b'"}',
        "application/json",
        400,
        "invalid_body",
        id="dedupe-201",
    ),
    pytest.param(
        b'{"run_after": "2026-11-23 15:46:40Z"}',
        "application/json",
        400,
        "invalid_body",
        id="run-after-space",
    ),
    pytest.param(b'{"run_after": 5}', "application/json", 400, "invalid_body", id="run-after-int"),
    pytest.param(b"{}", "text/plain", 415, "unsupported_media_type", id="text-plain"),
    pytest.param(b"<a/>", "application/xml", 415, "unsupported_media_type", id="xml"),
    pytest.param(
        b"payload=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", id="form"
    ),
    pytest.param(
        b"--b\r\n\r\n--b--",
        "multipart/form-data; boundary=b",
        415,
        "unsupported_media_type",
        id="multipart",
    ),
    pytest.param(b"{}", "application/jsonx", 415, "unsupported_media_type", id="json-lookalike"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("body", "content_type", "status", "code"), BAD_BODIES)
async def test_hostile_enqueue_body(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    unchanged: Unchanged,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    headers = {**admin, "Content-Type": content_type}
    response = await client.post("/plugin/echo/poll", content=body, headers=headers)
    assert_error(response, status, code)
    assert len(response.content) < 4096


@pytest.mark.anyio
async def test_an_over_long_integer_is_refused_in_plain_words(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged
) -> None:
    body = b'{"payload": {"n": ' + b"7" * 5000 + b"}}"
    headers = {**admin, "Content-Type": "application/json"}
    response = await client.post("/plugin/echo/poll", content=body, headers=headers)
    message = assert_error(response, 400, "invalid_body")["error"]
    assert "set_int_max_str_digits" not in message
    assert "5000 digits" in message and "at most 4300" in message
    # The limit is Python's own: 4300 digits are still an integer.
    from queue_service.api.params import parse_json_integer

    assert parse_json_integer("-" + "7" * 4300) == -int("7" * 4300)


@pytest.mark.anyio
async def test_an_empty_status_item_is_named(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get("/jobs", params={"status": "ok,,failed"}, headers=admin)
    message = assert_error(response, 400, "invalid_parameter", param="status")["error"]
    assert "unknown status ''" not in message and "'ok,,failed' has an empty item" in message


@pytest.mark.anyio
async def test_json_at_the_depth_limit_is_accepted(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    """The limit is exact: MAX_JSON_DEPTH levels (the body object included) pass and the
    job reads back; before, 255 levels were stored and then every GET of the job was a 500."""
    response = await client.post(
        "/plugin/echo/poll",
        content=_nested(models.MAX_JSON_DEPTH - 1),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    job = await client.get(f"/job/{response.json()['job_id']}", headers=admin)
    assert job.status_code == 200, job.text


@pytest.mark.anyio
async def test_valid_surrogate_pairs_and_integral_floats_are_accepted(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    body = b'{"payload": {"smile": "\\ud83d\\ude00"}, "max_attempts": 3.0}'
    response = await client.post(
        "/plugin/echo/poll", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    job = await store.get_job(response.json()["job_id"])
    assert job is not None and job.payload == {"smile": "😀"} and job.max_attempts == 3


@pytest.mark.anyio
async def test_a_stored_lone_surrogate_does_not_make_the_job_unreadable(
    client: httpx.AsyncClient, admin: dict[str, str], store: SQLiteStore
) -> None:
    """Data the API refuses can still arrive from elsewhere (a plugin's result): the detail
    view escapes it instead of answering 500."""
    job_id = (await store.enqueue(NewJob("echo", "poll", {"bad": "\ud800"}))).job_id
    response = await client.get(f"/job/{job_id}", headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["payload"] == {"bad": "\ud800"}


@pytest.mark.anyio
@pytest.mark.parametrize("op", CORE_OPERATIONS, ids=lambda o: f"{o.method} {o.path}")
async def test_a_body_over_one_mebibyte_is_413_on_every_route(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged, op: Operation
) -> None:
    oversized = b"{" + b" " * MAX_BODY_BYTES + b"}"
    response = await client.request(
        op.method,
        _route_path(op),
        content=oversized,
        headers={**admin, "Content-Type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    response = await client.request(op.method, _route_path(op), content=chunks(), headers=admin)
    assert_error(response, 413, "payload_too_large")


# -- path ids, in-process ----------------------------------------------------------------

HOSTILE_IDS = [
    "x" * 201,
    "x" * 10_000,
    "%00",
    "a%00b",
    "%2F",
    "..%2F..%2Fjobs",
    "%2e%2e",
    "%252F",
    "%5C..%5C",
    "%E2%80%AE",
    "%ff",
    "'%20OR%20'1'='1",
    "00000000-0000-0000-0000-000000000000%00",
    "*",
]


@pytest.mark.anyio
@pytest.mark.parametrize("job_id", HOSTILE_IDS, ids=lambda i: i[:30])
async def test_hostile_job_ids_are_404(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    unchanged: Unchanged,
    seeded: list[str],
    job_id: str,
) -> None:
    for op in CORE_OPERATIONS:
        if "{job_id}" not in op.path:
            continue
        response = await client.request(op.method, _route_path(op, job_id), headers=admin)
        assert_error(response, 404, "not_found")
        assert len(response.content) < 4096


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["x" * 300, "%00", "%2F", "..", "%2e%2e%2f", "echo%00"])
async def test_hostile_plugin_and_command_names_are_404(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged, name: str
) -> None:
    for path in (f"/plugin/{name}/poll", f"/plugin/echo/{name}"):
        response = await client.post(path, json={}, headers=admin)
        assert_error(response, 404, "not_found")


@pytest.mark.anyio
async def test_a_real_id_with_a_prefix_or_suffix_is_not_that_job(
    client: httpx.AsyncClient, admin: dict[str, str], unchanged: Unchanged, seeded: list[str]
) -> None:
    """A cancel used to look up only the first 200 characters of the id."""
    real = seeded[0]
    for job_id in (real + "x" * 200, real + "%00", real[:-1], real.upper()):
        for method, path in (("GET", f"/job/{job_id}"), ("POST", f"/job/{job_id}/cancel")):
            response = await client.request(method, path, headers=admin)
            assert_error(response, 404, "not_found")


# -- over the wire, against a real server ------------------------------------------------


@pytest.fixture(scope="module", params=sorted(STORE_BACKENDS))
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with live_database(request) as db:
        server = start_server(tmp_path_factory.mktemp("hostile"), db=db)
        try:
            yield server
        finally:
            log = server.stop()
        assert "Traceback" not in log, log[-5000:]


def _assert_canonical(status: int, headers: dict[str, str], payload: bytes) -> dict[str, Any]:
    assert 400 <= status < 500, (status, payload[:300])
    assert headers["content-type"].startswith("application/json"), headers
    body: dict[str, Any] = json.loads(payload)
    assert set(body) <= {"error", "code", "param", "allowed"} and body["error"], body
    return body


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        b"/job/" + b"x" * 10_000,
        b"/job/%00",
        b"/job/../jobs",
        b"/job/..%2F..%2Fetc%2Fpasswd",
        b"/job/%2e%2e/%2e%2e/jobs",
        b"/job/a%2Fb/cancel",
        b"/job/\\..\\..\\",
        b"/jobs?status=" + b"x" * 100_000,
        b"/jobs?" + b"&".join(b"limit=1" for _ in range(5000)),
        b"/jobs?plugin=%00&command=%0d%0aX-Injected:%201",
        b"/jobs?created_after=" + b"9" * 20_000,
        b"/plugin/%00/poll",
        b"/" + b"a/" * 8000,
    ],
    ids=lambda t: t[:40].decode(),
)
def test_hostile_targets_over_the_wire(live: LiveServer, target: bytes) -> None:
    before = jobs_snapshot(live.db)
    token = live.seeded.tokens["*"].encode()
    for method in (b"GET", b"POST"):
        head = (
            method
            + b" "
            + target
            + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        status, headers, payload = raw_request(live, head)
        _assert_canonical(status, headers, payload)
    assert jobs_snapshot(live.db) == before


@pytest.mark.slow
def test_raw_nul_and_control_bytes_in_the_request_line(live: LiveServer) -> None:
    before = jobs_snapshot(live.db)
    for target in (b"/job/\x00", b"/jobs?status=\x00", b"/jobs\x7f", b"/job/\xff\xfe"):
        head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, headers, payload = raw_request(live, head)
        _assert_canonical(status, headers, payload)
    assert jobs_snapshot(live.db) == before


@pytest.mark.slow
def test_hostile_bodies_over_the_wire(live: LiveServer) -> None:
    before = jobs_snapshot(live.db)
    token = live.seeded.tokens["*"]
    conn = http.client.HTTPConnection("127.0.0.1", int(live.base.rsplit(":", 1)[1]), timeout=30)
    try:
        for param in BAD_BODIES:
            body, content_type, status, code = param.values
            conn.request(
                "POST",
                "/plugin/echo/poll",
                body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            )
            response = conn.getresponse()
            payload = response.read()
            assert response.status == status, (param.id, payload[:300])
            assert json.loads(payload)["code"] == code, param.id
        # Chunked, without Content-Length, over the limit.
        conn.putrequest("POST", "/plugin/echo/poll")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b" " * 65536
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the upload ends
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["code"] == (
            "payload_too_large"
        )
    finally:
        conn.close()
    assert jobs_snapshot(live.db) == before


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'[[],[[]],{"x":[[[]]]}]', 5),
        (b'{"s": "[[[[[[[[[[{{{{{{{{"}', 1),  # brackets inside a string do not count
        (b'{"s": "\\"[[[[[[[[[[\\\\"}', 1),  # nor after escaped quotes
        (b'{"s": "\\\\", "t": [[[]]]}', 4),  # an escaped backslash ends before the quote
    ],
)
def test_the_depth_check_is_exact(text: bytes, depth: int) -> None:
    from queue_service.api.plugins import _nests_deeper_than

    json.loads(text)  # the cases are valid JSON
    assert not _nests_deeper_than(text, depth)
    assert depth == 1 or _nests_deeper_than(text, depth - 1)


def test_the_depth_check_leaves_broken_json_to_the_parser() -> None:
    from queue_service.api.plugins import _nests_deeper_than

    for broken in (b"{not json", b'{"payload": {}', b"]]]][[[[", b"[}"):
        assert not _nests_deeper_than(broken, 64)
    assert _nests_deeper_than(b"[" * 100_000, 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "head",
    [
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n",
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n",
        b"G@T /jobs HTTP/1.1\r\nHost: x\r\n",
        b"GET /jobs HTTP/1.1\r\nHost: x\r\nBad Header\r\n",
        b"GET /jobs HTTP/9.9\r\nHost: x\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n",
        b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n",
        b"GET http://evil/jobs HTTP/1.1\r\nHost: x\r\n",
        b"TRACE /jobs HTTP/1.1\r\nHost: x\r\n",
        b"DELETE /job/x HTTP/1.1\r\nHost: x\r\n",
    ],
    ids=lambda h: h.split(b"\r\n")[0][:30].decode() + "|" + h.split(b"\r\n")[-2][:20].decode(),
)
def test_malformed_http_is_a_canonical_4xx(live: LiveServer, head: bytes) -> None:
    before = jobs_snapshot(live.db)
    status, headers, payload = raw_request(live, head + b"Connection: close\r\n\r\n")
    _assert_canonical(status, headers, payload)
    assert jobs_snapshot(live.db) == before

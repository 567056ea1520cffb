"""Auth over every route: RFC 6750 challenges, the scope matrix, expired and revoked tokens,
no token in the query string or a form body, and no token in any log line.

The protected routes are read from the OpenAPI document (operations with a `security`
requirement), so a new route gets the RFC 6750 checks without editing this file; the scope
matrix must name every route, and a test fails when one is missing from it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from queue_service.api import ServiceState
from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.openapi import build_openapi
from queue_service.auth import hash_token
from queue_service.config import parse_config
from queue_service.plugins import load
from queue_service.scopes import SCOPES
from queue_service.statuses import Status
from queue_service.store import NewJob, SQLiteStore
from tests.conftest import RawDatabase, TokenFactory, assert_error, bearer
from tests.live_server import ROOT, LiveServer, start_server

REALM = 'Bearer realm="queue-service"'
DOCUMENT = build_openapi(CORE_OPERATIONS)
#: (method, path template, scope the registry declares) for every route that needs a token.
PROTECTED = sorted(
    (method.upper(), path, op.scope)
    for path, ops in DOCUMENT["paths"].items()
    for method, spec in ops.items()
    if spec["security"]
    for op in CORE_OPERATIONS
    if op.path == path and op.method == method.upper()
)
#: Routes any token may call for its own jobs, which answer 404, never 403.
OWN_JOBS_ONLY = {
    (op.method, op.path)
    for op in CORE_OPERATIONS
    if op.own_jobs and not any(p.name == "mine" for p in op.query)
}
OPEN = sorted(
    (method.upper(), path)
    for path, ops in DOCUMENT["paths"].items()
    for method, spec in ops.items()
    if not spec["security"]
)
LATER = "2999-01-01T00:00:00Z"

DETAIL_ONLY = {"payload", "result", "last_error", "submitted_by", "events", "logs", "attempts"}

# -- the matrix: route -> expected status per scope ---------------------------------------------
# "detail"/"status" after a 200 say which view of a job the answer is.
OK, CREATED, DENIED, NOT_FOUND = 200, 202, 403, 404
MATRIX: dict[tuple[str, str], dict[str, int | tuple[int, str]]] = {
    ("GET", "/jobs"): {
        "*": OK, "jobs:rw": OK, "jobs:ro": OK, "jobs:status:ro": OK,
        "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
    ("GET", "/job/{job_id}"): {
        "*": (OK, "detail"), "jobs:rw": (OK, "detail"), "jobs:ro": (OK, "detail"),
        # Not their own job (no token enqueued it): as if it did not exist.
        "jobs:status:ro": (OK, "status"), "plugin:rw": NOT_FOUND, "plugin:ro": NOT_FOUND,
        "metrics:ro": NOT_FOUND,
    },
    ("POST", "/job/{job_id}/cancel"): {
        "*": (OK, "detail"), "jobs:rw": (OK, "detail"), "jobs:ro": DENIED,
        "jobs:status:ro": DENIED, "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
    ("GET", "/plugins"): {scope: OK for scope in SCOPES},
    # echo.poll is a read command, echo.handle a write command.
    ("POST", "/plugin/{plugin}/{command}"): {
        "*": CREATED, "jobs:rw": DENIED, "jobs:ro": DENIED, "jobs:status:ro": DENIED,
        "plugin:rw": CREATED, "plugin:ro": CREATED, "metrics:ro": DENIED,
    },
    ("POST", "/plugin/echo/handle"): {
        "*": CREATED, "jobs:rw": DENIED, "jobs:ro": DENIED, "jobs:status:ro": DENIED,
        "plugin:rw": CREATED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
    ("GET", "/schedules"): {
        "*": OK, "jobs:rw": OK, "jobs:ro": OK, "jobs:status:ro": DENIED,
        "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
    ("GET", "/sync"): {
        "*": OK, "jobs:rw": OK, "jobs:ro": OK, "jobs:status:ro": DENIED,
        "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
    ("GET", "/metrics"): {
        "*": OK, "jobs:rw": DENIED, "jobs:ro": DENIED, "jobs:status:ro": DENIED,
        "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": OK,
    },
    ("GET", "/alerts"): {
        "*": OK, "jobs:rw": OK, "jobs:ro": OK, "jobs:status:ro": DENIED,
        "plugin:rw": DENIED, "plugin:ro": DENIED, "metrics:ro": DENIED,
    },
}  # fmt: skip


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    config = parse_config({"service": {"plugin_dirs": [str(ROOT / "plugins")]}})
    return ServiceState.for_store(
        store, config=config, registry=load(config.service.plugin_dirs, {})
    )


async def _concrete(store: SQLiteStore, path: str) -> tuple[str, dict[str, Any] | None]:
    """A real path for a template (a fresh queued job for job routes) and its JSON body."""
    job_id = (await store.enqueue(NewJob("echo", "poll", {"k": 1}, run_after=LATER))).job_id
    concrete = path.replace("{job_id}", job_id).replace("{plugin}/{command}", "echo/poll")
    body: dict[str, Any] | None = {"payload": {}} if concrete.startswith("/plugin/") else None
    return concrete, body


def test_every_protected_route_is_in_the_matrix() -> None:
    assert PROTECTED, "the OpenAPI document lists no protected route"
    missing = {(m, p) for m, p, _ in PROTECTED} - set(MATRIX)
    assert not missing, f"add these routes to MATRIX: {sorted(missing)}"
    for row in MATRIX.values():
        assert set(row) == set(SCOPES)


def test_the_document_declares_the_bearer_scheme_on_exactly_the_protected_routes() -> None:
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, scope in PROTECTED:
        spec = DOCUMENT["paths"][path][method.lower()]
        assert spec["security"] == [{"bearer": []}]
        assert "401" in spec["responses"], (method, path)
        assert "WWW-Authenticate" in spec["responses"]["401"]["headers"]
        if scope != "any":
            assert f"`{scope}`" in spec["description"], (method, path)
        if "403" in spec["responses"]:
            assert "WWW-Authenticate" in spec["responses"]["403"]["headers"]
        else:  # any token will do, or another token's job is a 404 instead
            assert scope == "any" or (method, path) in OWN_JOBS_ONLY, (method, path)
    assert ("GET", "/healthz") in OPEN and ("GET", "/openapi.json") in OPEN


# -- RFC 6750 challenges on every protected route ----------------------------------------------

BAD_HEADERS = [
    "Bearer",
    "Bearer ",
    "Bearer  ",
    "Basic dXNlcjpwYXNz",
    "Token qs_" + "A" * 43,
    "Bearer qs_" + "A" * 43,  # well-formed, unknown
    "Bearer qs_" + "A" * 42,
    "Bearer qs_" + "A" * 44,
    "Bearer not-a-qs-token",
    "Bearer qs_" + "A" * 43 + " extra",
    "Bearer qs_" + "A" * 43 + ",",
    "Bearerqs_" + "A" * 43,
    "bearer\tqs_" + "A" * 43,
    "Bearer " + "A" * 10_000,
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
async def test_rfc6750_challenges(
    client: httpx.AsyncClient,
    state: ServiceState,
    store: SQLiteStore,
    raw_db: RawDatabase,
    make_token: TokenFactory,
    method: str,
    path: str,
    scope: str,
) -> None:
    concrete, body = await _concrete(store, path)

    response = await client.request(method, concrete, json=body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == REALM

    for header in BAD_HEADERS:
        response = await client.request(
            method, concrete, json=body, headers={"Authorization": header}
        )
        assert_error(response, 401, "invalid_token")
        assert response.headers["www-authenticate"] == f'{REALM}, error="invalid_token"', header
        assert "A" * 40 not in response.text, "the error must not echo the credential"

    revoked, _ = await state.tokens.create("revoked", ["*"])
    assert await store.revoke_token("revoked")
    expired, _ = await state.tokens.create("expired", ["*"], "1h")
    raw_db.execute(
        "UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE name = 'expired'"
    )
    for secret, word in ((revoked, "revoked"), (expired, "expired")):
        response = await client.request(method, concrete, json=body, headers=bearer(secret))
        error = assert_error(response, 401, "invalid_token")
        assert word in error["error"]
        assert response.headers["www-authenticate"] == f'{REALM}, error="invalid_token"'

    if scope == "any":
        return
    # A token with none of the scopes that would do: 403, naming one that would.
    outsider = next(s for s in SCOPES if not _grants(s, scope))
    response = await client.request(
        method, concrete, json=body, headers=bearer(await make_token(outsider))
    )
    if (method, path) in OWN_JOBS_ONLY:
        assert_error(response, 404, "not_found")  # not its own job
        return
    assert_error(response, 403, "insufficient_scope")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'{REALM}, error="insufficient_scope", scope="'), challenge
    named = challenge.rsplit('scope="', 1)[1].rstrip('"')
    # The named scope really is enough.
    concrete, body = await _concrete(store, path)
    response = await client.request(
        method, concrete, json=body, headers=bearer(await make_token(named))
    )
    assert response.status_code not in (401, 403), (named, response.text)


def _grants(held: str, needed: str) -> bool:
    from queue_service.scopes import grants

    return grants([held], needed)


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), OPEN)
async def test_open_routes_need_no_token_and_ignore_a_bad_one(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert (await client.request(method, path)).status_code == 200
    response = await client.request(method, path, headers={"Authorization": "Bearer junk"})
    assert response.status_code == 200


# -- the scope matrix -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
async def test_scope_matrix(
    client: httpx.AsyncClient,
    store: SQLiteStore,
    make_token: TokenFactory,
    route: tuple[str, str],
    scope: str,
) -> None:
    method, path = route
    expected = MATRIX[route][scope]
    status, view = expected if isinstance(expected, tuple) else (expected, None)
    concrete, body = await _concrete(store, path)
    response = await client.request(
        method, concrete, json=body, headers=bearer(await make_token(scope))
    )
    if status == DENIED:
        assert_error(response, 403, "insufficient_scope")
        return
    if status == NOT_FOUND:
        assert_error(response, 404, "not_found")
        return
    assert response.status_code == status, response.text
    if path == "/metrics":  # the Prometheus text format, not JSON
        assert response.headers["content-type"].startswith("text/plain"), response.headers
        assert "queue_service_jobs" in response.text
        return
    answer = response.json()
    if view == "detail":
        assert DETAIL_ONLY <= set(answer), answer
        assert answer["payload"] == {"k": 1}
    elif view == "status":
        assert not DETAIL_ONLY & set(answer), answer
    if path == "/jobs":
        for item in answer["jobs"]:
            assert not DETAIL_ONLY & set(item), "a listing never carries payloads"
    if method == "POST" and path.startswith("/plugin/"):
        assert answer["status"] == Status.QUEUED


@pytest.mark.anyio
async def test_scopes_of_one_token_add_up(
    client: httpx.AsyncClient, store: SQLiteStore, make_token: TokenFactory
) -> None:
    headers = bearer(await make_token("jobs:status:ro", "plugin:ro"))
    job_id = (await store.enqueue(NewJob("echo", "poll", {"k": 1}, run_after=LATER))).job_id
    view = await client.get(f"/job/{job_id}", headers=headers)
    assert view.status_code == 200 and "payload" not in view.json()
    assert (await client.post("/plugin/echo/poll", json={}, headers=headers)).status_code == 202
    assert_error(
        await client.post("/plugin/echo/handle", json={}, headers=headers),
        403,
        "insufficient_scope",
    )
    assert_error(await client.get("/schedules", headers=headers), 403, "insufficient_scope")


# -- no token anywhere but the Authorization header -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
async def test_no_token_is_accepted_in_the_query_string_or_a_form_body(
    client: httpx.AsyncClient,
    store: SQLiteStore,
    make_token: TokenFactory,
    method: str,
    path: str,
    scope: str,
) -> None:
    secret = await make_token("*")
    concrete, body = await _concrete(store, path)
    for name in ("access_token", "token", "bearer_token", "api_key"):
        response = await client.request(method, f"{concrete}?{name}={secret}", json=body)
        assert_error(response, 401, "unauthorized")
        # Even next to a valid header the query-string token is refused, by name.
        response = await client.request(
            method, f"{concrete}?{name}={secret}", json=body, headers=bearer(secret)
        )
        error = assert_error(response, 400, "unknown_parameter", param=name)
        assert secret not in response.text
        if name == "access_token":
            assert "query string" in error["error"]
    # RFC 6750 section 2.2: a form-encoded body parameter is not accepted either.
    response = await client.request(
        method,
        concrete,
        content=f"access_token={secret}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 401, "unauthorized")
    # Nor a cookie, nor another header.
    response = await client.request(
        method,
        concrete,
        json=body,
        headers={"Cookie": f"access_token={secret}", "X-Api-Key": secret, "Token": secret},
    )
    assert_error(response, 401, "unauthorized")


# -- no token in the logs of a real server ----------------------------------------------------


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("authlog"), log_level="debug")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_no_token_reaches_any_log_line(debug_server: LiveServer) -> None:
    """Every token in use, on every route, through the success, 401, 403 and 400 paths, the
    access log and a malformed request: the server's whole output (debug level) holds none."""
    server = debug_server
    tokens = server.seeded.tokens
    secrets = list(tokens.values())
    unknown = "qs_" + "U" * 43
    base = server.base
    job_id = server.seeded.jobs["queued"][0]
    with httpx.Client(base_url=base, timeout=30) as http:
        for method, path, _ in PROTECTED:
            concrete = path.replace("{job_id}", job_id).replace("{plugin}/{command}", "echo/poll")
            body = {"payload": {"note": "hello"}} if concrete.startswith("/plugin/") else None
            for scope, secret in tokens.items():
                http.request(method, concrete, json=body, headers=bearer(secret))
                http.request(method, f"{concrete}?access_token={secret}", json=body)
                http.request(
                    method, f"{concrete}?access_token={secret}", json=body, headers=bearer(secret)
                )
            for header in (f"Bearer {unknown}", f"Basic {unknown}", f"Bearer {unknown}x", unknown):
                http.request(method, concrete, json=body, headers={"Authorization": header})
        # A token where an id goes (the access log prints the path), and in a body.
        http.get(f"/job/{tokens['*']}", headers=bearer(tokens["*"]))
        # The access log prints query strings raw: percent-encoded, partly encoded, and
        # prefix-less tokens must not get through either.
        secret = tokens["jobs:rw"]
        encoded = "".join(f"%{ord(c):02X}" for c in secret)
        http.get(f"/jobs?access_token={encoded}", headers=bearer(tokens["*"]))
        http.get(f"/jobs?token={secret[:3]}%5F{secret[3:]}", headers=bearer(tokens["*"]))
        http.get(f"/jobs?token={secret[3:]}", headers=bearer(tokens["*"]))
        http.get(f"/job/{encoded}", headers=bearer(tokens["*"]))
        http.post(
            "/plugin/echo/poll",
            json={"payload": {"leaked": tokens["jobs:ro"]}},
            headers=bearer(tokens["plugin:ro"]),
        )
        # MCP: every token at /mcp, listing its tools and calling one with a token as the
        # argument (the SDK's own debug logging sees the messages).
        for secret in [*secrets, unknown]:
            for message in (
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": "get_job", "arguments": {"job_id": secret}},
                },
            ):
                http.post("/mcp", json=message, headers=bearer(secret))
    # A request uvicorn cannot parse, carrying a token.
    import socket

    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + tokens["*"].encode()
            + b"\r\nBad Header\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    log = server.stop()
    for status in ("200", "202", "401", "403", "400"):
        assert f'HTTP/1.1" {status}' in log, f"the access log lacks a {status} line"
    for secret in [*secrets, unknown]:
        assert secret not in log
        assert secret[3:] not in log
        assert secret[3:20] not in log, "a fragment of a token reached the log"
    assert hash_token(tokens["*"]) not in log


def test_only_token_hashes_are_stored(debug_server: LiveServer) -> None:
    raw = sqlite3.connect(debug_server.db)
    try:
        # (The log test put one token into a job's payload on purpose; that is user data.)
        stored = repr(raw.execute("SELECT * FROM tokens").fetchall())
    finally:
        raw.close()
    for scope, secret in debug_server.seeded.tokens.items():
        assert secret[3:] not in stored, scope
        assert hash_token(secret) in stored, scope


@pytest.mark.parametrize(
    "shape",
    [
        "{t}",
        "Bearer {t}",
        "bearer\t{t}",
        "access_token={t}",
        "{body}",
        "token={body}&x=1",
        "{encoded}",
        "{double}",
        "qs_%5F{body}",
        '{{"note": "{t}"}}',
    ],
)
def test_redact_hides_every_shape_of_a_token(shape: str) -> None:
    from queue_service.auth import new_secret
    from queue_service.logsetup import redact

    token = new_secret()
    body = token[3:]
    encoded = "".join(f"%{ord(c):02X}" for c in token)
    line = "GET /jobs?" + shape.format(
        t=token, body=body, encoded=encoded, double=encoded.replace("%", "%25")
    )
    cleaned = redact(line)
    assert body not in cleaned and body[:20] not in cleaned, cleaned
    assert "[redacted]" in cleaned


def test_redact_leaves_ordinary_lines_alone() -> None:
    from queue_service.logsetup import redact

    for line in (
        'GET /jobs?created_after=2026-01-01T00:00:00%2B01:00 HTTP/1.1" 200',
        "job 8710308b-3ec0-424e-9649-a9a5d43b9d6f is dead: its plugin is not installed",
        "hash " + "a" * 64,
    ):
        assert redact(line) == line

"""Bounded resources: the page size cap, the body cap (declared and chunked), and the memory
of a real server under a burst of large requests.

Memory is read from /proc/PID/status (VmRSS now, VmHWM the peak), not psutil. The bound is
generous on purpose: this is a resource bound, not a speed target.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from queue_service.api import ServiceState, create_app
from queue_service.api import app as app_module
from queue_service.api.app import LARGE_BODY_BYTES, MAX_BODY_BYTES, MAX_LARGE_BODIES
from queue_service.api.operations import Context, Operation
from queue_service.api.params import DEFAULT_LIMIT, MAX_LIMIT
from queue_service.store import NewJob, SQLiteStore
from tests.conftest import assert_error
from tests.live_server import LiveServer, jobs_snapshot, raw_request, start_server

#: Requests in the burst; QS_BURST_SCALE=10 for a soak.
SCALE = int(os.environ.get("QS_BURST_SCALE", "1"))
BODY_REQUESTS = 200 * SCALE
QUERY_REQUESTS = 2000 * SCALE
CONCURRENCY = 32
#: How much the server may grow over its warmed-up size, at its peak.
GROWTH_BOUND_KIB = 100 * 1024


# -- page size -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_page_size_is_capped(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    await store.enqueue_many([NewJob("p", "c") for _ in range(MAX_LIMIT + 30)])
    default = (await client.get("/jobs", headers=admin_headers)).json()
    assert len(default["jobs"]) == DEFAULT_LIMIT and default["total"] == MAX_LIMIT + 30
    largest = (await client.get(f"/jobs?limit={MAX_LIMIT}", headers=admin_headers)).json()
    assert len(largest["jobs"]) == MAX_LIMIT and largest["next_cursor"]
    for limit in (MAX_LIMIT + 1, 10**6, 10**30):
        response = await client.get(f"/jobs?limit={limit}", headers=admin_headers)
        assert_error(response, 400, "invalid_parameter", param="limit")
    # A page never carries payloads, whatever their size.
    await store.enqueue(NewJob("p", "c", {"blob": "x" * 500_000}))
    page = await client.get(f"/jobs?limit={MAX_LIMIT}", headers=admin_headers)
    assert len(page.content) < 100_000


# -- body size, in-process -------------------------------------------------------------------


@pytest.mark.anyio
async def test_body_cap_is_exact(
    client: httpx.AsyncClient, store: SQLiteStore, admin_headers: dict[str, str]
) -> None:
    headers = {**admin_headers, "Content-Type": "application/json"}
    prefix, suffix = b'{"payload": {"s": "', b'"}}'
    at_limit = prefix + b"x" * (MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(at_limit) == MAX_BODY_BYTES
    # The route exists only with a plugin; any 4xx but 413 shows the cap let it through.
    response = await client.post("/plugin/none/poll", content=at_limit, headers=headers)
    assert_error(response, 404, "not_found")
    response = await client.post("/plugin/none/poll", content=at_limit + b" ", headers=headers)
    assert_error(response, 413, "payload_too_large")

    async def chunked(total: int) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            part = b" " * min(65536, total - sent)
            sent += len(part)
            yield part

    response = await client.post(
        "/plugin/none/poll", content=chunked(MAX_BODY_BYTES + 1), headers=headers
    )
    assert_error(response, 413, "payload_too_large")


# -- over the wire ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("bounded"))
    try:
        yield server
    finally:
        log = server.stop()
    assert "Traceback" not in log, log[-5000:]


def _head(server: LiveServer, target: str, extra: str) -> bytes:
    token = server.seeded.tokens["*"]
    return (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


@pytest.mark.slow
def test_a_huge_declared_body_is_refused_before_it_is_read(live: LiveServer) -> None:
    """Content-Length: 10 GiB and not one byte sent: the answer comes at once."""
    started = time.monotonic()
    status, _, payload = raw_request(
        live, _head(live, "/plugin/echo/poll", f"Content-Length: {10 * 2**30}\r\n"), timeout=10
    )
    assert status == 413 and json.loads(payload)["code"] == "payload_too_large"
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_an_endless_chunked_body_is_cut_off(live: LiveServer) -> None:
    """No Content-Length, chunks that never end: 413 after about a mebibyte."""
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while sent < 64 * MAX_BODY_BYTES:  # give up long after the server should have
            sent += 65536
            yield chunk

    status, _, payload = raw_request(
        live, _head(live, "/plugin/echo/poll", "Transfer-Encoding: chunked\r\n"), endless()
    )
    assert status == 413 and json.loads(payload)["code"] == "payload_too_large"
    assert sent < 16 * MAX_BODY_BYTES, "the server kept reading far past the cap"


def _large_body(kind: int) -> tuple[bytes, bytes, int]:
    """(extra headers, body, expected status) for one of four large hostile bodies."""
    if kind == 0:  # declared over the cap: refused unread
        body = b"x" * (MAX_BODY_BYTES + 1024)
        return b"Content-Length: %d\r\n" % len(body), body, 413
    if kind == 1:  # chunked over the cap
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        return b"Transfer-Encoding: chunked\r\n", chunk * 20 + b"0\r\n\r\n", 413
    if kind == 2:  # just under the cap, and the costliest JSON to hold in memory: 330k dicts
        items = b",".join([b"{}"] * ((MAX_BODY_BYTES - 64) // 3))
        body = b'{"payload": {"a": [' + items + b']}, "no_such_key": 1}'
        return b"Content-Length: %d\r\n" % len(body), body, 400
    # just under the cap, one huge string, refused by validation (max_attempts too big)
    body = b'{"payload": {"s": "' + b"y" * (MAX_BODY_BYTES - 64) + b'"}, "max_attempts": 1000}'
    return b"Content-Length: %d\r\n" % len(body), body, 400


@pytest.mark.slow
def test_memory_stays_bounded_under_a_burst_of_large_requests(live: LiveServer) -> None:
    before_jobs = jobs_snapshot(live.db)
    # Warm up every code path once, so the baseline includes imports and caches.
    for kind in range(4):
        extra, body, expected = _large_body(kind)
        assert raw_request(live, _head(live, "/plugin/echo/poll", extra.decode()), body)[0] == (
            expected
        )
    with httpx.Client(base_url=live.base, headers=live.headers("*"), timeout=60) as http:
        http.get("/jobs", params={"command": "c" * 200})
    baseline = live.rss_kib()
    bodies = [_large_body(kind) for kind in range(4)]

    def send_body(i: int) -> int:
        extra, body, expected = bodies[i % 4]
        status = raw_request(live, _head(live, "/plugin/echo/poll", extra.decode()), body)[0]
        assert status == expected, (i % 4, status)
        return status

    huge_queries = [
        {"command": "c" * 15_000},  # within the 16 KiB request head: parsed, then a 400
        {"status": ",".join(["ok"] * 4_000)},  # 12 KB of valid words: served
        {"cursor": "9" * 14_000},
        {"x" * 14_000: "1"},
        {"plugin": "p" * 40_000},  # over the head limit: refused by the HTTP parser
    ]

    clients = threading.local()
    opened: list[httpx.Client] = []

    def send_query(i: int) -> int:
        # One keep-alive client per thread: building a client per request costs more than
        # the request.
        if not hasattr(clients, "http"):
            clients.http = httpx.Client(base_url=live.base, headers=live.headers("*"), timeout=60)
            opened.append(clients.http)
        status: int = clients.http.get(
            "/jobs", params=huge_queries[i % len(huge_queries)]
        ).status_code
        assert status in (200, 400), status
        return status

    peak = 0
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = [pool.submit(send_body, i) for i in range(BODY_REQUESTS)]
        futures += [pool.submit(send_query, i) for i in range(QUERY_REQUESTS)]
        while not all(f.done() for f in futures):
            peak = max(peak, live.rss_kib())
            time.sleep(0.05)
        try:
            statuses = [f.result() for f in futures]
        finally:
            for http in opened:
                http.close()
    elapsed = time.monotonic() - started
    after = live.rss_kib()
    high_water = _vm_hwm_kib(live.pid)
    print(
        f"\nburst: {BODY_REQUESTS} large bodies + {QUERY_REQUESTS} huge queries, "
        f"{CONCURRENCY} at a time, {elapsed:.1f} s; RSS baseline {baseline // 1024} MiB, "
        f"peak {max(peak, high_water) // 1024} MiB, after {after // 1024} MiB"
    )
    assert statuses.count(413) == BODY_REQUESTS // 2
    assert max(peak, high_water) - baseline < GROWTH_BOUND_KIB
    assert after - baseline < GROWTH_BOUND_KIB
    # Still healthy, and nothing was written.
    assert httpx.get(f"{live.base}/healthz", timeout=10).status_code == 200
    assert jobs_snapshot(live.db) == before_jobs


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# -- large bodies take turns ---------------------------------------------------------------


class _Probe:
    """A test route that records how many requests are inside it at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0

    async def handler(self, request: Request, ctx: Context) -> Response:
        body = await request.body()
        self.inside += 1
        self.most = max(self.most, self.inside)
        await asyncio.sleep(0.05)
        self.inside -= 1
        return Response(b'{"size": %d}' % len(body), media_type="application/json")


@pytest.mark.anyio
async def test_large_bodies_are_handled_a_few_at_a_time(state: ServiceState) -> None:
    """Before: every request buffered and decoded its body at once; 32 concurrent 1 MiB
    bodies of `[{},{},…]` took the server from 55 to 240 MiB. Now MAX_LARGE_BODIES at a
    time; small bodies never wait."""
    probe = _Probe()
    app = create_app(
        state,
        extra_operations=(Operation("POST", "/test/probe", "probe", "", "", probe.handler, None),),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        large = b" " * (LARGE_BODY_BYTES + 1)
        answers = await asyncio.gather(
            *(client.post("/test/probe", content=large) for _ in range(4 * MAX_LARGE_BODIES))
        )
        assert all(a.status_code == 200 for a in answers)
        assert probe.most == MAX_LARGE_BODIES

        probe.most = 0
        small = b" " * LARGE_BODY_BYTES
        answers = await asyncio.gather(
            *(client.post("/test/probe", content=small) for _ in range(12))
        )
        assert all(a.status_code == 200 for a in answers)
        assert probe.most == 12


@pytest.mark.anyio
async def test_a_stalled_large_body_gives_its_turn_back(
    state: ServiceState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "BODY_READ_TIMEOUT_S", 0.2)
    app = create_app(state)
    stall = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"{"
        await stall.wait()  # never sends the rest
        yield b"}"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = time.monotonic()
        response = await client.post("/plugin/x/y", content=slow())
        assert_error(response, 400, "invalid_body")
        assert time.monotonic() - started < 5
    stall.set()


@pytest.mark.anyio
async def test_a_content_length_beside_chunked_is_refused_unread(state: ServiceState) -> None:
    """`Content-Length: 1` plus `Transfer-Encoding: chunked` could once skip the turns of
    large bodies; it is now refused as ambiguous (400) before its body is read or a turn
    is taken."""
    probe = _Probe()
    app = create_app(
        state,
        extra_operations=(Operation("POST", "/test/probe", "probe", "", "", probe.handler, None),),
    )

    async def call() -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/test/probe",
            "raw_path": b"/test/probe",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")],
            "client": ("127.0.0.1", 1),
            "server": ("t", 80),
        }
        parts = [{"type": "http.request", "body": b" " * 65536, "more_body": True}] * 3
        parts.append({"type": "http.request", "body": b"", "more_body": False})
        status: list[int] = []

        async def receive() -> MutableMapping[str, Any]:
            return parts.pop(0) if parts else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))

        await app(scope, receive, send)
        return status[0]

    assert await asyncio.gather(*(call() for _ in range(8))) == [400] * 8
    assert probe.most == 0

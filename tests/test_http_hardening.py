"""The HTTP edge of `serve`: which proxies are believed, ambiguous requests, slow clients."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from queue_service.api import ServiceState, create_app
from queue_service.config import ConfigError, parse_config
from queue_service.http_limits import HEADER_TIMEOUT_S
from queue_service.server import ServeProtocol
from queue_service.store import SQLiteStore
from tests.conftest import free_port
from tests.live_server import LiveServer, jobs_snapshot, raw_request, start_server


def test_forwarded_allow_ips_defaults_to_nobody() -> None:
    assert parse_config({}).service.forwarded_allow_ips == ()
    config = parse_config({"service": {"forwarded_allow_ips": ["10.0.0.1", " 10.0.0.0/8", "::1"]}})
    assert config.service.forwarded_allow_ips == ("10.0.0.1", "10.0.0.0/8", "::1")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "must be a list of IP addresses or networks"),
        (["localhost"], "'localhost' is not an IP address or network"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or network"),
        ([1], "must be a list"),
    ],
)
def test_forwarded_allow_ips_names_a_bad_entry(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"service": {"forwarded_allow_ips": value}})
    (problem,) = info.value.problems
    assert problem.startswith("service.forwarded_allow_ips: ") and message in problem


# -- over the wire, against a real `queue-service serve` ---------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("hardening"))
    try:
        yield server
    finally:
        log = server.stop()
    assert "Traceback" not in log, log[-5000:]


def _port(server: LiveServer) -> int:
    return int(server.base.rsplit(":", 1)[1])


def _canonical_400(status: int, headers: dict[str, str], payload: bytes) -> str:
    assert status == 400, (status, payload[:300])
    assert headers["content-type"].startswith("application/json"), headers
    body = json.loads(payload)
    assert set(body) <= {"error", "code", "param", "allowed"}, body
    assert body["code"] == "malformed_request", body
    return str(body["error"])


@pytest.mark.slow
def test_two_authorization_headers_are_refused(live: LiveServer) -> None:
    good, other = live.seeded.tokens["*"], live.seeded.tokens["jobs:status:ro"]
    for first, second in ((good, other), (good, good), (other, good)):
        head = (
            f"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n"
            f"Authorization: Bearer {second}\r\nConnection: close\r\n\r\n"
        ).encode()
        message = _canonical_400(*raw_request(live, head))
        assert "Authorization" in message and first not in message


@pytest.mark.slow
def test_content_length_with_transfer_encoding_is_refused_and_nothing_runs(
    live: LiveServer,
) -> None:
    before = jobs_snapshot(live.db)
    body = b'{"payload": {"smuggled": true}}'
    head = (
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + live.seeded.tokens["*"].encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    # No `Connection: close`: the server must close by itself, since how the bytes after
    # this request should be read is exactly what is ambiguous.
    with socket.create_connection(("127.0.0.1", _port(live)), timeout=30) as sock:
        sock.sendall(head + chunked)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    message = _canonical_400(int(lines[0].split()[1]), headers, payload)
    # llhttp (serve's parser) refuses this shape itself, before the app's own check (which
    # names both headers, and answers it on h11) sees it.
    assert message == "malformed HTTP request: Invalid HTTP request received."
    assert headers.get("connection") == "close"
    assert jobs_snapshot(live.db) == before


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock`, without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def slowloris(port: int, count: int, head: bytes, trickle: bytes, give_up_s: float) -> float:
    """Open `count` connections that send `head` and then one `trickle` every 0.2 s, and
    meanwhile ask GET /healthz on fresh connections. Returns the seconds until the server
    had closed them all; fails when it has not within `give_up_s`, or when a normal
    request is not answered while they hang on."""
    started = time.monotonic()
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        for sock in slow:
            sock.sendall(head)
        open_ones = list(slow)
        while open_ones:
            assert time.monotonic() - started < give_up_s, f"{len(open_ones)} still open"
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert response.status_code == 200
            for sock in list(open_ones):
                if _closed_by_server(sock):
                    open_ones.remove(sock)
                    continue
                try:
                    sock.sendall(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    open_ones.remove(sock)
            time.sleep(0.2)  # the trickle's pace; the loop ends on observed state
        return time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.slow
def test_slow_headers_are_cut_off_and_others_are_served(live: LiveServer) -> None:
    elapsed = slowloris(
        _port(live),
        count=20,
        head=b"GET /jobs HTTP/1.1\r\nHost: x\r\n",
        trickle=b"X-Slow: 1\r\n",
        give_up_s=HEADER_TIMEOUT_S + 10,
    )
    assert elapsed >= HEADER_TIMEOUT_S - 1


# -- the same protocol with small limits, on uvicorn in a thread ----------------------------


class SmallLimits(ServeProtocol):
    header_timeout_s = 1.0
    body_timeout_s = 1.0
    max_connections = 8


@pytest.fixture
def small(tmp_path: Path) -> Iterator[int]:
    """The app on uvicorn with SmallLimits, listening on 127.0.0.1; yields the port."""
    port = free_port()
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        store = SQLiteStore(tmp_path / "q.db")
        await store.open()
        config = uvicorn.Config(
            create_app(ServiceState.for_store(store)),
            host="127.0.0.1",
            port=port,
            log_config=None,
            http=SmallLimits,
        )
        servers.append(uvicorn.Server(config))
        try:
            await servers[0].serve()
        finally:
            await store.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
    try:
        yield port
    finally:
        servers[0].should_exit = True
        thread.join(timeout=30)


def test_a_slow_body_is_cut_off(small: int) -> None:
    elapsed = slowloris(
        small,
        count=4,
        head=b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        trickle=b" ",
        give_up_s=SmallLimits.body_timeout_s + 10,
    )
    assert elapsed >= SmallLimits.body_timeout_s - 0.5


def test_a_slow_head_on_a_kept_alive_connection_is_cut_off(small: int) -> None:
    with socket.create_connection(("127.0.0.1", small), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # /healthz is one JSON object
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, not by the 10 s timeout
        assert time.monotonic() - started < 5


def test_connections_beyond_the_limit_get_a_canonical_503(small: int) -> None:
    held = [socket.create_connection(("127.0.0.1", small), timeout=10) for _ in range(8)]
    try:
        with socket.create_connection(("127.0.0.1", small), timeout=10) as extra:
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert json.loads(body)["code"] == "unavailable"
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, the server answers again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{small}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)

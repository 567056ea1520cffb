"""The HTTP/1.1 layer under the app, over real sockets: both protocol classes answer what they
cannot parse with the canonical JSON error, and bound the request head.

`serve` runs ServeProtocol, on httptools (queue_service.server._http_protocol);
JsonErrorH11Protocol is the h11 alternative. Each runs here in uvicorn on a free port, in a
thread, on the event loop `serve` uses, with the real app over a temporary database.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from queue_service.api import ServiceState, create_app
from queue_service.server import (
    MAX_REQUEST_HEAD_BYTES,
    JsonErrorH11Protocol,
    ServeProtocol,
    http_config,
    run_event_loop,
)
from queue_service.store import SQLiteStore
from tests.conftest import free_port

STACKS = {"httptools": ServeProtocol, "h11": JsonErrorH11Protocol}


@dataclass(frozen=True)
class Served:
    stack: str
    port: int


@pytest.fixture(scope="module", params=list(STACKS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("stack") / "queue.db"
    chosen = free_port()
    servers: list[uvicorn.Server] = []

    async def serve() -> int:
        store = SQLiteStore(db)
        await store.open()
        try:
            config = http_config(
                create_app(ServiceState.for_store(store)),
                host="127.0.0.1",
                port=chosen,
                log_level="error",
                access_log=False,
            )
            config.http = STACKS[request.param]
            servers.append(uvicorn.Server(config))
            await servers[0].serve()
            return 0
        finally:
            await store.close()

    def run() -> None:
        run_event_loop(serve())

    thread = threading.Thread(target=run, name=f"uvicorn-{request.param}")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not (servers and servers[0].started):
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield Served(request.param, chosen)
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(timeout=20)


def exchange(served: Served, parts: Iterable[bytes]) -> bytes:
    """Send `parts` one write at a time, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(0.001)  # separate reads on the server's side
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the upload ended
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The (status, headers, body) of each response in `raw` (all with Content-Length)."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers["content-length"])
        answers.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return answers


def assert_malformed(raw: bytes) -> None:
    [(status, headers, body)] = responses(raw)
    assert status == 400, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert set(error) == {"error", "code"} and error["error"], error
    assert error["code"] == "malformed_request"


CLOSE = b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n",
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n",
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n",
        b"G@T /jobs HTTP/1.1\r\nHost: x\r\n",
        b"GET /jobs HTTP/1.1\r\nHost: x\r\nBad Header\r\n",
        b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n",
    ],
    ids=lambda h: h.split(b"\r\n")[-2].decode("latin-1")[:24],
)
def test_an_unparseable_head_gets_the_canonical_400(served: Served, head: bytes) -> None:
    assert_malformed(exchange(served, [head + CLOSE]))


def test_a_bad_chunk_size_gets_the_canonical_400(served: Served) -> None:
    head = b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    assert_malformed(exchange(served, [head + CLOSE, b"zz\r\nabc\r\n0\r\n\r\n"]))


def test_bytes_that_are_not_http_get_the_canonical_400(served: Served) -> None:
    assert_malformed(exchange(served, [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4]))


def test_a_request_head_over_the_limit_gets_the_canonical_400(served: Served) -> None:
    """A head that keeps coming is refused once it passes the limit (within one read), not
    buffered for ever."""
    pieces = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "]
    pieces += [b"a" * 1024] * (4 * MAX_REQUEST_HEAD_BYTES // 1024)
    assert_malformed(exchange(served, pieces))


def test_heads_under_the_limit_are_served_one_after_another(served: Served) -> None:
    """The limit is per request: several large heads on one keep-alive connection, which
    add up to more than the limit, are all served."""
    size = MAX_REQUEST_HEAD_BYTES * 3 // 4
    parts = []
    for last in (False, False, True):
        parts.append(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        parts += [b"a" * 1024] * (size // 1024)
        parts.append(b"\r\n" + (CLOSE if last else b"\r\n"))
    answers = responses(exchange(served, parts))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(json.loads(body)["status"] == "ok" for _, _, body in answers)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n",
    ],
    ids=["CL+TE", "obs-fold", "HTTP/9.9", "CONNECT"],
)
def test_what_llhttp_refuses_and_h11_let_through(served: Served, head: bytes) -> None:
    """httptools (what `serve` runs) refuses these too, with the same canonical answer."""
    if served.stack != "httptools":
        pytest.skip("h11 accepts these (and waits for a chunked body after CL+TE)")
    assert_malformed(exchange(served, [head + CLOSE]))

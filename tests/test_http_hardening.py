"""The HTTP edge of `serve`: which proxies are believed, ambiguous requests, slow clients."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from queue_service.config import ConfigError, parse_config
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
    assert "Content-Length" in message and "Transfer-Encoding" in message
    assert headers.get("connection") == "close"
    assert jobs_snapshot(live.db) == before

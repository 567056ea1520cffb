"""Every error path answers with the one canonical JSON body, never HTML or plain text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from queue_service.api import ServiceState, create_app
from queue_service.api.operations import Context, Operation
from queue_service.errors import ERROR_CODES, ApiError, error_body
from queue_service.store import StoreUnavailable
from tests.conftest import assert_error

pytestmark = pytest.mark.anyio


async def _boom(request: Request, ctx: Context) -> Response:
    raise RuntimeError("secret internals qs_" + "Z" * 43)


async def _unavailable(request: Request, ctx: Context) -> Response:
    raise StoreUnavailable("the database /x.db is read-only; writes are refused")


async def _echo(request: Request, ctx: Context) -> Response:
    return Response((await request.body()) or b"{}", media_type="application/json")


EXTRA = (
    Operation("GET", "/test/boom", "boom", "", "", _boom, None),
    Operation("GET", "/test/unavailable", "unavailable", "", "", _unavailable, None),
    Operation("POST", "/test/echo", "echo", "", "", _echo, None),
)


@pytest.fixture
async def test_client(state: ServiceState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(state, extra_operations=EXTRA)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_404_for_unknown_route(test_client: httpx.AsyncClient) -> None:
    assert_error(await test_client.get("/does/not/exist"), 404, "not_found")


async def test_405_carries_allow(test_client: httpx.AsyncClient) -> None:
    response = await test_client.delete("/jobs")
    body = assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"] and "GET" in body["allowed"]


async def test_500_is_json_and_hides_internals(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/test/boom")
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in body["error"] and "qs_" not in response.text


async def test_503_when_the_store_is_unavailable(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/test/unavailable")
    body = assert_error(response, 503, "unavailable")
    assert "read-only" in body["error"] and response.headers["retry-after"] == "1"


async def test_413_for_a_declared_oversized_body(test_client: httpx.AsyncClient) -> None:
    response = await test_client.post(
        "/test/echo", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")


async def test_413_for_an_oversized_chunked_body(test_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 65536

    response = await test_client.post("/test/echo", content=chunks())
    assert_error(response, 413, "payload_too_large")


async def test_a_body_at_the_limit_passes(test_client: httpx.AsyncClient) -> None:
    body = b'"' + b"z" * (1024 * 1024 - 2) + b'"'
    response = await test_client.post("/test/echo", content=body)
    assert response.status_code == 200 and len(response.content) == len(body)


async def test_openapi_rejects_parameters(test_client: httpx.AsyncClient) -> None:
    assert_error(await test_client.get("/openapi.json?x=1"), 400, "unknown_parameter", param="x")


def test_every_error_code_has_a_client_or_server_status() -> None:
    for code, status in ERROR_CODES.items():
        assert 400 <= status < 600, code
    with pytest.raises(ValueError, match="unknown error code"):
        ApiError("made_up", "x")


def test_an_error_quoting_a_lone_surrogate_is_still_json() -> None:
    """Client text quoted in a message may hold a lone surrogate, which UTF-8 cannot carry;
    the body escapes it rather than failing while an error is reported."""
    body = error_body("invalid_parameter", "bad value '\ud800'", param="q\udfff")
    assert json.loads(body) == {
        "error": "bad value '\ud800'",
        "code": "invalid_parameter",
        "param": "q\udfff",
    }

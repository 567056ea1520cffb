"""The Starlette application: routes from the operation registry, one error shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queue_service.api import (
    alert_routes,
    examples,
    index,
    jobs,
    mcp,
    metrics,
    plugins,
    sync_routes,
    ui,
)
from queue_service.api.openapi import OpenApiCache, base_url
from queue_service.api.operations import Context, Operation, endpoint
from queue_service.api.state import ServiceState
from queue_service.errors import ApiError, error_response
from queue_service.store import QueryTimeout, StoreUnavailable

log = logging.getLogger("queue_service.api")

#: The largest request body accepted, in bytes.
MAX_BODY_BYTES = 1024 * 1024
#: A request whose body may be larger than this (declared so, or chunked) is "large".
LARGE_BODY_BYTES = 8 * 1024
#: Large requests are read and handled at most this many at a time. The others wait with
#: their bodies unread (uvicorn stops reading the socket), so the memory bodies can take -
#: the raw bytes plus the objects JSON decoding makes of them, up to ~25x for `[{},{},…]` -
#: stays bounded however many arrive at once.
MAX_LARGE_BODIES = 2
#: A large body must arrive within this many seconds once its turn has come, so that slow
#: uploads cannot hold the turns for ever.
BODY_READ_TIMEOUT_S = 30.0
#: Requests served at once; beyond it the answer is 503.
MAX_IN_FLIGHT = 512


async def _openapi(request: Request, ctx: Context) -> Response:
    cache: OpenApiCache = request.app.state.openapi
    body = cache.body(ctx.state.registry, base_url(request.scope))
    return Response(body, media_type="application/json")


OPENAPI_OPERATION = Operation(
    method="GET",
    path="/openapi.json",
    operation_id="get_openapi",
    summary="This OpenAPI 3.1 document",
    description=(
        "Generated from the same models that shape the responses, with one operation per "
        "installed plugin command. `servers` holds the absolute URL the request reached "
        "(scheme from X-Forwarded-Proto only behind a proxy in "
        "service.forwarded_allow_ips, host from the Host header)."
    ),
    handler=_openapi,
    scope=None,
    responses={200: (None, "The OpenAPI document.")},
    examples={200: examples.OPENAPI},
    tags=("service",),
)

CORE_OPERATIONS: tuple[Operation, ...] = (
    *index.OPERATIONS,
    *jobs.OPERATIONS,
    OPENAPI_OPERATION,
    *plugins.OPERATIONS,
    *sync_routes.OPERATIONS,
    *metrics.OPERATIONS,
    *alert_routes.OPERATIONS,
)


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413, reading at most `limit` + one chunk.

    A declared Content-Length over the limit is refused before any body is read;
    a chunked body is counted as it arrives. Large bodies take turns (MAX_LARGE_BODIES).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit
        self.turns = asyncio.Semaphore(MAX_LARGE_BODIES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = 0
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._too_large(scope, receive, send)
                    return
                declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and not declared:
            # No body (most requests): nothing to bound or buffer.
            await self.app(scope, receive, send)
            return
        # A chunked body is as long as the client likes (a Content-Length beside it does not
        # bound it: Transfer-Encoding wins), so it is large.
        if chunked or declared > LARGE_BODY_BYTES:
            async with self.turns:
                await self._buffered(scope, receive, send, deadline=BODY_READ_TIMEOUT_S)
        else:
            await self._buffered(scope, receive, send, deadline=None)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = error_response(
            "payload_too_large", f"the request body is over the {self.limit} byte limit"
        )
        await too_large(scope, receive, send)

    async def _buffered(
        self, scope: Scope, receive: Receive, send: Send, *, deadline: float | None
    ) -> None:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(deadline):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        break  # the client went away
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        break
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            slow = error_response(
                "invalid_body", f"the request body did not arrive within {deadline} s"
            )
            await slow(scope, receive, send)
            return
        if message["type"] != "http.request":
            # Let the app see the disconnect.
            await self.app(scope, _replay([message]), send)
            return
        if size > self.limit:
            chunks.clear()
            await self._too_large(scope, receive, send)
            return
        body = b"".join(chunks)
        chunks.clear()
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


class ConcurrencyLimitMiddleware:
    """Answer 503 (canonical body, Retry-After) beyond `limit` requests in flight, so a
    flood cannot queue unbounded work behind the event loop."""

    def __init__(self, app: ASGIApp, limit: int = MAX_IN_FLIGHT) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = error_response(
                "unavailable",
                "the server is at capacity; retry shortly",
                headers={"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


#: Headers a request may carry at most once: with two, which one counts would be up to
#: whichever part of the stack reads them (Starlette takes the first).
SINGLE_HEADERS = (b"authorization", b"content-type", b"host")


class AmbiguousRequestMiddleware:
    """Refuse, with the canonical 400, requests that two readers could understand
    differently: a header of SINGLE_HEADERS given twice, or a body framed by both
    Content-Length and Transfer-Encoding (request smuggling behind a proxy that picks the
    other one). The answer closes the connection, whose next bytes cannot be trusted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem([name.lower() for name, _ in scope["headers"]])
        if problem is None:
            await self.app(scope, receive, send)
            return
        refused = error_response("malformed_request", problem, headers={"Connection": "close"})
        await refused(scope, receive, send)

    @staticmethod
    def _problem(names: list[bytes]) -> str | None:
        if b"content-length" in names and b"transfer-encoding" in names:
            return (
                "the request has both Content-Length and Transfer-Encoding; "
                "send exactly one of them"
            )
        for single in SINGLE_HEADERS:
            if names.count(single) > 1:
                shown = single.decode().title()
                return f"the request has more than one {shown} header; send it once"
        return None


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return error_response("not_found", f"no route matches {request.url.path[:200]!r}")
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return error_response(
            "method_not_allowed",
            f"{request.method} is not allowed on this path; use {allowed}",
            allowed=[m.strip() for m in allowed.split(",") if m.strip()],
            headers=headers,
        )
    code = {400: "invalid_body", 413: "payload_too_large", 415: "unsupported_media_type"}.get(
        exc.status_code
    )
    if code is None:
        log.error("unexpected HTTP %d: %s", exc.status_code, exc.detail)
        return error_response("internal_error", "internal error; the server log has the details")
    return error_response(code, str(exc.detail), headers=headers)


class _Unavailable:
    """The 503 of a store that cannot answer. When the store's message names where the
    database is (StoreUnavailable.public differs), callers get the public text and the log
    gets the whole message, once per distinct message in `log_every_s` (in an outage every
    request fails alike)."""

    def __init__(self, log_every_s: float = 10.0) -> None:
        self.log_every_s = log_every_s
        self._logged: tuple[str, float] | None = None

    async def __call__(self, request: Request, exc: Exception) -> Response:
        message = exc.public if isinstance(exc, StoreUnavailable) else str(exc)
        if isinstance(exc, QueryTimeout):
            log.warning("query timed out: %s %s", request.method, request.url.path)
        elif message != str(exc):
            self._log(str(exc))
        return error_response("unavailable", message, headers={"Retry-After": "1"})

    def _log(self, message: str) -> None:
        now = asyncio.get_running_loop().time()
        last = self._logged
        if last is not None and last[0] == message and now - last[1] < self.log_every_s:
            return
        self._logged = (message, now)
        log.warning("answering 503: %s", message)


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal_error", "internal error; the server log has the details")


def create_app(state: ServiceState, extra_operations: Sequence[Operation] = ()) -> Starlette:
    """The ASGI app for `state`. The caller owns the store's lifecycle."""
    operations: list[Operation] = [*CORE_OPERATIONS, *extra_operations]
    app = Starlette(
        routes=[*_routes(operations), mcp.route(), *ui.routes()],
        lifespan=mcp.lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            StoreUnavailable: _Unavailable(),
            Exception: _internal,
        },
    )
    # /jobs/ is not /jobs: answer 404 rather than a bodiless redirect.
    app.router.redirect_slashes = False
    app.state.service = state
    app.state.operations = operations
    app.state.openapi = OpenApiCache(operations)
    app.state.mcp = mcp.McpHttp(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AmbiguousRequestMiddleware)
    app.add_middleware(ConcurrencyLimitMiddleware)
    # Outermost, so that the answers of the middlewares above are timed too.
    app.state.metrics = metrics.ServiceMetrics(state)
    app.add_middleware(metrics.HttpMetricsMiddleware, metrics=app.state.metrics)
    return app


def _routes(operations: Iterable[Operation]) -> list[Route]:
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    routes = []
    for path, ops in by_path.items():
        for op in ops:
            routes.append(Route(path, endpoint(op), methods=[op.method]))
    return routes

"""The operation registry: each route's path, scope, parameters and responses, declared once.

Routes are built from it and so is the OpenAPI document, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from queue_service.api.params import QueryParam, QueryParser
from queue_service.auth import AuthError, Principal
from queue_service.errors import ApiError
from queue_service.scopes import grants

if TYPE_CHECKING:
    from queue_service.api.state import ServiceState

REALM = 'Bearer realm="queue-service"'
#: An operation scope meaning "any valid token".
ANY_SCOPE = "any"


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler gets besides the request."""

    state: ServiceState
    principal: Principal | None
    query: dict[str, Any]


Handler = Callable[[Request, Context], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    handler: Handler
    #: The least scope that may call it; None means no authentication.
    scope: str | None
    query: tuple[QueryParam, ...] = ()
    #: status -> (model or models for the body, description); None body = no schema.
    responses: dict[int, tuple[Any, str]] = field(default_factory=dict)
    request_body: type[BaseModel] | None = None
    tags: tuple[str, ...] = ()
    #: status -> an example body of that response (the document shows it).
    examples: dict[int, Any] = field(default_factory=dict)
    #: An example request body.
    request_example: Any = None
    #: The one sentence on what token it needs, when the default wording would not say it.
    scope_text: str | None = None
    #: Any valid token may call it for the jobs it enqueued itself; `scope` is what the
    #: operation needs for every other job, and the handler checks it (api/jobs.py).
    own_jobs: bool = False


async def authenticate(request: Request, state: ServiceState, scope: str) -> Principal:
    """Verify the bearer token and its scope, or raise the RFC 6750 error."""
    try:
        principal = await state.tokens.verify(_authorization(request.scope))
    except AuthError as exc:
        if exc.missing:
            raise ApiError("unauthorized", str(exc), headers={"WWW-Authenticate": REALM}) from None
        raise ApiError(
            "invalid_token",
            str(exc),
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        ) from None
    if scope != ANY_SCOPE and not grants(principal.scopes, scope):
        state.tokens.record_failure("insufficient_scope")
        raise insufficient_scope(scope)
    return principal


def _authorization(scope: Scope) -> str | None:
    """The first Authorization header, as `request.headers.get` would give it, read from the
    ASGI scope without building Starlette's Headers."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            return header
    return None


def insufficient_scope(scope: str, why: str = "") -> ApiError:
    """The RFC 6750 403, naming a scope that would do."""
    return ApiError(
        "insufficient_scope",
        f"this token lacks the scope {scope!r} (or one that includes it)"
        + (f": {why}" if why else ""),
        headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
    )


def endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler with authentication and query parsing."""
    scope = ANY_SCOPE if operation.own_jobs else operation.scope
    parse_query = QueryParser(operation.query)
    handler = operation.handler

    async def run(request: Request) -> Response:
        state: ServiceState = request.app.state.service
        principal = None
        if scope is not None:
            principal = await authenticate(request, state, scope)
        query = parse_query(request.scope["query_string"])
        return await handler(request, Context(state, principal, query))

    run.__name__ = operation.operation_id
    return run

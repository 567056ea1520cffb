"""MCP (the Model Context Protocol) on the official `mcp` SDK: the operations an agent needs, as
tools, over streamable HTTP at /mcp and over stdio (`queue-service mcp`).

Each tool is a REST route, found by method and path in the app's operation registry. Its input
schema is made from that route's entry in the OpenAPI document (path and query parameters, and
the request body's fields), its output schema from the route's success responses, and a call
runs the route's own endpoint (authentication, scope check, parameter parsing, handler) on a
request built from the arguments. A tool therefore answers exactly what the route answers, with
the same scopes and the same errors, and the two cannot drift apart.

HTTP is served statelessly: each POST is complete in itself and carries its bearer token, so
no session lives in the server, any of several API processes can answer any request, and a
revoked token stops working at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import mcp_types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from queue_service.api.openapi import build_openapi, scope_sentence
from queue_service.api.operations import (
    ANY_SCOPE,
    Operation,
    authenticate,
    endpoint,
    insufficient_scope,
)
from queue_service.api.params import MAX_ECHO
from queue_service.api.state import ServiceState
from queue_service.auth import AuthError, Principal
from queue_service.errors import ApiError
from queue_service.scopes import grants

#: Where the MCP endpoint is served.
MCP_PATH = "/mcp"
#: The ASGI scope key under which /mcp keeps the principal its door authenticated.
_PRINCIPAL = "queue_service.principal"
_COMPONENT = "#/components/schemas/"

INSTRUCTIONS = (
    "queue-service runs plugin jobs and records Databricks runs in one store. Find jobs with "
    "list_jobs (filters combine with AND; page with cursor), read one with get_job, start one "
    "with enqueue_job (list_plugins shows each command's input_schema) and stop one with "
    "cancel_job. A failed call is a tool error whose JSON has error, code, param and allowed "
    "(the accepted values, when they come from a fixed set). The tools listed are those this "
    "token's scope may call."
)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool: its name and the REST route it runs."""

    name: str
    method: str
    path: str
    #: The scope that shows the tool, when it differs from the route's own.
    scope: str | None = None
    #: A sentence for the agent, after the route's own description.
    hint: str = ""
    #: Other scopes that show the tool: those that may enqueue also see the job reads, for
    #: the jobs they enqueued themselves (the route answers them about those only).
    also: tuple[str, ...] = ()


_OWN_JOBS = (
    "A token without a jobs scope that may enqueue reads the jobs it enqueued itself: "
    "list_jobs with mine=true, get_job on their ids."
)

TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("list_jobs", "GET", "/jobs", hint=_OWN_JOBS, also=("plugin:ro",)),
    ToolSpec("get_job", "GET", "/job/{job_id}", hint=_OWN_JOBS, also=("plugin:ro",)),
    ToolSpec(
        "enqueue_job",
        "POST",
        "/plugin/{plugin}/{command}",
        hint="list_plugins shows each command's type and the input_schema its payload must "
        "satisfy.",
    ),
    ToolSpec("cancel_job", "POST", "/job/{job_id}/cancel"),
    # GET /plugins takes any valid token; as a tool it serves choosing what to enqueue, so it
    # is offered to the tokens that may enqueue (a jobs:status:ro token sees only the job reads).
    ToolSpec("list_plugins", "GET", "/plugins", scope="plugin:ro"),
    ToolSpec("sync_status", "GET", "/sync"),
)


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool built from its route: the MCP definition and how to call the route."""

    definition: mcp_types.Tool
    operation: Operation
    #: The scope the caller needs; None or ANY_SCOPE for any token.
    scope: str | None
    also: tuple[str, ...]
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_params: tuple[str, ...]
    run: Callable[[Request], Awaitable[Response]]

    @property
    def name(self) -> str:
        return self.definition.name

    def allows(self, principal: Principal) -> bool:
        if self.scope in (None, ANY_SCOPE):
            return True
        return any(grants(principal.scopes, s) for s in (self.scope, *self.also) if s)


# -- tools from the OpenAPI document -----------------------------------------------------------


def build_tools(operations: list[Operation]) -> dict[str, Tool]:
    """The tools of TOOL_SPECS, each from its route in `operations` and the OpenAPI document
    those operations generate."""
    document = build_openapi(operations)
    components: dict[str, Any] = document["components"]["schemas"]
    by_route = {(op.method, op.path): op for op in operations}
    tools: dict[str, Tool] = {}
    for spec in TOOL_SPECS:
        operation = by_route.get((spec.method, spec.path))
        if operation is None:
            raise LookupError(f"tool {spec.name}: no route {spec.method} {spec.path}")
        entry: dict[str, Any] = document["paths"][spec.path][spec.method.lower()]
        properties: dict[str, Any] = {}
        required: list[str] = []
        located: dict[str, list[str]] = {"path": [], "query": []}
        for parameter in entry["parameters"]:
            schema = copy.deepcopy(parameter["schema"])
            if "description" in parameter:
                schema["description"] = parameter["description"]
            properties[parameter["name"]] = schema
            located[parameter["in"]].append(parameter["name"])
            if parameter.get("required"):
                required.append(parameter["name"])
        body_params: list[str] = []
        if "requestBody" in entry:
            body = _inline(
                entry["requestBody"]["content"]["application/json"]["schema"], components
            )
            for name, schema in body["properties"].items():
                properties[name] = schema
                body_params.append(name)
            required += body.get("required", [])
        input_schema = _with_defs(
            {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
            components,
        )
        scope = spec.scope if spec.scope is not None else operation.scope
        definition = mcp_types.Tool(
            name=spec.name,
            title=operation.summary,
            description=_description(operation, scope, spec.hint),
            input_schema=input_schema,
            output_schema=_output_schema(entry, components),
            annotations=mcp_types.ToolAnnotations(
                title=operation.summary,
                read_only_hint=operation.method == "GET",
                destructive_hint=spec.name == "cancel_job",
                idempotent_hint=False,
                open_world_hint=False,
            ),
        )
        tools[spec.name] = Tool(
            definition=definition,
            operation=operation,
            scope=scope,
            also=spec.also,
            path_params=tuple(located["path"]),
            query_params=tuple(located["query"]),
            body_params=tuple(body_params),
            run=endpoint(operation),
        )
    return tools


def _description(operation: Operation, scope: str | None, hint: str) -> str:
    # The scope sentence in the OpenAPI document's words, for the tool's own scope.
    needs = scope_sentence(dataclasses.replace(operation, scope=scope)).strip()
    parts = [f"{operation.summary}.", operation.description, hint, needs]
    return " ".join(part for part in parts if part)


def _output_schema(entry: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The union of the route's success bodies, as a JSON Schema whose root is an object."""
    variants: list[dict[str, Any]] = []
    for status, response in sorted(entry["responses"].items()):
        if not status.startswith("2") or "content" not in response:
            continue
        schema = response["content"]["application/json"]["schema"]
        for variant in schema.get("anyOf", [schema]):
            if variant not in variants:
                variants.append(variant)
    body = _inline(variants[0], components) if len(variants) == 1 else {"anyOf": variants}
    return _with_defs({"type": "object", **body}, components)


def _inline(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A schema with its top-level component reference replaced by the component itself."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_COMPONENT):
        return copy.deepcopy(components[ref.removeprefix(_COMPONENT)])
    return copy.deepcopy(schema)


def _with_defs(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """`schema` made self-contained: component references point into its own `$defs`, which
    holds every component reachable from it."""
    needed: dict[str, Any] = {}
    pending = list(_refs(schema))
    while pending:
        name = pending.pop()
        if name not in needed:
            needed[name] = copy.deepcopy(components[name])
            pending.extend(_refs(needed[name]))
    result = _rewrite_refs(schema)
    if needed:
        result["$defs"] = {name: _rewrite_refs(needed[name]) for name in sorted(needed)}
    return dict(result)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENT):
            yield ref.removeprefix(_COMPONENT)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                "#/$defs/" + value.removeprefix(_COMPONENT)
                if key == "$ref" and isinstance(value, str) and value.startswith(_COMPONENT)
                else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(value) for value in node]
    return node


# -- calling a tool: the route's endpoint on a request made from the arguments ------------------


def route_request(
    tool: Tool, arguments: Mapping[str, Any], app: Starlette, authorization: str
) -> Request:
    """The request the tool's route would get for these arguments, or ApiError when they
    cannot be one (an unknown argument, a path parameter that is not a string)."""
    accepted = list(tool.definition.input_schema["properties"])
    for name in arguments:
        if name not in accepted:
            raise ApiError(
                "unknown_parameter",
                f"unknown argument {name[:MAX_ECHO]!r}; {tool.name} accepts: {', '.join(accepted)}",
                param=name[:MAX_ECHO],
                allowed=accepted,
            )
    path_params: dict[str, str] = {}
    for name in tool.path_params:
        value = arguments.get(name)
        if not isinstance(value, str) or not value:
            raise ApiError("invalid_parameter", f"{name}: a non-empty string is needed", param=name)
        path_params[name] = value
    query = [
        (name, _query_text(name, arguments[name]))
        for name in tool.query_params
        if arguments.get(name) is not None
    ]
    body = b""
    headers = [(b"authorization", authorization.encode("latin-1"))]
    if tool.body_params:
        fields = {name: arguments[name] for name in tool.body_params if name in arguments}
        # ASCII escapes: a lone surrogate reaches the body parser, which names it.
        body = json.dumps(fields).encode()
        headers.append((b"content-type", b"application/json"))
    path = tool.operation.path.format(
        **{name: quote(value, safe="") for name, value in path_params.items()}
    )
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": tool.operation.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(query).encode(),
        "headers": headers,
        "client": None,
        "server": None,
        "app": app,
        "path_params": path_params,
    }
    return Request(scope, _body_once(body))


def _query_text(name: str, value: Any) -> str:
    """An argument as the text of a query parameter, which the route then parses."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise ApiError(
        "invalid_parameter", f"{name}: must be a string or a number, not {type(value).__name__}"
    )


def _body_once(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def call_route(tool: Tool, request: Request, app: Starlette) -> Response:
    """Run the tool's endpoint. An exception becomes the response the app's own exception
    handlers make of it, as it would on the REST route."""
    try:
        return await tool.run(request)
    except Exception as exc:
        for kind in type(exc).__mro__:
            handler = app.exception_handlers.get(kind)
            if handler is not None:
                response = handler(request, exc)
                answer: Response = await response if inspect.isawaitable(response) else response
                return answer
        raise


def tool_result(response: Response) -> mcp_types.CallToolResult:
    """A route's JSON answer as a tool result: the object as structured content and as text,
    or, for an error status, a tool error whose text is the canonical error body."""
    text = bytes(response.body).decode()
    content: list[mcp_types.ContentBlock] = [mcp_types.TextContent(type="text", text=text)]
    if response.status_code >= 400:
        return mcp_types.CallToolResult(content=content, is_error=True)
    return mcp_types.CallToolResult(content=content, structured_content=json.loads(text))


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the token's principal and the Authorization header that proves it."""

    principal: Principal
    authorization: str


Identify = Callable[[ServerRequestContext[Any, Any]], Awaitable[Caller]]


class McpTools:
    """The tools of one app and the SDK's low-level server offering them; `identify` says
    who the caller of a request is (from the HTTP request, or the token stdio runs with)."""

    def __init__(self, app: Starlette, identify: Identify) -> None:
        self.app = app
        self.identify = identify
        self.tools = build_tools(app.state.operations)
        state: ServiceState = app.state.service
        self.server: Server[Any] = Server(
            "queue-service",
            version=state.version,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            get_tool_input_schema=self.input_schema,
        )

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        tool = self.tools.get(name)
        return tool.definition.input_schema if tool is not None else None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        caller = await self.identify(ctx)
        visible = [t.definition for t in self.tools.values() if t.allows(caller.principal)]
        # The list depends on the token: a client may not share it with another one.
        return mcp_types.ListToolsResult(tools=visible, cache_scope="private", ttl_ms=0)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        caller = await self.identify(ctx)
        tool = self.tools.get(params.name)
        if tool is None:
            visible = [t.name for t in self.tools.values() if t.allows(caller.principal)]
            raise MCPError(
                INVALID_PARAMS,
                f"unknown tool {params.name[:MAX_ECHO]!r}; "
                f"this token's tools: {', '.join(visible)}",
            )
        if not tool.allows(caller.principal):
            assert tool.scope is not None
            return tool_result(insufficient_scope(tool.scope).response())
        try:
            request = route_request(tool, params.arguments or {}, self.app, caller.authorization)
        except ApiError as exc:
            return tool_result(exc.response())
        return tool_result(await call_route(tool, request, self.app))


# -- streamable HTTP at /mcp -------------------------------------------------------------------


class McpHttp:
    """/mcp on an app: the bearer check at the door (the REST API's own, so the same 401s),
    then the SDK's streamable HTTP transport, stateless, answering in plain JSON."""

    def __init__(self, app: Starlette) -> None:
        self.tools = McpTools(app, _caller_from_request)
        self.manager = StreamableHTTPSessionManager(
            app=self.tools.server, stateless=True, json_response=True
        )

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServiceState = scope["app"].state.service
        try:
            principal = await authenticate(Request(scope), state, ANY_SCOPE)
        except ApiError as exc:
            await exc.response()(scope, receive, send)
            return
        await self.manager.handle_request({**scope, _PRINCIPAL: principal}, receive, send)


async def _caller_from_request(ctx: ServerRequestContext[Any, Any]) -> Caller:
    request = ctx.request
    if not isinstance(request, Request) or _PRINCIPAL not in request.scope:
        raise MCPError(INVALID_REQUEST, "no authenticated HTTP request carries this message")
    return Caller(request.scope[_PRINCIPAL], request.headers.get("authorization", ""))


class _Endpoint:
    """The ASGI app of the /mcp route: the McpHttp of the app serving the request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mcp: McpHttp = scope["app"].state.mcp
        await mcp(scope, receive, send)


def route() -> Route:
    """The /mcp route; the app keeps its McpHttp in `app.state.mcp`."""
    # POST only: stateless, the server has no stream to offer on GET and no session to end
    # on DELETE, and says so with a 405 (as the streamable HTTP transport allows).
    return Route(MCP_PATH, _Endpoint(), methods=["POST"])


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """The app's lifespan: the transport's task group runs while the app serves."""
    mcp: McpHttp = app.state.mcp
    async with mcp.running():
        yield


# -- stdio -------------------------------------------------------------------------------------


async def serve_stdio(app: Starlette, token: str) -> None:
    """Serve MCP on stdin/stdout until stdin closes, as the holder of `token`. The token is
    checked against the store on every request, so revoking it takes effect at once."""
    state: ServiceState = app.state.service
    authorization = f"Bearer {token}"

    async def caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
        try:
            principal = await state.tokens.verify(authorization)
        except AuthError as exc:
            raise MCPError(INVALID_REQUEST, f"the token is refused: {exc}") from None
        return Caller(principal, authorization)

    tools = McpTools(app, caller)
    async with stdio_server() as (read, write):
        await tools.server.run(read, write, tools.server.create_initialization_options())

"""The OpenAPI 3.1 document, generated from the operation registry, the pydantic models and
the installed plugins.

Written for tools as much as for people: every parameter is described, every operation has
examples, statuses and error codes are enums, the scope an operation needs is one sentence,
and each installed plugin command is an operation of its own whose request body carries the
command's `input_schema`. The server builds the document once per plugin registry and adds
the absolute `servers` URL per request (OpenApiCache).
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.types import Scope

from queue_service import __version__
from queue_service.api import examples
from queue_service.api.operations import ANY_SCOPE, Operation
from queue_service.api.params import PATH_PARAMS
from queue_service.api.plugins import JSON_TYPES
from queue_service.api.responses import to_json
from queue_service.errors import ERROR_CODES
from queue_service.models import ErrorBody
from queue_service.plugins import Command, Plugin, Registry

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Bad request: a parameter or the body is invalid (the body names it).",
    401: "No token, or the token is malformed, unknown, revoked or expired.",
    403: "The token lacks the scope this operation needs.",
    404: "Not found.",
    405: "Method not allowed on this path.",
    409: "Conflict with the job's current state.",
    413: "The request body is over the size limit.",
    415: "The body must be application/json.",
    500: "Internal error.",
    503: ("The database is busy, read-only, out of space or unreachable, or a query ran too long."),
}


_CHALLENGE_TEXT = {
    401: 'Bearer realm="queue-service", plus error="invalid_token" when a token was sent.',
    403: 'Bearer realm="queue-service", error="insufficient_scope", '
    'scope="<a scope that would do>".',
}
#: Operation ids of per-command operations: enqueue_<plugin>_<command>, as tool names allow.
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_]")
MAX_OPERATION_ID = 64


def _models(operations: Iterable[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every model with the mode it is documented in: responses as the server serializes
    them, request bodies as the server validates them."""
    found: dict[str, tuple[type[BaseModel], JsonSchemaMode]] = {
        "ErrorBody": (ErrorBody, "serialization")
    }
    for op in operations:
        for body in (spec[0] for spec in op.responses.values()):
            for model in body if isinstance(body, list) else [body]:
                if model is not None:
                    found[model.__name__] = (model, "serialization")
        if op.request_body is not None:
            found[op.request_body.__name__] = (op.request_body, "validation")
    return list(found.values())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _content(
    body: Any, example: Any = None, media_types: Iterable[str] = ("application/json",)
) -> dict[str, Any]:
    if body is None:
        schema: dict[str, Any] = {"type": "object"}
    elif isinstance(body, dict):
        schema = body
    elif isinstance(body, list):
        schema = {"anyOf": [_ref(m) for m in body]}
    else:
        schema = _ref(body)
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {media_type: dict(media) for media_type in media_types}


def _error_statuses(op: Operation) -> list[int]:
    # Any request may carry an oversized body, so 413 is possible everywhere.
    statuses = [400, 405, 413, 500, 503]
    if op.scope is not None:
        statuses += [401]
        if op.scope != ANY_SCOPE and not op.own_jobs:
            statuses += [403]
    if op.request_body is not None:
        statuses += [415]
    return statuses


def scope_sentence(op: Operation) -> str:
    """What token the operation needs, in one sentence."""
    if op.scope_text is not None:
        return op.scope_text
    if op.scope is None:
        return "Needs no token."
    if op.scope == ANY_SCOPE:
        return "Needs any valid token."
    return f"Needs scope `{op.scope}` (or a scope that includes it)."


def _parameters(op: Operation) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", op.path):
        if name not in PATH_PARAMS:
            raise KeyError(f"the path parameter {name!r} of {op.path} has no description")
        description, example = PATH_PARAMS[name]
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": description,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "example": example,
            }
        )
    parameters += [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "description": p.description,
            "schema": p.schema,
        }
        for p in op.query
    ]
    return parameters


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(set(op.responses) | set(_error_statuses(op))):
        if status in op.responses:
            body, text = op.responses[status]
        else:
            body, text = ErrorBody, _ERROR_TEXT[status]
        example = op.examples.get(status, examples.ERRORS.get(status))
        entry: dict[str, Any] = {"description": text}
        if body is not None or example is not None:
            entry["content"] = _content(body, example)
        if status in (401, 403):
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": _CHALLENGE_TEXT[status],
                    "schema": {"type": "string"},
                }
            }
        if status == 405:
            entry["headers"] = {
                "Allow": {
                    "description": "The methods this path takes.",
                    "schema": {"type": "string"},
                }
            }
        responses[str(status)] = entry
    return responses


def _operation(op: Operation, request_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": f"{op.description}\n\n{scope_sentence(op)}",
        "tags": list(op.tags),
        "parameters": _parameters(op),
        "responses": _responses(op),
        "security": [{"bearer": []}] if op.scope else [],
    }
    if op.request_body is not None:
        model = op.request_body
        # An empty body reads as `{}`, so the body is required only when `{}` is not valid.
        required = any(f.is_required() for f in model.model_fields.values())
        schema: Any = model
        if request_schema is not None:
            schema, required = request_schema, bool(request_schema.get("required"))
        spec["requestBody"] = {
            "required": required,
            "content": _content(schema, op.request_example, JSON_TYPES),
        }
    return spec


# -- one operation per installed plugin command ------------------------------


def _payload_schema(plugin: Plugin, command: Command) -> dict[str, Any] | None:
    """The command's input_schema as the schema of `payload`, or None to keep the model's
    (any object). A schema with its own `$schema` or `$ref`s gets an `$id`, so that it is a
    resource of its own: its dialect holds and `#/...` refs resolve inside it, not against
    this document."""
    if command.input_schema is None:
        return None
    schema = copy.deepcopy(dict(command.input_schema))
    if "$schema" in schema or '"$ref"' in to_json(schema).decode():
        schema.setdefault("$id", f"urn:queue-service:plugin:{plugin.name}:{command.name}:input")
    if schema.get("type") != "object":
        # The payload is always a JSON object, whatever else the command asks of it.
        schema = {"allOf": [{"type": "object"}, schema]}
    return schema


def _payload_example(command: Command) -> Any:
    """An example payload the command accepts, checked with its own validator: the first of
    its schema's `examples` (or its `default`), else `{}`, else one built from the required
    properties' types; None when none of these validates."""
    schema = command.input_schema or {}
    candidates = [
        *schema.get("examples", []),
        *([schema["default"]] if "default" in schema else []),
    ]
    for candidate in [*candidates, {}, _sample(schema, depth=3)]:
        if isinstance(candidate, dict) and command.validate_payload(candidate) is None:
            return candidate
    return None


def _sample(schema: Any, depth: int) -> Any:
    """A plain value of the schema's type: its const, enum, example or default if any, else
    the least value its bounds allow. Only a guess; the caller validates it."""
    if not isinstance(schema, Mapping) or depth < 0:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("enum", "examples"):
        if schema.get(key):
            return schema[key][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: _sample(properties.get(name, {}), depth - 1)
            for name in schema.get("required", [])
        }
    if kind == "array":
        return [_sample(schema.get("items", {}), depth - 1)] * int(schema.get("minItems", 0))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind == "boolean":
        return False
    return None


def command_operations(
    registry: Registry, generic: Operation, request_schema: dict[str, Any]
) -> list[tuple[Operation, dict[str, Any] | None]]:
    """(operation, request body schema) for each command of each usable plugin, built from
    the generic enqueue operation, with operation ids unique in the document."""
    found: list[tuple[Operation, dict[str, Any] | None]] = []
    taken: set[str] = set()
    for plugin in registry.valid():
        if registry.get(plugin.name) is not plugin:
            continue  # a losing duplicate: the name belongs to another folder
        for command in plugin.commands:
            needed = "plugin:rw" if str(command.type) == "write" else "plugin:ro"
            operation_id = _unique_id(f"enqueue_{plugin.name}_{command.name}", taken)
            payload = _payload_example(command)
            op = replace(
                generic,
                path=f"/plugin/{quote(plugin.name, safe='')}/{quote(command.name, safe='')}",
                operation_id=operation_id,
                summary=f"Enqueue {plugin.name} {command.name} ({command.type} command)",
                description=(
                    (command.description or f"The {command.name} command of {plugin.name}.")
                    + f"\n\nThe same as POST /plugin/{{plugin}}/{{command}} with "
                    f"plugin={plugin.name} and command={command.name}; the request body's "
                    "`payload` schema is the command's own input_schema."
                ),
                scope=needed,
                scope_text=None,
                responses={s: r for s, r in generic.responses.items() if s in (200, 202)},
                examples={
                    202: examples.enqueued(plugin.name, command.name),
                    200: examples.enqueued(plugin.name, command.name, deduplicated=True),
                },
                request_example=None if payload is None else {"payload": payload},
            )
            found.append((op, _command_body(request_schema, plugin, command, payload)))
    return found


def _command_body(
    request_schema: dict[str, Any], plugin: Plugin, command: Command, payload: Any
) -> dict[str, Any] | None:
    """The enqueue body with `payload` narrowed to the command's input_schema; `payload`
    is required when an empty one (what an empty body means) is refused."""
    payload_schema = _payload_schema(plugin, command)
    if payload_schema is None:
        return None
    body = copy.deepcopy(request_schema)
    generic = body["properties"]["payload"].get("description", "")
    body["properties"]["payload"] = {"description": generic, **payload_schema}
    if command.validate_payload({}) is not None:
        body["required"] = ["payload"]
    body["title"] = f"Enqueue{_camel(plugin.name)}{_camel(command.name)}"
    return body


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in _TOOL_NAME.sub(" ", name).split())


def _unique_id(wanted: str, taken: set[str]) -> str:
    base = _TOOL_NAME.sub("_", wanted)[:MAX_OPERATION_ID]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        suffix = f"_{n}"
        candidate = base[: MAX_OPERATION_ID - len(suffix)] + suffix
    taken.add(candidate)
    return candidate


# -- the document -----------------------------------------------------------------


#: The operation each per-command operation is modelled on.
ENQUEUE_OPERATION_ID = "enqueue_job"


def build_openapi(
    operations: Iterable[Operation],
    registry: Registry | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The document for `operations`, with one operation per command of `registry`'s
    usable plugins, and `base_url` (absolute) as its server; "/" without one."""
    ops = list(operations)
    _, schemas = models_json_schema(_models(ops), ref_template=_REF)
    components = schemas.get("$defs", schemas)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    generic = next((op for op in ops if op.operation_id == ENQUEUE_OPERATION_ID), None)
    if registry is not None and generic is not None and generic.request_body is not None:
        request_schema = components[generic.request_body.__name__]
        for op, body in command_operations(registry, generic, request_schema):
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, body)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "queue-service",
            "version": __version__,
            "description": "A local job queue: plugin jobs and Databricks runs in one store. "
            "Every error body is ErrorBody, whose `code` is one of: "
            + ", ".join(ERROR_CODES)
            + ". Each installed plugin command has its own operation "
            "(POST /plugin/<plugin>/<command>) with the command's input_schema as its "
            "payload schema; GET /plugins lists the same.",
        },
        "servers": [
            {
                "url": base_url or "/",
                "description": "This server, as the request for this document reached it.",
            }
        ],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A queue-service token (qs_…) with the scopes listed per "
                    "operation. Scopes nest: * ⊇ jobs:rw ⊇ jobs:ro ⊇ jobs:status:ro; "
                    "plugin:rw ⊇ plugin:ro.",
                }
            },
        },
    }


# -- serving it -------------------------------------------------------------------

#: A Host header this server will echo in `servers`: a DNS name or an IP (v6 in brackets),
#: with an optional port. Anything else falls back to the address the server listens on.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$"
)


def base_url(scope: Scope) -> str | None:
    """The absolute URL this request reached the API at: scheme (X-Forwarded-Proto counts
    only from a proxy in service.forwarded_allow_ips: uvicorn applies it before us), the
    Host header, and the ASGI root_path. None when no usable host is known."""
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            text = value.decode("latin-1")
            host = text if _HOST.fullmatch(text) else None
            break
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        host = f"[{server_host}]:{port}" if ":" in str(server_host) else f"{server_host}:{port}"
    if host is None:
        return None
    scheme = scope.get("scheme", "http")
    if scheme not in ("http", "https"):
        scheme = "http"
    return f"{scheme}://{host}{quote(scope.get('root_path', ''), safe='/')}"


class OpenApiCache:
    """The served document as bytes, per base URL, for one operation list and registry.

    Built on first use: the registry's command operations and the models' schemas once,
    then only `servers` per base URL. At most MAX_BASES URLs are kept (a client can send
    any Host header), least recently used out first."""

    MAX_BASES = 16

    def __init__(self, operations: Iterable[Operation]) -> None:
        self.operations = tuple(operations)
        self._registry: Registry | None = None
        self._document: dict[str, Any] | None = None
        self._bodies: OrderedDict[str | None, bytes] = OrderedDict()

    def body(self, registry: Registry, base: str | None) -> bytes:
        if self._document is None or registry is not self._registry:
            self._document = build_openapi(self.operations, registry)
            self._registry = registry
            self._bodies.clear()
        cached = self._bodies.get(base)
        if cached is not None:
            self._bodies.move_to_end(base)
            return cached
        servers = [{**self._document["servers"][0], "url": base or "/"}]
        body = to_json({**self._document, "servers": servers})
        self._bodies[base] = body
        if len(self._bodies) > self.MAX_BASES:
            self._bodies.popitem(last=False)
        return body

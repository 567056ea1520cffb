"""The OpenAPI 3.1 document, generated from the operation registry and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from queue_service import __version__
from queue_service.api.operations import ANY_SCOPE, Operation
from queue_service.api.plugins import JSON_TYPES
from queue_service.errors import ERROR_CODES
from queue_service.models import ErrorBody

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
    503: "The database is busy, read-only, out of space, or a query ran too long.",
}


_CHALLENGE_TEXT = {
    401: 'Bearer realm="queue-service", plus error="invalid_token" when a token was sent.',
    403: 'Bearer realm="queue-service", error="insufficient_scope", '
    'scope="<a scope that would do>".',
}


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


def _content(body: Any, media_types: Iterable[str] = ("application/json",)) -> dict[str, Any]:
    if isinstance(body, list):
        schema: dict[str, Any] = {"anyOf": [_ref(m) for m in body]}
    else:
        schema = _ref(body)
    return {media_type: {"schema": schema} for media_type in media_types}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """An empty body reads as `{}`, so the body is required only when `{}` is not valid."""
    required = any(f.is_required() for f in model.model_fields.values())
    return {"required": required, "content": _content(model, JSON_TYPES)}


def _error_statuses(op: Operation) -> list[int]:
    # Any request may carry an oversized body, so 413 is possible everywhere.
    statuses = [400, 405, 413, 500, 503]
    if op.scope is not None:
        statuses += [401] if op.scope == ANY_SCOPE else [401, 403]
    if op.request_body is not None:
        statuses += [415]
    return statuses


def _scope_text(op: Operation) -> str:
    if op.scope is None:
        return "\n\nNeeds no token."
    if op.scope == ANY_SCOPE:
        return "\n\nNeeds any valid token."
    return f"\n\nNeeds scope `{op.scope}` or one that includes it."


def build_openapi(operations: Iterable[Operation]) -> dict[str, Any]:
    ops = list(operations)
    _, schemas = models_json_schema(_models(ops), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        responses: dict[str, Any] = {}
        for status in sorted(set(op.responses) | set(_error_statuses(op))):
            if status in op.responses:
                body, text = op.responses[status]
            else:
                body, text = ErrorBody, _ERROR_TEXT[status]
            entry: dict[str, Any] = {"description": text}
            if body is not None:
                entry["content"] = _content(body)
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
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
            for name in re.findall(r"{(\w+)}", op.path)
        ]
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
        spec: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": op.description + _scope_text(op),
            "tags": list(op.tags),
            "parameters": parameters,
            "responses": responses,
            "security": [{"bearer": []}] if op.scope else [],
        }
        if op.request_body is not None:
            spec["requestBody"] = _request_body(op.request_body)
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "queue-service",
            "version": __version__,
            "description": "A local job queue: plugin jobs and Databricks runs in one store. "
            "Every error body is ErrorBody; codes: " + ", ".join(ERROR_CODES) + ".",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", schemas),
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

"""The one error shape: {"error": "...", "code": "...", "param"?: "...", "allowed"?: [...]}.

Every error response of the API is built here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import orjson
from starlette.responses import Response

#: Machine codes, with the HTTP status each one is sent with.
ERROR_CODES: dict[str, int] = {
    "invalid_parameter": 400,
    "unknown_parameter": 400,
    "invalid_body": 400,
    "malformed_request": 400,
    "validation_failed": 400,
    "unauthorized": 401,
    "invalid_token": 401,
    "insufficient_scope": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "unavailable": 503,
}


class ApiError(Exception):
    """Raise anywhere in a request to answer with the canonical error body."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        allowed: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.param = param
        self.allowed = list(allowed) if allowed is not None else None
        self.headers = dict(headers or {})
        self.status = status or ERROR_CODES[code]

    def response(self) -> Response:
        return error_response(
            self.code,
            self.message,
            param=self.param,
            allowed=self.allowed,
            headers=self.headers,
            status=self.status,
        )


def error_body(
    code: str, message: str, *, param: str | None = None, allowed: Sequence[str] | None = None
) -> bytes:
    """The canonical body (models.ErrorBody, absent fields left out) as JSON bytes.

    Also what the HTTP protocol layer sends for a request it cannot parse.
    """
    body: dict[str, object] = {"error": message, "code": code}
    if param is not None:
        body["param"] = param
    if allowed:
        body["allowed"] = list(allowed)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        # Client text quoted in a message may hold a lone surrogate: escape it rather than
        # fail while reporting an error.
        return json.dumps(body).encode()


def error_response(
    code: str,
    message: str,
    *,
    param: str | None = None,
    allowed: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
) -> Response:
    return Response(
        error_body(code, message, param=param, allowed=allowed),
        status_code=status or ERROR_CODES[code],
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )

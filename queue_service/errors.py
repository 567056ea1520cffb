"""The one error shape: {"error": "...", "code": "...", "param"?: "...", "allowed"?: [...]}.

Every error response of the API is built here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.responses import Response

from queue_service.models import ErrorBody

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


def error_response(
    code: str,
    message: str,
    *,
    param: str | None = None,
    allowed: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
) -> Response:
    body = ErrorBody(
        error=message, code=code, param=param, allowed=list(allowed) if allowed else None
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        status_code=status or ERROR_CODES[code],
        media_type="application/json",
        headers=dict(headers or {}),
    )

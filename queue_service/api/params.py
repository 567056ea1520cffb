"""Query parameters: one spec per parameter serves validation and the OpenAPI document."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from queue_service.errors import ApiError
from queue_service.statuses import SOURCES, STATUS_WORDS, Source, Status, UnknownStatus
from queue_service.statuses import normalize_status as _normalize_status
from queue_service.store import Cursor
from queue_service.timeutil import normalize_ts

MAX_TEXT = 200
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")
#: Names of plugins: what a manifest may declare.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Free text (a command may be a Databricks job name): anything but control characters.
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f]+$"
_NAME = re.compile(NAME_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)


def case_insensitive_pattern(words: Sequence[str], *, as_list: bool = False) -> str:
    """A JSON-Schema regex for one of `words` (or a comma-separated list of them),
    in any case, with surrounding spaces allowed: exactly what the parser accepts."""
    alternatives = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)
        for word in words
    )
    item = f" *({alternatives}) *"
    return f"^{item}(,{item})*$" if as_list else f"^{item}$"


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A documented query parameter and the function that parses its text."""

    name: str
    description: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]
    default: Any = None
    allowed: tuple[str, ...] | None = field(default=None)


def parse_query(request: Request, specs: Sequence[QueryParam]) -> dict[str, Any]:
    """Parse and validate the query string against `specs`.

    Unknown, repeated or malformed parameters raise ApiError naming the parameter.
    Absent parameters take their default.
    """
    by_name = {spec.name: spec for spec in specs}
    raw: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        spec = by_name.get(key)
        if spec is None:
            accepted = ", ".join(by_name) or "none"
            if key == "access_token":
                message = (
                    "tokens are not accepted in the query string; send 'Authorization: Bearer qs_…'"
                )
            else:
                message = f"unknown query parameter {key!r}; this endpoint accepts: {accepted}"
            raise ApiError("unknown_parameter", message, param=key, allowed=list(by_name))
        if key in raw:
            raise ApiError(
                "invalid_parameter",
                f"{key} was given more than once; give it once"
                + (" (a comma-separated list means any of them)" if key == "status" else ""),
                param=key,
            )
        raw[key] = value
    parsed: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in raw:
            parsed[spec.name] = spec.default
            continue
        try:
            parsed[spec.name] = spec.parse(raw[spec.name])
        except ValueError as exc:
            raise ApiError(
                "invalid_parameter",
                f"{spec.name}: {exc}",
                param=spec.name,
                allowed=list(spec.allowed) if spec.allowed else None,
            ) from None
    return parsed


# -- parsers ---------------------------------------------------------------


def parse_name(text: str) -> str:
    if not text or len(text) > MAX_TEXT or not _NAME.match(text):
        raise ValueError(
            f"must be 1-{MAX_TEXT} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return text


def parse_text(text: str) -> str:
    if not text or len(text) > MAX_TEXT or not _TEXT.match(text):
        raise ValueError(f"must be 1-{MAX_TEXT} characters with no control characters")
    return text


def parse_statuses(text: str) -> tuple[Status, ...]:
    words = text.split(",")
    try:
        return tuple(dict.fromkeys(_normalize_status(word) for word in words))
    except UnknownStatus as exc:
        raise ValueError(
            f"unknown status {exc.word.strip()!r}; use one of {', '.join(STATUS_WORDS)} "
            "(comma-separated for any of several)"
        ) from None


def parse_source(text: str) -> tuple[Source, ...]:
    try:
        return (Source(text.strip().lower()),)
    except ValueError:
        raise ValueError(f"unknown source {text!r}; use one of {', '.join(SOURCES)}") from None


def parse_timestamp(text: str) -> str:
    return normalize_ts(text)


def parse_limit(text: str) -> int:
    if not _DIGITS.match(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"must be a whole number from 1 to {MAX_LIMIT}, got {text[:40]!r}")
    return int(text)


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.created_at, cursor.seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(text: str) -> Cursor:
    problem = "is not a cursor this server issued; pass next_cursor from a previous page"
    if len(text) > 200:
        raise ValueError(problem)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, seq = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(problem) from None
    if not (isinstance(created_at, str) and _TS.match(created_at)):
        raise ValueError(problem)
    if not (isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**63):
        raise ValueError(problem)
    return Cursor(created_at, seq)


_CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"

JOB_LIST_PARAMS: tuple[QueryParam, ...] = (
    QueryParam(
        "plugin",
        "Only jobs of this plugin (exact match). Databricks runs have plugin `databricks`.",
        {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": NAME_PATTERN},
        parse_name,
    ),
    QueryParam(
        "command",
        "Only jobs of this command (exact match). For Databricks runs, the job's name.",
        {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN},
        parse_text,
    ),
    QueryParam(
        "status",
        "A status or alias (pending=queued, ok=succeeded, error=failed); a comma-separated "
        "list means any of them. Case and surrounding spaces are ignored.",
        {"type": "string", "pattern": case_insensitive_pattern(STATUS_WORDS, as_list=True)},
        parse_statuses,
        default=(),
        allowed=STATUS_WORDS,
    ),
    QueryParam(
        "source",
        "Where the job came from: `local` (plugins) or `databricks` (synced runs).",
        {"type": "string", "pattern": case_insensitive_pattern(SOURCES)},
        parse_source,
        default=(),
        allowed=SOURCES,
    ),
    QueryParam(
        "created_after",
        "Only jobs created strictly after this RFC 3339 time.",
        {"type": "string", "format": "date-time"},
        parse_timestamp,
    ),
    QueryParam(
        "created_before",
        "Only jobs created strictly before this RFC 3339 time.",
        {"type": "string", "format": "date-time"},
        parse_timestamp,
    ),
    QueryParam(
        "limit",
        f"Page size, 1 to {MAX_LIMIT}.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        parse_limit,
        default=DEFAULT_LIMIT,
    ),
    QueryParam(
        "cursor",
        "Opaque position from a previous page's `next_cursor`.",
        {"type": "string", "pattern": _CURSOR_PATTERN},
        parse_cursor,
    ),
)

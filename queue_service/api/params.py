"""Query parameters: one spec per parameter serves validation and the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from queue_service.errors import ApiError
from queue_service.models import TIMESTAMP_SCHEMA
from queue_service.statuses import (
    ALIASES,
    SOURCES,
    STATUS_WORDS,
    STATUSES,
    Source,
    Status,
    UnknownStatus,
)
from queue_service.statuses import normalize_status as _normalize_status
from queue_service.store import Cursor

MAX_TEXT = 200
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: At most this much of a client's text is echoed back in an error.
MAX_ECHO = 100
#: Every pattern below is written once and serves twice: as the JSON Schema `pattern` in the
#: OpenAPI document (ECMA-262) and, through `re.fullmatch`, as the server's own check. Only
#: constructs that mean the same in both dialects are used (explicit ASCII classes, no `\d`,
#: no `\w`), and fullmatch keeps Python's `$` from accepting a trailing newline.
LIMIT_PATTERN = r"^[0-9]+$"
#: Names of plugins: what a manifest may declare.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Free text (a command may be a Databricks job name): anything but control characters.
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f]+$"
#: A page position: the last job's created_at as 20 digits, and its insertion sequence.
CURSOR_PATTERN = r"^[0-9]{20}-[1-9][0-9]{0,17}$"
_LIMIT = re.compile(LIMIT_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)
#: TIMESTAMP_PATTERN with its parts captured.
_TIMESTAMP = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)
_CURSOR = re.compile(CURSOR_PATTERN)
_NOT_DIGITS = re.compile(r"[^0-9]")
#: What the store can hold: earlier and later instants are clamped to these.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MICROS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)


#: Every path parameter: (description, example). The OpenAPI document describes each path
#: parameter from here, and refuses to build when one is missing.
PATH_PARAMS: dict[str, tuple[str, str]] = {
    "job_id": (
        "The job's id, as enqueueing answered it (a UUID for local jobs, "
        "`databricks:<workspace>:<run id>` for Databricks runs).",
        "0f6c1a52-5d43-4a8e-9b1f-2f4c7e2d9a10",
    ),
    "plugin": (
        "An installed plugin's name; GET /plugins lists them, and each command also has "
        "its own operation in this document.",
        "echo",
    ),
    "command": (
        "One of the plugin's commands; its `input_schema` (GET /plugins) constrains the payload.",
        "poll",
    ),
}


def case_insensitive_pattern(words: Sequence[str], *, as_list: bool = False) -> str:
    """A JSON-Schema regex for one of `words` (or a comma-separated list of them),
    in any case, with surrounding spaces allowed: exactly what the parser accepts."""
    alternatives = "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)
        for word in words
    )
    item = f" *({alternatives}) *"
    return f"^{item}(,{item})*$" if as_list else f"^{item}$"


def words_schema(
    names: Sequence[str], aliases: dict[str, str] | None = None, *, as_list: bool = False
) -> dict[str, Any]:
    """The schema of a parameter naming one of `names`: an `enum` of the names (what a tool
    converter or a model reads), an `enum` of the aliases apart, and, as the last branch,
    the exact pattern the server accepts (any case, spaces around items, comma lists), so
    the schema admits exactly what the parser does. Converters that drop `pattern` keep
    the enums."""
    branches: list[dict[str, Any]] = [{"title": "name", "enum": list(names)}]
    if aliases:
        mapping = ", ".join(f"{alias}={name}" for alias, name in aliases.items())
        branches.append({"title": "alias", "enum": list(aliases), "description": mapping})
    words = [*names, *(aliases or {})]
    branches.append(
        {
            "title": "any case" + (" or list" if as_list else ""),
            "pattern": case_insensitive_pattern(words, as_list=as_list),
            "description": "The same words in any case with spaces around them"
            + ("; a comma-separated list means any of them." if as_list else "."),
        }
    )
    return {"type": "string", "anyOf": branches}


def exact_pattern(schema: dict[str, Any]) -> str | None:
    """The pattern that admits exactly what a parameter's parser accepts: the schema's own
    `pattern`, or that of the last branch of a words_schema (its enums are subsets of it)."""
    if "pattern" in schema:
        return str(schema["pattern"])
    branches = schema.get("anyOf", [])
    return str(branches[-1]["pattern"]) if branches and "pattern" in branches[-1] else None


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A documented query parameter and the function that parses its text."""

    name: str
    description: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]
    default: Any = None
    allowed: tuple[str, ...] | None = field(default=None)


def query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a raw query string, exactly as Starlette's
    `request.query_params.multi_items()` gives them (latin-1 text, then
    `urllib.parse.parse_qsl(..., keep_blank_values=True)`), without building its containers."""
    pairs = []
    for part in query_string.decode("latin-1").split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name.replace("+", " ")), unquote(value.replace("+", " "))))
    return pairs


class QueryParser:
    """Parses and validates a query string against `specs`, built once per operation.

    Unknown, repeated or malformed parameters raise ApiError naming the parameter.
    Absent parameters take their default.
    """

    __slots__ = ("by_name", "defaults", "specs")

    def __init__(self, specs: Sequence[QueryParam]) -> None:
        self.specs = tuple(specs)
        self.by_name = {spec.name: spec for spec in specs}
        self.defaults = {spec.name: spec.default for spec in specs}

    def __call__(self, query_string: bytes) -> dict[str, Any]:
        parsed = dict(self.defaults)
        if not query_string:
            return parsed
        raw: dict[str, str] = {}
        for key, value in query_pairs(query_string):
            if key not in self.by_name:
                raise self._unknown(key)
            if key in raw:
                raise ApiError(
                    "invalid_parameter",
                    f"{key} was given more than once; give it once"
                    + (" (a comma-separated list means any of them)" if key == "status" else ""),
                    param=key,
                )
            raw[key] = value
        for spec in self.specs:  # in declaration order, so the first bad one is reported
            if spec.name not in raw:
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

    def _unknown(self, key: str) -> ApiError:
        accepted = ", ".join(self.by_name) or "none"
        # A hostile name may be huge: echo a bounded prefix of it, never all of it.
        shown = key[:MAX_ECHO]
        if key == "access_token":
            message = (
                "tokens are not accepted in the query string; send 'Authorization: Bearer qs_…'"
            )
        else:
            message = f"unknown query parameter {shown!r}; this endpoint accepts: {accepted}"
        return ApiError("unknown_parameter", message, param=shown, allowed=list(self.by_name))


# -- parsers ---------------------------------------------------------------


#: The most digits an integer in a JSON document may have: Python's own limit on converting
#: text to int (sys.get_int_max_str_digits), which is there to bound the quadratic cost.
MAX_INTEGER_DIGITS = 4300


class IntegerTooLong(ValueError):
    """A JSON integer with more than MAX_INTEGER_DIGITS digits."""


def parse_json_integer(text: str) -> int:
    """The `parse_int` hook for json.loads: refuses over-long integers with a plain message."""
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise IntegerTooLong(
            f"an integer has {digits} digits; integers may have at most {MAX_INTEGER_DIGITS}"
        )
    return int(text)


def parse_name(text: str) -> str:
    if len(text) > MAX_TEXT or not _NAME.fullmatch(text):
        raise ValueError(
            f"must be 1-{MAX_TEXT} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return text


def parse_text(text: str) -> str:
    if len(text) > MAX_TEXT or not _TEXT.fullmatch(text):
        raise ValueError(f"must be 1-{MAX_TEXT} characters with no control characters")
    return text


def _words(text: str, pattern: re.Pattern[str]) -> list[str] | None:
    """The comma-separated words of `text` (spaces around them dropped, lower-cased) when
    `text` matches `pattern`; None when it does not."""
    if not pattern.fullmatch(text):
        return None
    # Matching the ASCII-only pattern first means str.lower() and strip(" ") cannot turn a
    # look-alike (a Kelvin sign, a tab, a no-break space) into an accepted word.
    return [word.strip(" ").lower() for word in text.split(",")]


def _first_unknown(text: str, known: Sequence[str]) -> str:
    for word in text.split(","):
        if word.strip(" ").lower() not in known or not word.strip(" ").isascii():
            return word.strip(" ")
    return text


def parse_statuses(text: str) -> tuple[Status, ...]:
    words = _words(text, _STATUS_LIST)
    if words is None:
        unknown = _first_unknown(text, STATUS_WORDS)
        problem = (
            f"the list {text[:80]!r} has an empty item"
            if not unknown
            else f"unknown status {unknown[:80]!r}"
        )
        raise ValueError(
            f"{problem}; use one of {', '.join(STATUS_WORDS)} (comma-separated for any of several)"
        )
    try:
        return tuple(dict.fromkeys(_normalize_status(word) for word in words))
    except UnknownStatus as exc:  # pragma: no cover - the pattern admits only known words
        raise ValueError(f"unknown status {exc.word!r}") from None


def parse_source(text: str) -> tuple[Source, ...]:
    words = _words(text, _SOURCE)
    if words is None:
        raise ValueError(f"unknown source {text[:80]!r}; use one of {', '.join(SOURCES)}")
    return (Source(words[0]),)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year, 0 included)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_timestamp(text: str) -> str:
    """RFC 3339 `date-time` (as JSON Schema's format means it) -> the store's UTC text.

    Accepts exactly what TIMESTAMP_PATTERN plus `format: date-time` describe. A leap second
    (23:59:60 UTC) reads as 23:59:59.999999; instants before year 1 or after year 9999 in
    UTC (e.g. 0001-01-01T00:00:00+01:00) are clamped to the first or last representable
    microsecond, which orders the same against every stored timestamp.
    """
    match = _TIMESTAMP.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text[:80]!r} is not an RFC 3339 timestamp; use e.g. 2026-11-23T15:46:40Z "
            "or 2026-11-23T16:46:40+01:00"
        )
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7)
    sign, off_hours, off_minutes = match.group(9), match.group(10), match.group(11)
    offset = 0
    if sign is not None:
        if int(off_hours) > 23 or int(off_minutes) > 59:
            raise ValueError(f"{text[:80]!r} has an offset beyond ±23:59")
        offset = (int(off_hours) * 60 + int(off_minutes)) * (1 if sign == "+" else -1)
    problem = None
    if not 1 <= month <= 12:
        problem = "month must be in 1..12"
    elif not 1 <= day <= _days_in_month(year, month):
        problem = f"day must be in 1..{_days_in_month(year, month)} for that month"
    elif hour > 23 or minute > 59 or second > 60:
        problem = "time must be within 00:00:00..23:59:59"
    elif second == 60 and (hour * 60 + minute - offset) % 1440 != 23 * 60 + 59:
        problem = "a leap second (:60) exists only at 23:59:60 UTC"
    if problem is not None:
        raise ValueError(f"{text[:80]!r} is not a valid date and time: {problem}")
    micros = int(((fraction or ".")[1:] + "000000")[:6])
    if second == 60:
        second, micros = 59, 999_999
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    total = (seconds - offset * 60) * 1_000_000 + micros
    total = min(max(total, _MIN_MICROS), _MAX_MICROS)
    moment = _EPOCH + timedelta(microseconds=total)
    # isoformat pads the year to 4 digits; strftime("%Y") does not for years before 1000.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_bool(text: str) -> bool:
    """`true` or `false`, exactly (as JSON writes them)."""
    if text not in ("true", "false"):
        raise ValueError(f"must be true or false, got {text[:40]!r}")
    return text == "true"


def parse_limit(text: str) -> int:
    """A decimal integer from 1 to MAX_LIMIT; leading zeros are fine, signs and spaces not."""
    significant = text.lstrip("0")
    if not _LIMIT.fullmatch(text) or len(significant) > 3 or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"must be a whole number from 1 to {MAX_LIMIT}, got {text[:40]!r}")
    return int(significant)


def encode_cursor(cursor: Cursor) -> str:
    """`<created_at as 20 digits>-<seq>`: opaque to clients, exactly CURSOR_PATTERN."""
    text = f"{_NOT_DIGITS.sub('', cursor.created_at)}-{cursor.seq}"
    if not _CURSOR.fullmatch(text):  # pragma: no cover - store timestamps are fixed-width
        raise ValueError(f"cannot encode the position {cursor!r}")
    return text


def parse_cursor(text: str) -> Cursor:
    if not _CURSOR.fullmatch(text):
        raise ValueError(
            "is not a cursor this server issued; pass next_cursor from a previous page"
        )
    digits, seq = text.split("-")
    d = digits
    created_at = f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}.{d[14:20]}Z"
    return Cursor(created_at, int(seq))


_STATUS_LIST = re.compile(case_insensitive_pattern(STATUS_WORDS, as_list=True))
_SOURCE = re.compile(case_insensitive_pattern(SOURCES))

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
        f"A status ({', '.join(STATUSES)}) or an alias (pending=queued, ok=succeeded, "
        "error=failed); a comma-separated list means any of them, e.g. `failed,timed_out`. "
        "Case and surrounding spaces are ignored.",
        words_schema(STATUSES, {a: str(s) for a, s in ALIASES.items()}, as_list=True),
        parse_statuses,
        default=(),
        allowed=STATUS_WORDS,
    ),
    QueryParam(
        "source",
        "Where the job came from: `local` (plugins) or `databricks` (synced runs).",
        words_schema(SOURCES),
        parse_source,
        default=(),
        allowed=SOURCES,
    ),
    QueryParam(
        "created_after",
        "Only jobs created strictly after this RFC 3339 time, e.g. 2026-11-23T15:46:40Z or "
        "2026-11-23T16:46:40.5+01:00 (at most 9 fraction digits; `+` is `%2B` in a URL).",
        TIMESTAMP_SCHEMA,
        parse_timestamp,
    ),
    QueryParam(
        "created_before",
        "Only jobs created strictly before this RFC 3339 time (same form as created_after).",
        TIMESTAMP_SCHEMA,
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
        {"type": "string", "pattern": CURSOR_PATTERN},
        parse_cursor,
    ),
    QueryParam(
        "mine",
        "`true`: only the jobs this token enqueued (any valid token may ask for those); "
        "`false` (the default): every job, which needs `jobs:status:ro`.",
        {"type": "boolean", "default": False},
        parse_bool,
        default=False,
        allowed=("true", "false"),
    ),
)

"""UTC timestamps as fixed-width RFC 3339 text, so that text order is time order."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: Always 27 characters: 2026-11-23T15:46:40.123456Z
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as fixed-width UTC text."""
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
    utc = moment.astimezone(UTC)
    # Not strftime("%Y"): it does not pad years before 1000, which would break text order.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def now_ts() -> str:
    return format_ts(utcnow())


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset (or Z) into an aware datetime.

    Fractions beyond microseconds are truncated. Raises ValueError with a
    message a person can act on.
    """
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not an RFC 3339 timestamp; use e.g. 2026-11-23T15:46:40Z "
            "or 2026-11-23T16:46:40+01:00"
        )
    fraction = match.group(1) or ""
    normalized = text[: match.start(1)] if fraction else text[: match.start(2)]
    normalized = normalized.replace("t", "T").replace(" ", "T")
    micro = (fraction[1:] + "000000")[:6] if fraction else "000000"
    offset = match.group(2)
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{normalized}.{micro}{offset}")
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time: {exc}") from None


def parse_duration(text: str) -> timedelta:
    """Parse `30s`, `5m`, `1h` or `7d` into a timedelta (strictly positive)."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not a duration; use a positive number with s, m, h or d: 30s, 5m, 1h, 7d"
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])

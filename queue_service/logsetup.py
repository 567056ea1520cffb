"""Logging for the service: one format, and no bearer token ever reaches a log line."""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote

_TOKEN = re.compile(r"qs_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")
#: A token's secret part alone (32 random bytes, url-safe base64: 43 characters), as a
#: standalone word. UUIDs (36) and hex digests (64) have other lengths.
_SECRET = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _redact_plain(text: str) -> str:
    text = _TOKEN.sub("qs_[redacted]", text)
    return _SECRET.sub("[redacted]", _BEARER.sub(r"\1[redacted]", text))


def redact(text: str) -> str:
    """Replace anything shaped like a queue-service token, its secret part, or a bearer
    credential, percent-encoded or not (the access log prints query strings raw)."""
    cleaned = _redact_plain(text)
    if not _ESCAPE.search(cleaned):
        return cleaned
    decoded = text
    for _ in range(3):  # %2571 is %71 is q
        once = unquote(decoded, errors="replace")
        if once == decoded:
            break
        decoded = once
    # Only a line that hid a secret behind escapes is shown decoded (and redacted).
    redacted = _redact_plain(decoded)
    return redacted if redacted != decoded else cleaned


class RedactTokens(logging.Filter):
    """Rewrites records so that formatted messages (and tracebacks) carry no token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        return True


def configure(level: str = "INFO", stream: object = None) -> None:
    """Send every logger (uvicorn's access log included) through one redacting handler."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The MCP SDK logs the end of every stateless request at info ("Terminating session:
    # None"): noise beside the access log line, so only at debug.
    if root.level > logging.DEBUG:
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

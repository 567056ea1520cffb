"""Logging for the service: one format, and no bearer token ever reaches a log line."""

from __future__ import annotations

import logging
import re
import sys

_TOKEN = re.compile(r"qs_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")


def redact(text: str) -> str:
    """Replace anything shaped like a queue-service token or a bearer credential."""
    return _BEARER.sub(r"\1[redacted]", _TOKEN.sub("qs_[redacted]", text))


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
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

"""What an alert says: the JSON body of a delivery, generic or Slack-compatible. Pure."""

from __future__ import annotations

import json
from typing import Any

from queue_service.store.types import AlertDelivery, AlertEvent, AlertEventKind

#: The longest job error quoted in a message's text (the JSON body's `job` has it whole).
MAX_ERROR_CHARS = 300


def job_fields(event: AlertEvent) -> dict[str, Any]:
    return {
        "job_id": event.job_id,
        "plugin": event.plugin,
        "command": event.command,
        "source": event.source,
        "status": event.status,
        "attempt": event.attempt,
        "last_error": event.last_error,
        "external_url": event.external_url,
        "started_at": event.started_at,
        "completed_at": event.completed_at,
    }


def _describe(event: AlertEvent) -> str:
    what = f"{event.plugin} {event.command}"
    if event.kind is AlertEventKind.RUNNING_LONG:
        line = (
            f"{what} has been running for more than {_span(event.running_seconds or 0)} "
            f"(job {event.job_id}, started {event.started_at})"
        )
    else:
        line = f"{what} {event.status} (job {event.job_id}, attempt {event.attempt})"
        if event.last_error:
            error = event.last_error.strip()
            if len(error) > MAX_ERROR_CHARS:
                error = error[:MAX_ERROR_CHARS] + "…"
            line += f": {error}"
    if event.external_url:
        line += f" {event.external_url}"
    return line


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def summary(delivery: AlertDelivery) -> str:
    """One line (two when events were folded) a person reads in a chat channel."""
    first = delivery.first_event
    if first is None:  # pruned; only when a delivery outlived the retention
        return f"[queue-service] {delivery.events} alert(s) for {delivery.plugin}"
    text = f"[queue-service] {_describe(first)}"
    if delivery.events > 1:
        more = delivery.events - 1
        text += (
            f"\n…and {more} more alert{'s' if more > 1 else ''} for plugin {delivery.plugin} "
            "folded in by the rate limit"
        )
        last = delivery.last_event
        if last is not None:
            text += f"; the latest: {_describe(last)}"
    return text


def build_body(delivery: AlertDelivery, *, alert: str, slack: bool) -> bytes:
    """The request body: `{"text": …}` for Slack (and compatible incoming webhooks), else
    the generic JSON document (docs/CONFIGURATION.md#alerts shows it)."""
    text = summary(delivery)
    if slack:
        return json.dumps({"text": text}).encode()
    first, last = delivery.first_event, delivery.last_event
    kind = first.kind.value if first is not None else None
    body = {
        "alert": alert,
        "delivery_id": delivery.delivery_id,
        "kind": kind,
        "text": text,
        "events": delivery.events,
        "folded": delivery.events - 1,
        "running_seconds": first.running_seconds if first is not None else None,
        "job": job_fields(first) if first is not None else None,
        "last_job": job_fields(last) if last is not None and delivery.events > 1 else None,
        "first_recorded_at": first.recorded_at if first is not None else None,
        "last_recorded_at": last.recorded_at if last is not None else None,
    }
    return json.dumps(body).encode()

"""What `GET /alerts` shows: each configured alert (never its URL path, query or header
values) with its delivery counts, recent deliveries and recent failures, from the store,
so any process can answer, not only the one sending."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from queue_service.alerts.config import AlertConfig
from queue_service.store import AlertDelivery, Store

#: Deliveries listed per alert, in each of `recent` and `failures`.
RECENT_DELIVERIES = 20


class DeliveryView(BaseModel):
    """One message of an alert."""

    delivery_id: str = Field(description="Sent as the Idempotency-Key header.")
    status: Literal["pending", "sent", "failed"] = Field(
        description="pending: not sent yet (waiting for its time, or retrying); sent: the "
        "receiver answered 2xx; failed: given up after max_attempts."
    )
    kind: Literal["status", "running_long"] | None = Field(
        description="What fired it; null only when its event was pruned."
    )
    plugin: str
    command: str | None
    job_id: str | None = Field(description="The job of the first event in the message.")
    job_status: str | None
    events: int = Field(description="Events in this message (more than 1: rate-limit folded).")
    created_at: str
    next_attempt_at: str | None = Field(description="When a pending delivery is tried next.")
    attempts: int
    last_attempt_at: str | None
    last_error: str | None = Field(
        description="The latest failed attempt's error (kept after a later success)."
    )
    response_status: int | None = Field(description="HTTP status of the latest attempt.")
    finished_at: str | None


class DeliveryCounts(BaseModel):
    pending: int
    sent: int
    failed: int


class AlertView(BaseModel):
    """One `[[alerts]]` entry, its settings without secrets, and how sending goes."""

    name: str
    target: str = Field(description="Scheme, host and port of the webhook; never its path.")
    format: Literal["json", "slack"]
    statuses: list[str]
    running_longer_than: str | None
    plugins: list[str]
    commands: list[str]
    sources: list[str]
    rate_limit: str | None
    header_names: list[str] = Field(description="Names of the extra headers; never values.")
    timeout_seconds: float
    max_attempts: int
    counts: DeliveryCounts
    recent: list[DeliveryView] = Field(description="The latest deliveries, newest first.")
    failures: list[DeliveryView] = Field(
        description="The latest deliveries with a failed attempt, newest first."
    )


class AlertsStatus(BaseModel):
    alerts: list[AlertView]


def delivery_view(delivery: AlertDelivery) -> dict[str, Any]:
    event = delivery.first_event
    return {
        "delivery_id": delivery.delivery_id,
        "status": delivery.status.value,
        "kind": event.kind.value if event is not None else None,
        "plugin": delivery.plugin,
        "command": event.command if event is not None else None,
        "job_id": event.job_id if event is not None else None,
        "job_status": event.status if event is not None else None,
        "events": delivery.events,
        "created_at": delivery.created_at,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
        "attempts": delivery.attempts,
        "last_attempt_at": delivery.last_attempt_at,
        "last_error": delivery.last_error,
        "response_status": delivery.response_status,
        "finished_at": delivery.finished_at,
    }


async def alerts_status(store: Store, alerts: list[AlertConfig]) -> dict[str, Any]:
    """models.AlertsStatus for the configured `alerts`, as a dict."""
    views = []
    for alert in alerts:
        recent = await store.recent_alert_deliveries(alert.name, limit=RECENT_DELIVERIES)
        failures = await store.recent_alert_deliveries(
            alert.name, limit=RECENT_DELIVERIES, failures_only=True
        )
        views.append(
            {
                "name": alert.name,
                "target": alert.target,
                "format": alert.format,
                "statuses": list(alert.statuses),
                "running_longer_than": alert.running_longer_than,
                "plugins": list(alert.plugins),
                "commands": list(alert.commands),
                "sources": list(alert.sources),
                "rate_limit": alert.rate_limit,
                "header_names": sorted(alert.headers),
                "timeout_seconds": alert.timeout_seconds,
                "max_attempts": alert.max_attempts,
                "counts": await store.alert_delivery_counts(alert.name),
                "recent": [delivery_view(d) for d in recent],
                "failures": [delivery_view(d) for d in failures],
            }
        )
    return {"alerts": views}

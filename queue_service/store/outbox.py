"""The backend-independent part of the alert outbox: its rows as `AlertEvent` and
`AlertDelivery`, and the routing plan (which events become new deliveries, which are folded
into a delivery by a rate limit). Each store runs the SQL; the decisions are made here once.

A row is `rows.Row`: an `sqlite3.Row` or a psycopg dict row, read by column name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from queue_service.store.rows import Row
from queue_service.store.types import (
    AlertDelivery,
    AlertEvent,
    AlertEventKind,
    AlertRoute,
    DeliveryStatus,
)
from queue_service.timeutil import format_ts, parse_rfc3339

__all__ = [
    "Fold",
    "LatestDelivery",
    "NewDelivery",
    "RoutePlan",
    "delivery_from_row",
    "empty_delivery_counts",
    "event_from_row",
    "events_of",
    "finish_params",
    "plan_route",
    "rate_limited_plugins",
]


def event_from_row(row: Row) -> AlertEvent:
    return AlertEvent(
        event_id=row["event_id"],
        kind=AlertEventKind(row["kind"]),
        job_id=row["job_id"],
        plugin=row["plugin"],
        command=row["command"],
        source=row["source"],
        status=row["status"],
        attempt=row["attempt"],
        last_error=row["last_error"],
        external_url=row["external_url"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        running_seconds=row["running_seconds"],
        recorded_at=row["recorded_at"],
    )


def events_of(rows: Iterable[Row]) -> list[int]:
    """The event ids the delivery rows refer to (first and last), each once."""
    return sorted({row[key] for row in rows for key in ("first_event_id", "last_event_id")})


def delivery_from_row(row: Row, events: Mapping[int, AlertEvent]) -> AlertDelivery:
    """A delivery row with its first and last events (None for an event pruned already)."""
    return AlertDelivery(
        delivery_id=row["delivery_id"],
        alert=row["alert"],
        plugin=row["plugin"],
        status=DeliveryStatus(row["status"]),
        events=row["events"],
        created_at=row["created_at"],
        not_before=row["not_before"],
        next_attempt_at=row["next_attempt_at"],
        attempts=row["attempts"],
        last_attempt_at=row["last_attempt_at"],
        last_error=row["last_error"],
        response_status=row["response_status"],
        finished_at=row["finished_at"],
        first_event=events.get(row["first_event_id"]),
        last_event=events.get(row["last_event_id"]),
    )


def finish_params(
    delivery_id: str,
    *,
    owner: str,
    attempt: int,
    status: DeliveryStatus,
    response_status: int | None,
    error: str | None,
    retry_at: str | None,
    now: str,
) -> dict[str, Any]:
    """The parameters of every backend's `finish_alert_delivery` query."""
    return {
        "delivery_id": delivery_id,
        "owner": owner,
        "attempt": attempt,
        "status": status.value,
        "response_status": response_status,
        "error": error,
        "retry_at": retry_at,
        "now": now,
    }


def empty_delivery_counts() -> dict[str, int]:
    """Every delivery status, at zero."""
    return dict.fromkeys((s.value for s in DeliveryStatus), 0)


@dataclass(frozen=True)
class LatestDelivery:
    """The newest delivery of one (alert, plugin), as the rate limit needs it."""

    seq: int
    not_before: str
    #: Pending, never attempted and not leased: no receiver can have seen it yet.
    foldable: bool

    @classmethod
    def from_row(cls, row: Row) -> LatestDelivery:
        return cls(
            seq=row["seq"],
            not_before=row["not_before"],
            foldable=row["status"] == DeliveryStatus.PENDING.value
            and row["attempts"] == 0
            and row["lease_owner"] is None,
        )


@dataclass
class NewDelivery:
    """A delivery to insert: pending, due at `not_before`."""

    delivery_id: str
    plugin: str
    first_event_id: int
    last_event_id: int
    not_before: str
    events: int = 1


@dataclass
class Fold:
    """Events to fold into the existing delivery `seq`: its last event becomes
    `last_event_id` and its count grows by `events`."""

    seq: int
    last_event_id: int
    events: int = 0


@dataclass
class RoutePlan:
    """What one routing round writes: new deliveries (in creation order) and folds."""

    new: list[NewDelivery] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)


def rate_limited_plugins(route: AlertRoute, events: Sequence[AlertEvent]) -> list[str]:
    """The plugins whose latest delivery `plan_route` needs: those of the matching events,
    when the route has a rate limit (without one, no delivery is ever folded)."""
    if route.rate_limit_seconds is None:
        return []
    return sorted({event.plugin for event in events if route.matches(event)})


def plan_route(
    route: AlertRoute,
    events: Sequence[AlertEvent],
    latest: Mapping[str, LatestDelivery],
    now: datetime,
    new_id: Callable[[], str],
) -> RoutePlan:
    """The deliveries `events` (in id order) make for `route` (the protocol's
    `route_alert_events`). `latest` holds the newest existing delivery of each plugin in
    `rate_limited_plugins` that has one.

    Without a rate limit each matching event is a new delivery due now. With one, an event
    whose plugin's latest delivery opened its window less than R ago is folded into it when
    that delivery is foldable; otherwise it starts a new delivery held until that window
    ends. A delivery planned here is itself the latest for the events after it."""
    plan = RoutePlan()
    now_text = format_ts(now)
    window = (
        None if route.rate_limit_seconds is None else timedelta(seconds=route.rate_limit_seconds)
    )
    # Per plugin: the delivery later events may fold into, and when its window opened.
    current: dict[str, tuple[NewDelivery | Fold | None, str]] = {}
    for plugin, found in latest.items():
        current[plugin] = (Fold(found.seq, 0) if found.foldable else None, found.not_before)
    for event in events:
        if not route.matches(event):
            continue
        not_before = now_text
        if window is not None and event.plugin in current:
            target, opened = current[event.plugin]
            window_end = parse_rfc3339(opened) + window
            if window_end > now:
                if target is not None:
                    if isinstance(target, Fold) and not target.events:
                        plan.folds.append(target)
                    target.last_event_id = event.event_id
                    target.events += 1
                    continue
                not_before = format_ts(window_end)
        delivery = NewDelivery(new_id(), event.plugin, event.event_id, event.event_id, not_before)
        plan.new.append(delivery)
        current[event.plugin] = (delivery, not_before)
    return plan

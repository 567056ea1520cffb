"""Transaction bodies for failure alerts: the outbox the jobs triggers fill, each alert's
cursor over it, and the deliveries (claimed with a lease, like jobs)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from queue_service.store.jobrules import new_job_id
from queue_service.store.sqlite.sql import q
from queue_service.store.types import (
    AlertDelivery,
    AlertEvent,
    AlertEventKind,
    AlertRoute,
    DeliveryStatus,
)
from queue_service.timeutil import format_ts, parse_rfc3339


def event_from_row(row: sqlite3.Row) -> AlertEvent:
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


def _delivery(conn: sqlite3.Connection, row: sqlite3.Row) -> AlertDelivery:
    events = {
        r["event_id"]: event_from_row(r)
        for r in conn.execute(
            q("alert_events_by_id"), {"first": row["first_event_id"], "last": row["last_event_id"]}
        )
    }
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


def record_long_running(
    conn: sqlite3.Connection, running_seconds: int, now: datetime, limit: int
) -> int:
    params = {
        "running_seconds": running_seconds,
        "started_before": format_ts(now - timedelta(seconds=running_seconds)),
        "now": format_ts(now),
        "limit": limit,
    }
    return int(conn.execute(q("record_long_running"), params).rowcount)


def route_events(conn: sqlite3.Connection, route: AlertRoute, now: datetime, limit: int) -> int:
    """Turn up to `limit` events after the route's cursor into deliveries, and move the
    cursor past them; returns how many events were read."""
    now_text = format_ts(now)
    conn.execute(q("init_alert_cursor"), {"alert": route.alert, "now": now_text})
    after = conn.execute(q("get_alert_cursor"), {"alert": route.alert}).fetchone()[0]
    rows = conn.execute(q("alert_events_after"), {"after": after, "limit": limit}).fetchall()
    if not rows:
        return 0
    for row in rows:
        event = event_from_row(row)
        if route.matches(event):
            _deliver(conn, route, event, now)
    conn.execute(
        q("set_alert_cursor"),
        {"alert": route.alert, "last_event_id": rows[-1]["event_id"], "now": now_text},
    )
    return len(rows)


def _deliver(conn: sqlite3.Connection, route: AlertRoute, event: AlertEvent, now: datetime) -> None:
    """A new delivery for `event`, or (with a rate limit) the event folded into the
    plugin's delivery that has not been attempted yet, or a new delivery held until the
    current window of the plugin ends."""
    not_before = now
    if route.rate_limit_seconds is not None:
        window = timedelta(seconds=route.rate_limit_seconds)
        latest = conn.execute(
            q("latest_alert_delivery"), {"alert": route.alert, "plugin": event.plugin}
        ).fetchone()
        if latest is not None:
            window_end = parse_rfc3339(latest["not_before"]) + window
            if window_end > now:
                folded = conn.execute(
                    q("fold_alert_delivery"), {"seq": latest["seq"], "event_id": event.event_id}
                ).rowcount
                if folded:
                    return
                not_before = window_end
    conn.execute(
        q("insert_alert_delivery"),
        {
            "delivery_id": new_job_id(),
            "alert": route.alert,
            "plugin": event.plugin,
            "event_id": event.event_id,
            "now": format_ts(now),
            "not_before": format_ts(not_before),
        },
    )


def claim_deliveries(
    conn: sqlite3.Connection, alert: str, owner: str, lease_expires_at: str, now: str, limit: int
) -> list[AlertDelivery]:
    params = {
        "alert": alert,
        "owner": owner,
        "lease_expires_at": lease_expires_at,
        "now": now,
        "limit": limit,
    }
    rows = conn.execute(q("claim_alert_deliveries"), params).fetchall()
    return [_delivery(conn, row) for row in sorted(rows, key=lambda r: r["seq"])]


def finish_delivery(
    conn: sqlite3.Connection,
    delivery_id: str,
    owner: str,
    attempt: int,
    status: DeliveryStatus,
    response_status: int | None,
    error: str | None,
    retry_at: str | None,
    now: str,
) -> bool:
    params = {
        "delivery_id": delivery_id,
        "owner": owner,
        "attempt": attempt,
        "status": status.value,
        "response_status": response_status,
        "error": error,
        "retry_at": retry_at,
        "now": now,
    }
    return conn.execute(q("finish_alert_delivery"), params).fetchone() is not None


def recent_deliveries(
    conn: sqlite3.Connection, alert: str, limit: int, failures_only: bool
) -> list[AlertDelivery]:
    name = "recent_alert_failures" if failures_only else "recent_alert_deliveries"
    rows = conn.execute(q(name), {"alert": alert, "limit": limit}).fetchall()
    return [_delivery(conn, row) for row in rows]


def delivery_counts(conn: sqlite3.Connection, alert: str) -> dict[str, int]:
    counts = dict.fromkeys((s.value for s in DeliveryStatus), 0)
    for status, n in conn.execute(q("alert_delivery_counts"), {"alert": alert}):
        counts[status] = int(n)
    return counts


def prune(conn: sqlite3.Connection, before: str, limit: int) -> None:
    """Finished deliveries and old events, up to `limit` of each (part of prune_finished)."""
    params = {"before": before, "limit": limit}
    conn.execute(q("prune_alert_deliveries"), params)
    conn.execute(q("prune_alert_events"), params)

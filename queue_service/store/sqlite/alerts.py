"""Transaction bodies for failure alerts: the outbox the jobs triggers fill, each alert's
cursor over it, and the deliveries (claimed with a lease, like jobs)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from queue_service.store.jobrules import new_job_id
from queue_service.store.outbox import (
    LatestDelivery,
    delivery_from_row,
    empty_delivery_counts,
    event_from_row,
    finish_params,
    plan_route,
    rate_limited_plugins,
)
from queue_service.store.sqlite.sql import q
from queue_service.store.types import AlertDelivery, AlertEvent, AlertRoute, DeliveryStatus
from queue_service.timeutil import format_ts


def _deliveries(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[AlertDelivery]:
    """The delivery rows with their first and last events."""
    events: dict[int, AlertEvent] = {}
    for row in rows:
        for r in conn.execute(
            q("alert_events_by_id"), {"first": row["first_event_id"], "last": row["last_event_id"]}
        ):
            events[r["event_id"]] = event_from_row(r)
    return [delivery_from_row(row, events) for row in rows]


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
    events = [event_from_row(row) for row in rows]
    latest: dict[str, LatestDelivery] = {}
    for plugin in rate_limited_plugins(route, events):
        found = conn.execute(
            q("latest_alert_delivery"), {"alert": route.alert, "plugin": plugin}
        ).fetchone()
        if found is not None:
            latest[plugin] = LatestDelivery.from_row(found)
    plan = plan_route(route, events, latest, now, new_job_id)
    conn.executemany(q("fold_alert_delivery"), [vars(fold) for fold in plan.folds])
    conn.executemany(
        q("insert_alert_delivery"),
        [{**vars(new), "alert": route.alert, "now": now_text} for new in plan.new],
    )
    conn.execute(
        q("set_alert_cursor"),
        {"alert": route.alert, "last_event_id": events[-1].event_id, "now": now_text},
    )
    return len(rows)


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
    return _deliveries(conn, sorted(rows, key=lambda r: r["seq"]))


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
    params = finish_params(
        delivery_id,
        owner=owner,
        attempt=attempt,
        status=status,
        response_status=response_status,
        error=error,
        retry_at=retry_at,
        now=now,
    )
    return conn.execute(q("finish_alert_delivery"), params).fetchone() is not None


def recent_deliveries(
    conn: sqlite3.Connection, alert: str, limit: int, failures_only: bool
) -> list[AlertDelivery]:
    name = "recent_alert_failures" if failures_only else "recent_alert_deliveries"
    return _deliveries(conn, conn.execute(q(name), {"alert": alert, "limit": limit}).fetchall())


def delivery_counts(conn: sqlite3.Connection, alert: str) -> dict[str, int]:
    counts = empty_delivery_counts()
    for status, n in conn.execute(q("alert_delivery_counts"), {"alert": alert}):
        counts[status] = int(n)
    return counts


def prune(conn: sqlite3.Connection, before: str, limit: int) -> None:
    """Finished deliveries and old events, up to `limit` of each (part of prune_finished)."""
    params = {"before": before, "limit": limit}
    conn.execute(q("prune_alert_deliveries"), params)
    conn.execute(q("prune_alert_events"), params)

"""The PostgreSQL store's failure alerts: the outbox the jobs triggers fill (in the status
change's transaction, serialized by the outbox lock so events commit in id order), each
alert's cursor over it, and the deliveries, claimed with a lease like jobs.

The routing decisions (rate-limit folding) are outbox.py's, shared with SQLite; here is
only how they are read and written, safely from several processes at once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from queue_service.store.jobrules import new_job_id
from queue_service.store.outbox import (
    LatestDelivery,
    delivery_from_row,
    empty_delivery_counts,
    event_from_row,
    events_of,
    finish_params,
    plan_route,
    rate_limited_plugins,
)
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.sql import q
from queue_service.store.types import AlertDelivery, AlertRoute, DeliveryStatus
from queue_service.timeutil import format_ts, utcnow


async def _rows(conn: Conn, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q(query), params)
    return await cur.fetchall()


async def _with_events(conn: Conn, rows: Iterable[dict[str, Any]]) -> list[AlertDelivery]:
    """The delivery rows, in the order given, with their first and last events."""
    rows = list(rows)
    ids = events_of(rows)
    events = {}
    if ids:
        events = {
            row["event_id"]: event_from_row(row)
            for row in await _rows(conn, "alert_events_by_id", {"ids": ids})
        }
    return [delivery_from_row(row, events) for row in rows]


async def _record_long_running(conn: Conn, running_seconds: int, now: datetime, limit: int) -> int:
    params = {
        "running_seconds": running_seconds,
        "started_before": format_ts(now - timedelta(seconds=running_seconds)),
        "now": format_ts(now),
        "limit": limit,
    }
    cur = await conn.execute(q("long_running_due"), params)
    due = await cur.fetchone()
    if not (due and due[0]):
        return 0
    await conn.execute(q("lock_alert_events"))
    cur = await conn.execute(q("record_long_running"), params)
    return cur.rowcount


async def _lock_cursor(conn: Conn, alert: str, now: str) -> int:
    """The alert's cursor, made on first use, locked until the transaction ends."""
    params = {"alert": alert, "now": now}
    for query in ("lock_alert_cursor", "init_alert_cursor", "lock_alert_cursor"):
        cur = await conn.execute(q(query), params)
        row = await cur.fetchone()
        if row is not None:
            return int(row[0])
    raise AssertionError(f"the cursor of alert {alert!r} was neither found nor made")


async def _route_events(conn: Conn, route: AlertRoute, now: datetime, limit: int) -> int:
    now_text = format_ts(now)
    after = await _lock_cursor(conn, route.alert, now_text)
    rows = await _rows(conn, "alert_events_after", {"after": after, "limit": limit})
    if not rows:
        return 0
    events = [event_from_row(row) for row in rows]
    latest: dict[str, LatestDelivery] = {}
    for plugin in rate_limited_plugins(route, events):
        found = await _rows(conn, "latest_alert_delivery", {"alert": route.alert, "plugin": plugin})
        if found:
            latest[plugin] = LatestDelivery.from_row(found[0])
    plan = plan_route(route, events, latest, now, new_job_id)
    async with conn.cursor() as cur:
        if plan.folds:
            await cur.executemany(q("fold_alert_delivery"), [vars(fold) for fold in plan.folds])
        if plan.new:
            await cur.executemany(
                q("insert_alert_delivery"),
                [{**vars(new), "alert": route.alert, "now": now_text} for new in plan.new],
            )
    await conn.execute(
        q("set_alert_cursor"),
        {"alert": route.alert, "last_event_id": events[-1].event_id, "now": now_text},
    )
    return len(rows)


async def _claim_deliveries(
    conn: Conn, alert: str, owner: str, lease_expires_at: str, now: str, limit: int
) -> list[AlertDelivery]:
    params = {
        "alert": alert,
        "owner": owner,
        "lease_expires_at": lease_expires_at,
        "now": now,
        "limit": limit,
    }
    rows = await _rows(conn, "claim_alert_deliveries", params)
    return await _with_events(conn, sorted(rows, key=lambda r: r["seq"]))


async def _finish_delivery(conn: Conn, params: dict[str, Any]) -> bool:
    cur = await conn.execute(q("finish_alert_delivery"), params)
    return await cur.fetchone() is not None


async def _recent_deliveries(
    conn: Conn, alert: str, limit: int, failures_only: bool
) -> list[AlertDelivery]:
    name = "recent_alert_failures" if failures_only else "recent_alert_deliveries"
    return await _with_events(conn, await _rows(conn, name, {"alert": alert, "limit": limit}))


async def _delivery_counts(conn: Conn, alert: str) -> dict[str, int]:
    counts = empty_delivery_counts()
    cur = await conn.execute(q("alert_delivery_counts"), {"alert": alert})
    for status, n in await cur.fetchall():
        counts[status] = int(n)
    return counts


class AlertsMixin(Database):
    """The alert outbox and deliveries (the protocol's alerts section)."""

    async def record_long_running(
        self, *, running_seconds: int, now: datetime | None = None, limit: int = 500
    ) -> int:
        return await self._tx(_record_long_running, running_seconds, now or utcnow(), limit)

    async def route_alert_events(
        self, route: AlertRoute, *, now: datetime | None = None, limit: int = 500
    ) -> int:
        return await self._tx(_route_events, route, now or utcnow(), limit)

    async def claim_alert_deliveries(
        self,
        alert: str,
        *,
        owner: str,
        lease_seconds: float,
        limit: int,
        now: datetime | None = None,
    ) -> list[AlertDelivery]:
        moment = now or utcnow()
        lease = format_ts(moment + timedelta(seconds=lease_seconds))
        return await self._tx(_claim_deliveries, alert, owner, lease, format_ts(moment), limit)

    async def finish_alert_delivery(
        self,
        delivery_id: str,
        *,
        owner: str,
        attempt: int,
        status: DeliveryStatus,
        response_status: int | None = None,
        error: str | None = None,
        retry_at: str | None = None,
    ) -> bool:
        params = finish_params(
            delivery_id,
            owner=owner,
            attempt=attempt,
            status=status,
            response_status=response_status,
            error=error,
            retry_at=retry_at,
            now=format_ts(utcnow()),
        )
        return await self._tx(_finish_delivery, params)

    async def recent_alert_deliveries(
        self, alert: str, *, limit: int = 20, failures_only: bool = False
    ) -> list[AlertDelivery]:
        return await self._read(_recent_deliveries, alert, limit, failures_only)

    async def alert_delivery_counts(self, alert: str) -> dict[str, int]:
        return await self._read_statement(_delivery_counts, alert)

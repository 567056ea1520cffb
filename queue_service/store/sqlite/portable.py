"""The portable form (store/portable.py) of an SQLite store: export, import and counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from queue_service.store.portable import (
    PORTABLE_TABLES,
    PortableTable,
    Row,
    cursor_values,
    export_page,
    portable_table,
)


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per portable table."""
    return {
        table.name: int(conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])
        for table in PORTABLE_TABLES
    }


def export_rows(
    conn: sqlite3.Connection, name: str, after: Any, limit: int
) -> tuple[list[Row], Any]:
    """Up to `limit` rows of table `name` after the cursor `after` (None: from the start),
    and the cursor of the next call (None when this was the last page)."""
    table = portable_table(name)
    key = ", ".join(table.order)
    where = ""
    params: tuple[Any, ...] = ()
    if after is not None:
        params = cursor_values(table, after)
        where = f"WHERE ({key}) > ({', '.join('?' for _ in params)})"
    cursor = conn.execute(
        f"SELECT {', '.join(table.columns)}, {key} FROM {name} {where} ORDER BY {key} LIMIT ?",
        (*params, limit),
    )
    return export_page(table, cursor.fetchall(), limit)


def _insert_sql(table: PortableTable) -> str:
    columns = ", ".join(table.columns)
    marks = ", ".join("?" for _ in table.columns)
    if table.name == "job_attempts":
        # No unique key to conflict on: an attempt is skipped when its identity is there.
        match = " AND ".join(f"{column} IS ?" for column in table.identity)
        return (
            f"INSERT INTO {table.name} ({columns}) SELECT {marks} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table.name} WHERE {match})"
        )
    return f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"


def import_rows(conn: sqlite3.Connection, name: str, rows: Sequence[Row]) -> int:
    """Insert `rows` into table `name`, skipping any the table already holds (by identity or
    a unique key); returns how many were inserted. Runs in the caller's transaction."""
    table = portable_table(name)
    params: Sequence[Sequence[Any]] = rows
    if name == "job_attempts":
        at = [table.columns.index(column) for column in table.identity]
        params = [(*row, *(row[i] for i in at)) for row in rows]
    before = conn.execute("SELECT ifnull(max(event_id), 0) FROM alert_events").fetchone()[0]
    inserted = conn.executemany(_insert_sql(table), params).rowcount
    # A copied job that had failed is history, not news: the alert triggers recorded it as
    # an event on insert; take those back in the same transaction, so no alert is sent.
    conn.execute("DELETE FROM alert_events WHERE event_id > ?", (before,))
    return inserted

"""Reading the database behind the service's back (read-only): an SQLite file, or a
PostgreSQL URL (a schema of the test server)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg

Log = Callable[[str], None]

#: The database the engines share with their processes: an SQLite file, or a PostgreSQL URL.
Db = Path | str


class Reader(Protocol):
    """A read-only connection: `execute(sql, params)` with `?` placeholders on every backend;
    the result iterates over tuples and has fetchone/fetchall."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


def quiet(_: str) -> None:
    pass


def is_postgresql(db: Db) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class _PostgreSQLReader:
    """One REPEATABLE READ, READ ONLY transaction: every statement of a `read_only` block
    sees the same snapshot (the count rollups and the jobs they count agree)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), parameters)


@contextlib.contextmanager
def read_only(db: Db) -> Iterator[Reader]:
    if is_postgresql(db):
        with psycopg.connect(str(db), connect_timeout=30) as pg:
            pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            pg.read_only = True
            try:
                yield _PostgreSQLReader(pg)
            finally:
                pg.rollback()
        return
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def integrity_check(db: Db) -> list[str]:
    """["ok"] when the database is sound. SQLite: PRAGMA integrity_check on a fresh
    connection. PostgreSQL: amcheck's bt_index_check of every B-tree index of the schema,
    each heap row looked up in it (the extension is created in the test's schema)."""
    if not is_postgresql(db):
        with read_only(db) as conn:
            return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    with psycopg.connect(str(db), autocommit=True) as pg:
        pg.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        indexes = pg.execute(
            "SELECT c.oid, c.relname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam"
            " WHERE c.relnamespace = current_schema()::regnamespace AND am.amname = 'btree'"
        ).fetchall()
        problems = []
        for oid, name in indexes:
            try:
                pg.execute("SELECT bt_index_check(%s, true)", (oid,))
            except psycopg.Error as exc:
                problems.append(f"{name}: {str(exc).strip()}")
    if not indexes:
        return ["no index to check: is this a queue-service schema?"]
    return problems or ["ok"]


def count_mismatches(db: Db) -> list[tuple[Any, ...]]:
    """Rows where the kept counts (job_counts plus the deltas not folded yet) disagree with
    the jobs table."""
    with read_only(db) as conn:
        actual = {
            tuple(row[:4]): row[4]
            for row in conn.execute(
                "SELECT plugin, command, status, source, COUNT(*) FROM jobs "
                "GROUP BY plugin, command, status, source"
            )
        }
        kept = {
            tuple(row[:4]): row[4]
            for row in conn.execute(
                "SELECT plugin, command, status, source, SUM(n) FROM ("
                " SELECT plugin, command, status, source, n FROM job_counts"
                " UNION ALL"
                " SELECT plugin, command, status, source, d FROM job_count_deltas"
                ") AS kept GROUP BY plugin, command, status, source HAVING SUM(n) != 0"
            )
        }
    return sorted(
        (*key, actual.get(key), kept.get(key))
        for key in set(actual) | set(kept)
        if actual.get(key) != kept.get(key)
    )


def owner_pid(owner: str) -> int:
    """The process id in a lease owner `host:pid:random`."""
    return int(owner.rsplit(":", 2)[-2])


def held_leases(db: Db) -> dict[str, list[tuple[str, int]]]:
    """{lease_owner: [(job_id, attempt), ...]} of the running local jobs."""
    held: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with read_only(db) as conn:
        for job_id, attempt, owner in conn.execute(
            "SELECT job_id, attempt, lease_owner FROM jobs "
            "WHERE status = 'running' AND source = 'local' AND lease_owner IS NOT NULL"
        ):
            held[owner].append((job_id, attempt))
    return held


def status_counts(db: Db, plugin: str | None = None) -> Counter[str]:
    with read_only(db) as conn:
        if plugin is None:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        else:
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE plugin = ? GROUP BY status", (plugin,)
            ).fetchall()
    return Counter({status: n for status, n in rows})

"""Numbered schema migrations (`NNNN_name.sql`), each applied with its bookkeeping row
in one transaction."""

from __future__ import annotations

import sqlite3
from importlib.abc import Traversable

from queue_service.store import migration_files
from queue_service.store.sqlite.sql import q
from queue_service.store.types import Migration
from queue_service.timeutil import now_ts


def migrations_dir() -> Traversable:
    """Where SQLite's migrations are (the top of `migrations/`)."""
    return migration_files.migrations_dir()


def available_migrations() -> list[Migration]:
    return migration_files.available_migrations()


def split_statements(script: str) -> list[str]:
    """Split a script into complete statements (trigger bodies keep their semicolons)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") for part in buffer.strip().splitlines() if part.strip()
    ):
        raise ValueError(f"incomplete SQL statement at end of migration: {buffer.strip()[:80]!r}")
    return statements


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute(q("create_migrations_table"))
    rows = conn.execute(q("applied_migrations")).fetchall()
    return max((row[0] for row in rows), default=0)


def latest_version() -> int:
    """The version the code expects: the highest numbered migration."""
    return migration_files.latest_version()


def applied_version(conn: sqlite3.Connection) -> int:
    """The schema version of the database, without writing anything: 0 for an empty one.

    Raises NotADatabase for an SQLite database of another application (tables but no
    schema_migrations), so that migrating never adds our tables to someone else's file.
    """
    tables = [row[0] for row in conn.execute(q("user_tables"))]
    migration_files.refuse_foreign(tables, "it is an SQLite database", "a new file")
    if "schema_migrations" not in tables:
        return 0
    rows = conn.execute(q("applied_migrations")).fetchall()
    return max((row[0] for row in rows), default=0)


refuse_newer = migration_files.refuse_newer


def probe_write(conn: sqlite3.Connection) -> None:
    """Raise sqlite3.OperationalError (SQLITE_READONLY) when the connection cannot write.

    SQLite opens a file it may not write read-only without saying so, and BEGIN
    IMMEDIATE still succeeds; only the first changed page fails. The probe changes one
    row to itself and rolls back, so it writes nothing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(q("probe_write"))
    finally:
        conn.execute("ROLLBACK")


def migrate(conn: sqlite3.Connection) -> list[Migration]:
    """Apply every pending migration; return those applied (empty when up to date).

    `conn` must be in autocommit mode (isolation_level=None). Each migration and its
    schema_migrations row commit together, so a crash never leaves a half-applied
    version. Raises SchemaTooNew when the database knows versions this code does not.
    """
    known = available_migrations()
    latest = known[-1].version if known else 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = applied_version(conn)
        if current < latest:
            conn.execute(q("create_migrations_table"))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    refuse_newer(current, latest)
    applied: list[Migration] = []
    for migration in known:
        if migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it while we waited for the lock.
            if schema_version(conn) >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                q("record_migration"),
                {"version": migration.version, "name": migration.name, "applied_at": now_ts()},
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration)
    return applied

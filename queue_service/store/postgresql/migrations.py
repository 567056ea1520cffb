"""Numbered schema migrations of the PostgreSQL store (`migrations/postgresql/NNNN_name.sql`).

Each migration runs in one transaction with its bookkeeping row, under a transaction-level
advisory lock (keyed by the schema), so processes starting at once apply it once: the
others wait, then find it applied. A schema newer than the code is refused.
"""

from __future__ import annotations

from typing import Any

import psycopg

from queue_service.store import migration_files
from queue_service.store.types import Migration
from queue_service.timeutil import now_ts

BACKEND = "postgresql"

#: Serializes migrators of one schema (the single-bigint advisory key space; the store's
#: other locks use the two-integer one, so the two never meet).
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('queue-service migrate ' || current_schema()))"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text COLLATE "C" NOT NULL,
    applied_at text COLLATE "C" NOT NULL
)"""

_USER_TABLES = """
SELECT c.relname FROM pg_class AS c
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  AND c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY c.relname"""

_APPLIED = "SELECT COALESCE(max(version), 0) FROM schema_migrations"

_RECORD = (
    "INSERT INTO schema_migrations (version, name, applied_at) "
    "VALUES (%(version)s, %(name)s, %(applied_at)s)"
)

Conn = psycopg.AsyncConnection[Any]


def available_migrations() -> list[Migration]:
    return migration_files.available_migrations(BACKEND)


def latest_version() -> int:
    return migration_files.latest_version(BACKEND)


refuse_newer = migration_files.refuse_newer


async def applied_version(conn: Conn) -> int:
    """The schema version, without writing anything: 0 for an empty schema.

    Raises NotADatabase for a schema holding another application's tables (no
    schema_migrations), so migrating never adds our tables to someone else's."""
    cur = await conn.execute(_USER_TABLES)
    tables = [row[0] for row in await cur.fetchall()]
    migration_files.refuse_foreign(
        tables,
        "the schema holds tables",
        "another database, or a schema of its own (options=-csearch_path=...)",
    )
    if "schema_migrations" not in tables:
        return 0
    cur = await conn.execute(_APPLIED)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: Conn) -> list[Migration]:
    """Apply every pending migration on `conn` (autocommit); return those applied. Raises
    SchemaTooNew when the database knows versions this code does not."""
    known = available_migrations()
    latest = known[-1].version if known else 0
    refuse_newer(await applied_version(conn), latest)
    applied: list[Migration] = []
    for migration in known:
        async with conn.transaction():
            await conn.execute(_LOCK)
            # Another process may have applied it while we waited for the lock.
            current = await applied_version(conn)
            refuse_newer(current, latest)
            if current >= migration.version:
                continue
            await conn.execute(_CREATE_TABLE)
            # No parameters: the script goes as one simple query, every statement in it.
            await conn.execute(migration.sql.encode("utf-8"), prepare=False)
            await conn.execute(
                _RECORD,
                {"version": migration.version, "name": migration.name, "applied_at": now_ts()},
            )
        applied.append(migration)
    return applied

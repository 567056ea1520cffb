"""The numbered migration files of every backend (`NNNN_name.sql`), and the rule that a
database migrated by a newer queue-service is refused.

SQLite's migrations sit at the top of `migrations/`, PostgreSQL's in `migrations/postgresql/`;
the wheel carries both inside the package (`queue_service/migrations`).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from queue_service.store.errors import NotADatabase, SchemaTooNew
from queue_service.store.types import Migration

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations_dir(backend: str | None = None) -> Traversable:
    """Where a backend's migrations are (`backend` None: SQLite's, at the top): inside the
    installed package (the wheel), or in the source tree for an editable install."""
    packaged = resources.files("queue_service").joinpath("migrations")
    top: Traversable = (
        packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"
    )
    return top if backend is None else top.joinpath(backend)


def available_migrations(backend: str | None = None) -> list[Migration]:
    """The backend's migrations in version order; they must be numbered 1..N."""
    found: list[Migration] = []
    for entry in migrations_dir(backend).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


def latest_version(backend: str | None = None) -> int:
    """The version the code expects: the backend's highest numbered migration."""
    known = available_migrations(backend)
    return known[-1].version if known else 0


def refuse_newer(current: int, latest: int) -> None:
    if current > latest:
        raise SchemaTooNew(
            f"the database schema is version {current}, newer than this queue-service "
            f"understands (up to {latest}); upgrade queue-service or use another --db"
        )


def refuse_foreign(tables: list[str], what: str, instead: str) -> None:
    """Refuse a database (`what`: "an SQLite database", "the schema") whose `tables` are
    another application's: it has tables but no schema_migrations. Migrating never adds
    our tables to someone else's; `instead` says what to give --db."""
    if tables and "schema_migrations" not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotADatabase(
            f"{what} of another application (tables: {shown}; no schema_migrations); "
            f"queue-service will not add its tables to it. Give --db {instead}"
        )

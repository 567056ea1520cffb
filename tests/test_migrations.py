"""Migrations build the schema the code expects, idempotently, and refuse newer databases."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from queue_service.store import Migration, NotADatabase, SchemaTooNew, SQLiteStore
from queue_service.store.sqlite.migrations import available_migrations, split_statements

pytestmark = pytest.mark.anyio


def schema_of(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations'"
    ).fetchall()
    return {(t, n, " ".join(sql.split())) for t, n, sql in rows}


async def test_migrations_build_the_schema_in_schema_sql(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    applied = await s.open()
    await s.close()
    assert [m.version for m in applied] == [m.version for m in available_migrations()]
    migrated = sqlite3.connect(db_path)
    expected = sqlite3.connect(":memory:")
    script = resources.files("queue_service.store.sqlite").joinpath("schema.sql").read_text()
    for statement in split_statements(script):
        expected.execute(statement)
    assert schema_of(migrated) == schema_of(expected)
    migrated.close()
    expected.close()


async def test_every_named_query_prepares_against_the_migrated_schema(db_path: Path) -> None:
    """EXPLAIN compiles a statement without running it: a misspelt table or column in any
    named query (leading comment or not) fails here, naming the query."""
    from queue_service.store.sqlite.sql import queries

    s = SQLiteStore(db_path)
    await s.open()
    await s.close()
    migrated = sqlite3.connect(db_path)
    failures = []
    for name, sql in queries().items():
        try:
            migrated.execute(f"EXPLAIN {sql}", dict.fromkeys(re.findall(r":(\w+)", sql)))
        except sqlite3.Error as exc:
            failures.append(f"{name}: {exc}")
    migrated.close()
    assert not failures, failures


async def test_migrate_is_idempotent(db_path: Path) -> None:
    first = SQLiteStore(db_path)
    assert await first.open()
    await first.close()
    again = SQLiteStore(db_path)
    assert await again.open() == []
    assert await again.schema_version() == len(available_migrations())
    await again.close()


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    await s.close()
    raw = sqlite3.connect(db_path)
    raw.execute(
        "INSERT INTO schema_migrations VALUES (999, 'future', '2099-01-01T00:00:00.000000Z')"
    )
    raw.commit()
    raw.close()
    newer = SQLiteStore(db_path)
    with pytest.raises(SchemaTooNew, match="version 999.*upgrade queue-service"):
        await newer.open()
    await newer.close()


async def test_a_failed_migration_leaves_nothing_behind(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from queue_service.store.sqlite import migrations

    real = migrations.available_migrations()
    broken = [
        *real,
        Migration(len(real) + 1, "broken", "CREATE TABLE t (x);\nSELEC oops;"),
    ]
    monkeypatch.setattr(migrations, "available_migrations", lambda: broken)
    s = SQLiteStore(db_path)
    with pytest.raises(Exception, match="syntax error"):
        await s.open()
    await s.close()
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == len(real)
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() is None
    raw.close()


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 100)
    s = SQLiteStore(path)
    with pytest.raises(NotADatabase, match="not a queue-service SQLite database"):
        await s.open()
    await s.close()

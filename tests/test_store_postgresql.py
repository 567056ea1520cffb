"""What only the PostgreSQL store has: its migrations, its connections, its server.

The behaviour both stores share is in the contract suites (test_store_*.py), which run on
every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from queue_service.store import (
    NotADatabase,
    SchemaTooNew,
    StoreUnavailable,
    create_store,
)
from queue_service.store.postgresql import PostgreSQLStore
from queue_service.store.postgresql.migrations import available_migrations, latest_version

pytestmark = pytest.mark.anyio


def _raw(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


async def test_a_new_schema_is_migrated_once(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url)
    applied = await store.open()
    try:
        assert [m.version for m in applied] == [m.version for m in available_migrations()]
        assert await store.schema_version() == latest_version() >= 1
    finally:
        await store.close()
    again = PostgreSQLStore(postgresql_url)
    assert await again.open() == []  # reopening applies nothing
    try:
        assert await again.schema_version() == latest_version()
    finally:
        await again.close()
    with _raw(postgresql_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    assert rows == [(m.version, m.name) for m in available_migrations()]


async def test_processes_starting_together_migrate_once(postgresql_url: str) -> None:
    stores = [PostgreSQLStore(postgresql_url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.open() for s in stores))
    finally:
        for s in stores:
            await s.close()
    assert sorted(len(a) for a in applied) == [0, 0, len(available_migrations())]


async def test_a_newer_schema_is_refused(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url)
    await store.open()
    await store.close()
    with _raw(postgresql_url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, 'future', 'x')",
            (latest_version() + 1,),
        )
    for migrate in (True, False):
        newer = PostgreSQLStore(postgresql_url)
        with pytest.raises(SchemaTooNew, match=f"version {latest_version() + 1}, newer"):
            await newer.open(migrate=migrate)
        await newer.close()


async def test_another_applications_schema_is_left_alone(postgresql_url: str) -> None:
    with _raw(postgresql_url) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    store = PostgreSQLStore(postgresql_url)
    with pytest.raises(NotADatabase, match="another application \\(invoices"):
        await store.open()
    await store.close()
    with _raw(postgresql_url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    assert tables == [("invoices",)]


async def test_an_unreachable_server_is_reported_without_the_password() -> None:
    store = PostgreSQLStore("postgresql://qs:secret-pw@127.0.0.1:1/nowhere", connect_timeout_s=1)
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1") as caught:
        await store.open()
    assert "secret-pw" not in str(caught.value)
    await store.close()


def test_both_postgresql_schemes_open_the_postgresql_store() -> None:
    for url in ("postgresql://127.0.0.1/db", "postgres://127.0.0.1/db"):
        assert isinstance(create_store(url), PostgreSQLStore)
    with pytest.raises(StoreUnavailable, match="mysql://"):
        create_store("mysql://127.0.0.1/db")


async def test_reads_stop_after_the_query_budget(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url, query_timeout_s=0.5)
    await store.open()
    try:
        assert await store.setting("statement_timeout") == "500ms"
    finally:
        await store.close()

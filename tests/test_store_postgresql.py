"""What only the PostgreSQL store has: its migrations, its connections, its server.

The behaviour both stores share is in the contract suites (test_store_*.py), which run on
every backend."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queue_service.statuses import Status
from queue_service.store import (
    JobNotFound,
    NewJob,
    NotADatabase,
    QueryTimeout,
    SchemaTooNew,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    create_store,
)
from queue_service.store.postgresql import PostgreSQLStore
from queue_service.store.postgresql.connection import Conn
from queue_service.store.postgresql.migrations import available_migrations, latest_version
from queue_service.store.rows import encode_json
from queue_service.timeutil import format_ts, utcnow

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
    with pytest.raises(NotADatabase, match="another application \\(tables: invoices;"):
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


async def test_both_postgresql_schemes_open_the_postgresql_store(postgresql_url: str) -> None:
    short = "postgres://" + postgresql_url.split("://", 1)[1]
    for url in (postgresql_url, short):
        store = create_store(url)
        assert isinstance(store, PostgreSQLStore)
        await store.open()
        try:
            assert await store.schema_version() == latest_version()
        finally:
            await store.close()
    with pytest.raises(StoreUnavailable, match="mysql://"):
        create_store("mysql://127.0.0.1/db")


async def test_reads_stop_after_the_query_budget(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url, query_timeout_s=0.5)
    await store.open()
    try:
        assert await store.setting("statement_timeout") == "500ms"
    finally:
        await store.close()


async def test_the_configured_pool_size_bounds_a_serving_processs_connections(
    postgresql_url: str, tmp_path: Path
) -> None:
    """`[service] pool_size` reaches the store `serve` and `worker` open: six reads at
    once hold no more than three server connections."""
    from queue_service.server import open_service

    config = tmp_path / "queue-service.toml"
    config.write_text("[service]\npool_size = 3\n")
    state = await open_service(postgresql_url, str(config))
    store = state.store
    assert isinstance(store, PostgreSQLStore)
    try:
        held: list[int] = []

        async def slow(conn: Conn) -> None:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'queue-service' AND datname = current_database()"
                "  AND state = 'active' AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            assert row is not None
            held.append(int(row[0]))
            await conn.execute("SELECT pg_sleep(0.3)")

        await asyncio.gather(*(store._read_statement(slow) for _ in range(6)))
        assert store.pool.max_size == 3
        assert len(held) == 6 and max(held) <= 2, held  # itself and at most two others
    finally:
        await store.close()


# --- transactions ----------------------------------------------------------------------


@pytest.fixture
async def pg_store(postgresql_url: str) -> AsyncIterator[PostgreSQLStore]:
    store = PostgreSQLStore(postgresql_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_slow_read_is_stopped_and_the_store_stays_usable(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url, query_timeout_s=0.2)
    await store.open()
    try:

        async def endless(conn: Conn) -> None:
            await conn.execute("SELECT pg_sleep(5)")

        with pytest.raises(QueryTimeout):
            await store._read(endless)
        assert await store.get_job("nope") is None
    finally:
        await store.close()


async def test_upkeep_gets_the_write_budget_and_reads_keep_theirs(postgresql_url: str) -> None:
    store = PostgreSQLStore(postgresql_url, pool_size=1, query_timeout_s=0.2)
    await store.open()
    try:

        async def long(conn: Conn) -> str:
            await conn.execute("SELECT pg_sleep(0.4)")
            await conn.execute("VACUUM job_count_deltas")  # no transaction block around it
            return "done"

        assert await store._maintenance(long) == "done"
        with pytest.raises(QueryTimeout):  # the same (only) connection, back on the read budget
            await store._read_statement(long)
    finally:
        await store.close()


async def test_a_connection_lost_before_commit_runs_the_transaction_again(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    runs: list[int] = []

    async def body(conn: Conn) -> str:
        runs.append(1)
        await conn.execute(
            "INSERT INTO plugin_state (plugin, state, updated_at) VALUES ('p', %s, 'now')",
            (str(len(runs)),),
        )
        if len(runs) == 1:
            # What a server restart or pg_terminate_backend does to a connection.
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return "done"

    assert await pg_store._tx(body) == "done"
    assert len(runs) == 2
    with _raw(postgresql_url) as conn:
        # The first run's insert was rolled back with its connection.
        assert conn.execute("SELECT state FROM plugin_state").fetchall() == [("2",)]


async def test_a_serialization_failure_runs_the_transaction_again(
    pg_store: PostgreSQLStore,
) -> None:
    runs: list[int] = []

    async def body(conn: Conn) -> int:
        runs.append(1)
        if len(runs) < 3:
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; "
                "END $$"
            )
        return len(runs)

    assert await pg_store._tx(body) == 3


async def test_a_caller_cancelled_while_it_waits_for_a_connection_is_cancelled(
    postgresql_url: str,
) -> None:
    """Not resumed as if nothing happened (the pool's wait can lose a cancellation), and
    the connection it was waiting for is not lost to the pool."""
    store = PostgreSQLStore(postgresql_url, pool_size=1, connect_timeout_s=2)
    await store.open()
    try:

        async def hold(conn: Conn) -> None:
            await conn.execute("SELECT pg_sleep(0.3)")

        async def quick(conn: Conn) -> str:
            await conn.execute("SELECT 1")
            return "ran"

        busy = asyncio.create_task(store._read_statement(hold))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(store._tx(quick))
        await asyncio.sleep(0.05)
        await busy
        # The connection was just handed to the waiting caller, which has not run since:
        # the moment a cancellation used to be lost.
        assert not waiting.done() and waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The one connection came back: these would wait out the pool's timeout otherwise.
        for _ in range(3):
            assert await store._tx(quick) == "ran"
    finally:
        await store.close()


async def test_other_errors_are_not_retried_and_roll_back(pg_store: PostgreSQLStore) -> None:
    runs: list[int] = []

    async def body(conn: Conn) -> None:
        runs.append(1)
        await conn.execute(
            "INSERT INTO tokens (name, token_hash, scopes, created_at) "
            "VALUES ('a', 'h', '[]', 'now')"
        )
        await conn.execute("SELECT 1 / 0")

    with pytest.raises(StoreError, match="division by zero"):
        await pg_store._tx(body)
    assert runs == [1]
    assert await pg_store.list_tokens() == []


async def test_every_pooled_connection_survives_the_servers_goodbye(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    """Connections killed while idle (a server restart, an administrator): the next calls
    reconnect instead of failing."""
    token = await pg_store.create_token("t", "ab" * 32, ["*"], None)
    await asyncio.gather(*(pg_store.get_job(str(i)) for i in range(6)))  # several connections
    with _raw(postgresql_url) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'queue-service' AND datname = current_database()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    found = await pg_store.token_by_hash("ab" * 32)
    assert found is not None and found[0] == token


# --- jobs --------------------------------------------------------------------------------


async def test_enqueue_many_keeps_the_order_given_with_one_timestamp(
    pg_store: PostgreSQLStore,
) -> None:
    jobs = [
        NewJob("p", "c", {"i": 0}),
        NewJob("p", "c", {"i": 1}, dedupe_key="k"),
        NewJob("p", "c", {"i": 2}),
        NewJob("p", "c", {"i": 3}, dedupe_key="k"),
        NewJob("p", "c", {"i": 4}, submitted_by="bob", submitted_by_token=3),
    ]
    results = await pg_store.enqueue_many(jobs)
    assert [r.deduplicated for r in results] == [False, False, False, True, False]
    assert results[3].job_id == results[1].job_id
    stored = [await pg_store.get_job(r.job_id) for r in results]
    assert all(j is not None for j in stored)
    seqs = [j.seq for j in stored if j is not None]
    assert seqs[:3] == sorted(seqs[:3]) and seqs[4] > seqs[2]
    assert len({j.created_at for j in stored if j is not None}) == 1
    last = stored[4]
    assert last is not None and (last.payload, last.submitted_by, last.submitted_by_token) == (
        {"i": 4},
        "bob",
        3,
    )


async def test_payloads_are_stored_as_the_same_json_text_as_on_sqlite(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    """What `queue-service copy` compares: the exact text, escapes and key order included,
    whether the job went in a batch or alone (with a dedupe key)."""
    payloads = [
        {"z": 1, "a": [1.5, None, True], "s": 'h\u00e9llo \u2713 \U0001f600 \\ " \n \x00'},
        {"big": 10**30, "neg": -1, "empty": "", "nested": {"b": {"a": {}}}},
        "just a string",
        None,
    ]
    batch = await pg_store.enqueue_many([NewJob("p", "c", p) for p in payloads])
    alone = await pg_store.enqueue(NewJob("p", "c", payloads[0], dedupe_key="k"))
    ids = [r.job_id for r in batch] + [alone.job_id]
    with _raw(postgresql_url) as conn:
        stored = dict(conn.execute("SELECT job_id, payload FROM jobs").fetchall())
    assert [stored[i] for i in ids] == [encode_json(p) for p in [*payloads, payloads[0]]]
    for job_id, payload in zip(ids, [*payloads, payloads[0]], strict=True):
        job = await pg_store.get_job(job_id)
        assert job is not None and job.payload == payload


async def test_concurrent_enqueues_of_one_key_make_one_job(postgresql_url: str) -> None:
    stores = [PostgreSQLStore(postgresql_url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(
            *(stores[i % 2].enqueue(NewJob("p", "c", {"i": i}, dedupe_key="k")) for i in range(20))
        )
    finally:
        for s in stores:
            await s.close()
    assert len({r.job_id for r in results}) == 1
    assert sorted(r.deduplicated for r in results) == [False] + [True] * 19


async def test_a_failed_job_holds_the_event_lock_until_it_commits(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    """Alert events commit in id order: the transaction that records one keeps the others
    that would record one waiting until it ends."""
    job_id = (await pg_store.enqueue(NewJob("p", "c"))).job_id
    await pg_store.set_status(job_id, Status.RUNNING)
    probe = "SELECT pg_try_advisory_xact_lock('alert_events'::regclass::oid::integer, 0)"
    with _raw(postgresql_url) as writer, _raw(postgresql_url) as other:
        with writer.transaction():
            writer.execute("UPDATE jobs SET status = 'failed' WHERE job_id = %s", (job_id,))
            with other.transaction():
                assert other.execute(probe).fetchone() == (False,)
        with other.transaction():
            assert other.execute(probe).fetchone() == (True,)
        events = writer.execute("SELECT job_id, status FROM alert_events").fetchall()
    assert events == [(job_id, "failed")]


async def test_prune_takes_the_finished_alert_rows_with_the_jobs(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    failed = (await pg_store.enqueue(NewJob("p", "c"))).job_id
    await pg_store.set_status(failed, Status.RUNNING)
    await pg_store.set_status(failed, Status.FAILED, last_error="boom")
    queued = (await pg_store.enqueue(NewJob("p", "c"))).job_id
    with _raw(postgresql_url) as conn:
        [(event_id,)] = conn.execute("SELECT event_id FROM alert_events").fetchall()
        conn.execute(
            "INSERT INTO alert_events (kind, job_id, plugin, command, source, status, attempt,"
            " recorded_at) VALUES ('status', 'x', 'p', 'c', 'local', 'failed', 1, '2000')"
        )
        insert = (
            "INSERT INTO alert_deliveries (delivery_id, alert, plugin, first_event_id,"
            " last_event_id, status, created_at, not_before, next_attempt_at, finished_at)"
            " VALUES (%s, 'ops', 'p', %s, %s, %s, '2000', '2000', '2000', %s)"
        )
        conn.execute(insert, ("sent-long-ago", event_id, event_id, "sent", "2000"))
        conn.execute(insert, ("still-pending", event_id, event_id, "pending", None))
    future = format_ts(utcnow() + timedelta(days=1))
    assert await pg_store.prune_finished(before=future) == 1
    assert await pg_store.get_job(failed) is None
    assert await pg_store.get_job(queued) is not None
    with _raw(postgresql_url) as conn:
        deliveries = conn.execute("SELECT delivery_id FROM alert_deliveries").fetchall()
        events = conn.execute("SELECT event_id FROM alert_events").fetchall()
    # The pending delivery keeps the event it carries; the old orphan event goes.
    assert deliveries == [("still-pending",)]
    assert events == [(event_id,)]


async def test_nul_characters_never_reach_the_server(pg_store: PostgreSQLStore) -> None:
    """PostgreSQL text cannot hold NUL: a key with one names nothing, free text keeps its
    other characters, and an identifier with one is refused before any SQL."""
    assert await pg_store.get_job("a\x00b") is None
    assert await pg_store.get_attempts("a\x00b") == []
    with pytest.raises(JobNotFound):
        await pg_store.cancel_job("a\x00b")
    with pytest.raises(JobNotFound):
        await pg_store.set_status("a\x00b", Status.RUNNING)
    with pytest.raises(ValueError, match="dedupe_key cannot contain NUL"):
        await pg_store.enqueue(
            NewJob("p", "c", {"nul": "\x00 is fine in a payload"}, dedupe_key="\x00")
        )
    job_id = (await pg_store.enqueue(NewJob("p", "c", {"nul": "\x00"}))).job_id
    await pg_store.set_status(job_id, Status.RUNNING)
    await pg_store.set_status(job_id, Status.FAILED, last_error="bad\x00byte")
    job = await pg_store.get_job(job_id)
    assert job is not None and job.payload == {"nul": "\x00"}
    assert job.last_error == "bad\ufffdbyte"
    assert await pg_store.token_by_hash("\x00") is None
    assert not await pg_store.revoke_token("\x00")
    with pytest.raises(ValueError, match="name cannot contain NUL"):
        await pg_store.create_token("a\x00", "ab" * 32, ["*"], None)


async def test_counts_follow_statements_that_change_many_jobs(
    pg_store: PostgreSQLStore, postgresql_url: str
) -> None:
    """The count triggers run per statement: one summed delta per key a statement changed
    (none for a heartbeat), and the counts stay exact through updates of many jobs with
    different keys, hour changes and deletes."""
    await pg_store.enqueue_many(
        [NewJob(p, c, {"i": i}) for i in range(5) for p in ("a", "b") for c in ("x", "y")]
    )
    mine = "SELECT count(*) FROM job_count_deltas WHERE xmin = pg_current_xact_id()::xid"
    with _raw(postgresql_url) as conn:
        with conn.transaction():
            conn.execute("UPDATE jobs SET lease_expires_at = 'later'")
            assert conn.execute(mine).fetchone() == (0,)
        with conn.transaction():
            conn.execute("UPDATE jobs SET status = 'running' WHERE plugin = 'a'")
            assert conn.execute(mine).fetchone() == (4,)  # a/x and a/y: -queued, +running
        conn.execute(
            "UPDATE jobs SET created_at = '2020-01-01T00:00:00.000000Z' WHERE command = 'y'"
        )
        conn.execute("UPDATE jobs SET status = 'succeeded' WHERE plugin = 'a' AND command = 'x'")
        conn.execute(
            "DELETE FROM jobs WHERE plugin = 'b' AND command = 'x' AND payload = '{\"i\":0}'"
        )
        keys = "plugin, command, status, source"
        hour_keys = f"{keys}, substr(created_at, 1, 13)"
        truth = conn.execute(f"SELECT {keys}, count(*) FROM jobs GROUP BY {keys}").fetchall()
        counted = conn.execute(
            f"SELECT {keys}, sum(n) FROM (SELECT {keys}, n FROM job_counts"
            f" UNION ALL SELECT {keys}, d FROM job_count_deltas) AS c"
            f" GROUP BY {keys} HAVING sum(n) <> 0"
        ).fetchall()
        hourly_truth = conn.execute(
            f"SELECT {hour_keys}, count(*) FROM jobs GROUP BY {hour_keys}"
        ).fetchall()
        hourly = conn.execute(
            f"SELECT {keys}, hour, sum(n) FROM (SELECT {keys}, hour, n"
            f" FROM job_counts_hour_plugin_command"
            f" UNION ALL SELECT {keys}, hour, d FROM job_count_deltas) AS c"
            f" GROUP BY {keys}, hour HAVING sum(n) <> 0"
        ).fetchall()

    def exact(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return sorted((*row[:-1], int(row[-1])) for row in rows)

    assert exact(counted) == exact(truth) and len(truth) == 4
    assert exact(hourly) == exact(hourly_truth) and len(hourly_truth) == 4


# --- tokens ------------------------------------------------------------------------------


async def test_processes_starting_together_create_one_first_token(postgresql_url: str) -> None:
    stores = [PostgreSQLStore(postgresql_url) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        made = await asyncio.gather(
            *(s.create_first_token("admin", f"{i}" * 64, ["*"]) for i, s in enumerate(stores))
        )
        assert sum(token is not None for token in made) == 1
        assert len(await stores[0].list_tokens()) == 1
        # Revoked, the token still counts: no second first token, ever.
        assert await stores[0].revoke_token("admin")
        assert await stores[1].create_first_token("admin", "f" * 64, ["*"]) is None
    finally:
        for s in stores:
            await s.close()


# --- the schema ----------------------------------------------------------------------------


async def test_the_schema_has_every_table_column_index_and_trigger_of_sqlite(
    postgresql_url: str, db_path: Path
) -> None:
    """The PostgreSQL schema transcribes SQLite's final one, so a copy moves rows unchanged:
    the same tables with the same columns in the same order, the same named indexes and
    triggers (PostgreSQL may have more: its own mechanisms)."""
    lite = SQLiteStore(db_path)
    await lite.open()
    await lite.close()
    with sqlite3.connect(db_path) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        ]
        sqlite_columns = {
            t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")] for t in tables
        }
        sqlite_indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
        sqlite_triggers = {
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
    conn.close()
    store = PostgreSQLStore(postgresql_url)
    await store.open()
    await store.close()
    with _raw(postgresql_url) as pg:
        pg_columns: dict[str, list[str]] = {}
        for table, column in pg.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ):
            pg_columns.setdefault(table, []).append(column)
        pg_indexes = {
            name
            for (name,) in pg.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            )
        }
        pg_triggers = {
            name
            for (name,) in pg.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
                " AND tgrelid = 'jobs'::regclass"
            )
        }
    assert {t: pg_columns.get(t) for t in sqlite_columns} == sqlite_columns
    assert sqlite_indexes <= pg_indexes, sqlite_indexes - pg_indexes
    assert sqlite_triggers <= pg_triggers, sqlite_triggers - pg_triggers


async def test_touch_stamps_last_used_at(pg_store: PostgreSQLStore) -> None:
    token = await pg_store.create_token("t", "ab" * 32, ["*"], None)
    assert token.last_used_at is None
    await pg_store.touch_token(token.token_id)
    [listed] = await pg_store.list_tokens()
    assert listed.last_used_at is not None and listed.last_used_at >= listed.created_at

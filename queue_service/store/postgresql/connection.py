"""Connections of the PostgreSQL store: one pool, transactions, retries and errors.

- One `psycopg_pool.AsyncConnectionPool` of autocommit connections (`pool_size` at most,
  one kept open). Statements are bound by the server, and psycopg prepares a statement
  on a connection once it has run a few times, so hot paths skip parsing and planning.
- `_tx(fn, *args)` runs `fn(conn, *args)` between BEGIN and COMMIT (READ COMMITTED, the
  level `FOR UPDATE SKIP LOCKED` is made for). The whole body runs again after a
  serialization failure, a deadlock, or a connection lost before COMMIT (the server rolled
  it back); a connection lost during COMMIT is reported, never retried, since the write
  may have been saved.
- `_read(fn, *args)` runs `fn` in one REPEATABLE READ, READ ONLY transaction: one snapshot
  for several statements (a page and its total). `_read_statement` runs a read of one
  statement with no transaction around it (one round trip); `_write_statement` the same
  for a write of one idempotent statement; `_maintenance` runs upkeep (VACUUM) outside a
  transaction block with the write budget.
- Every statement outside `_tx` is stopped after `query_timeout_s` (the session's
  statement_timeout); a write transaction allows `write_timeout_s`.
- Errors become the store's (queue_service/store/errors.py; postgresql/errors.py says how).

Advisory locks: key them by the oid of the table they protect, so stores in different
schemas of one database never share a lock: `pg_advisory_xact_lock('t'::regclass::oid::integer,
k)` (the two-integer form; `k` 0, or a hash of the key within the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from queue_service.store.errors import StoreUnavailable
from queue_service.store.postgresql import migrations
from queue_service.store.postgresql.errors import (
    is_connection_lost,
    is_retryable,
    translate_error,
)
from queue_service.store.types import Migration

log = logging.getLogger("queue_service.store")

T = TypeVar("T")

#: The connection a transaction body gets: tuple rows unless it asks for another factory
#: (`conn.cursor(row_factory=psycopg.rows.dict_row)`).
Conn: TypeAlias = psycopg.AsyncConnection[Any]

#: How often a transaction body runs at most (serialization failures, deadlocks, lost
#: connections), and the first pause between two runs (doubled each time, with jitter).
_MAX_RUNS = 8
_FIRST_PAUSE_S = 0.005


class CommitUnknown(StoreUnavailable):
    """The connection broke while COMMIT was on its way: the write may have been saved."""


def display_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"postgresql://{host}:{port}/{params.get('dbname') or ''}"


class Database:
    """A PostgreSQL database (or one schema of it, per the URL's search_path): a pool of
    connections and the rules every transaction follows."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        query_timeout_s: float = 2.0,
        write_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        synchronous: str | None = None,
    ) -> None:
        """`synchronous` is SQLite's durability setting, accepted so that every store takes
        the same options; PostgreSQL's durability is the server's (synchronous_commit)."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.url = url
        self.where = display_url(url)
        self.pool_size = pool_size
        self.query_timeout_s = query_timeout_s
        self.write_timeout_s = write_timeout_s
        self.connect_timeout_s = connect_timeout_s
        #: Why the store only reads (a standby server), or None.
        self.read_only: str | None = None
        self._pool: AsyncConnectionPool[Conn] | None = None
        #: Connections on their way back to the pool (see _getconn).
        self._returning: set[asyncio.Future[None]] = set()
        self._closed = False
        self._read_budget = f"SET statement_timeout = {int(query_timeout_s * 1000)}"
        self._write_budget = f"SET statement_timeout = {int(write_timeout_s * 1000)}"
        self._begin_write = f"BEGIN; SET LOCAL statement_timeout = {int(write_timeout_s * 1000)}"

    # -- connections -----------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self.connect_timeout_s)),
            "fallback_application_name": "queue-service",
        }

    async def _configure(self, conn: Conn) -> None:
        """Every new pooled connection: reads stop after the query budget; a client that
        stops inside a transaction (hung, SIGSTOPped) does not hold its locks forever."""
        await conn.execute(
            f"{self._read_budget}; "
            f"SET idle_in_transaction_session_timeout = {int(self.write_timeout_s * 2000)}",
            prepare=False,
        )

    async def _connect(self) -> Conn:
        """A connection of its own (migrations, LISTEN), outside the pool."""
        try:
            return await psycopg.AsyncConnection.connect(self.url, **self._connect_kwargs())
        except psycopg.Error as exc:
            raise translate_error(exc, self.where) from exc

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StoreUnavailable("the store is not open (call open() first) or closed")
        return self._pool

    async def _run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], begin: str | None
    ) -> T:
        """Run `fn` once on a pooled connection, inside `begin` ... COMMIT unless None;
        retry it as the module docstring says."""
        pause = _FIRST_PAUSE_S
        for run in range(1, _MAX_RUNS + 1):
            conn: Conn | None = None
            try:
                conn = await self._getconn()
                try:
                    if begin is None:
                        return await fn(conn, *args)
                    return await self._in_transaction(conn, begin, fn, args)
                finally:
                    # The pool rolls back (or discards) a connection left mid-transaction.
                    await self.pool.putconn(conn)
            except CommitUnknown:
                raise
            except Exception as exc:
                lost = is_connection_lost(exc, conn)
                if run == _MAX_RUNS or not (lost or is_retryable(exc)):
                    raise translate_error(exc, self.where) from exc
                if lost:
                    # The other idle connections most likely died with this one (a server
                    # restart): replace them before the next run takes one.
                    await self.pool.check()
                log.debug("retrying a transaction after %s (run %d)", type(exc).__name__, run)
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 (jitter)
            pause *= 2
        raise AssertionError("unreachable")

    async def _getconn(self) -> Conn:
        """A connection from the pool. The wait runs shielded: cancelling a caller that waits
        for a connection (a request that went away, a task stopped at close) can be lost
        inside the pool's wait on Python 3.11 (asyncio.wait_for), and the caller would go
        on as if never cancelled. So the caller is cancelled at once, and a connection that
        arrives afterwards goes straight back to the pool."""
        pool = self.pool
        getting = asyncio.ensure_future(pool.getconn())
        try:
            return await asyncio.shield(getting)
        except asyncio.CancelledError:
            getting.add_done_callback(self._give_back)
            raise

    def _give_back(self, getting: asyncio.Future[Conn]) -> None:
        if getting.cancelled() or getting.exception() is not None or self._pool is None:
            return
        task = asyncio.ensure_future(self._pool.putconn(getting.result()))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _in_transaction(
        self, conn: Conn, begin: str, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> T:
        try:
            await conn.execute(begin, prepare=False)
            result = await fn(conn, *args)
        except BaseException:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                # The pool discards a connection it cannot reset.
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK", prepare=False)
            raise
        try:
            await conn.execute("COMMIT", prepare=False)
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                raise CommitUnknown(
                    f"the connection to PostgreSQL ({self.where}) was lost while committing; "
                    "the change may or may not have been saved"
                ) from exc
            raise
        return result

    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one read-write transaction (see the module docstring)."""
        if self.read_only is not None:
            raise StoreUnavailable(self.read_only)
        return await self._run(fn, args, self._begin_write)

    async def _write_statement(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)`, a write of ONE statement, in autocommit (it commits by
        itself): one round trip instead of three. Only for a statement that may run twice
        without harm (extending a lease, stamping last_used_at): like `_tx`, it runs again
        after a lost connection, which may have lost the answer rather than the write."""
        if self.read_only is not None:
            raise StoreUnavailable(self.read_only)
        return await self._run(fn, args, None)

    async def _maintenance(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in autocommit, outside any transaction block (VACUUM
        cannot run in one), with the write budget instead of the read budget: upkeep a
        large table may need longer for than a request may wait."""
        if self.read_only is not None:
            raise StoreUnavailable(self.read_only)

        async def with_write_budget(conn: Conn, *fn_args: Any) -> T:
            await conn.execute(self._write_budget, prepare=False)
            try:
                return await fn(conn, *fn_args)
            finally:
                if not conn.broken:
                    await conn.execute(self._read_budget, prepare=False)

        return await self._run(with_write_budget, args, None)

    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one read-only snapshot."""
        return await self._run(fn, args, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    async def _read_statement(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)`, a read of ONE statement (atomic by itself), without a
        transaction around it: one round trip."""
        return await self._run(fn, args, None)

    # -- lifecycle -------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[Migration]:
        """Connect, check the schema (applying pending migrations with `migrate`), then open
        the pool. Raises NotADatabase for a schema of another application, SchemaTooNew
        for one migrated by a newer queue-service, StoreUnavailable when the server cannot
        be reached (the message says why)."""
        if self._pool is not None:
            raise RuntimeError("the store is already open")
        conn = await self._connect()
        try:
            applied = await self._setup(conn, migrate)
        except psycopg.Error as exc:
            raise translate_error(exc, self.where) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            timeout=self.connect_timeout_s,
            # The pool retries a lost connection in the background with a doubling pause
            # and no cap until reconnect_timeout: after a long outage its next try could be
            # minutes away. Giving up soon instead lets the next request that waits start a
            # fresh attempt at once, so service resumes as soon as the server answers.
            reconnect_timeout=self.connect_timeout_s,
            name="queue-service",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout_s)
        except Exception as exc:
            await pool.close()
            raise translate_error(exc, self.where) from exc
        self._pool = pool
        return applied

    async def _setup(self, conn: Conn, migrate: bool) -> list[Migration]:
        cur = await conn.execute("SELECT pg_is_in_recovery(), current_schema()")
        row = await cur.fetchone()
        assert row is not None
        standby, schema = row
        if schema is None:
            raise StoreUnavailable(
                f"{self.where}: the search_path names no existing schema; create it "
                "(CREATE SCHEMA ...) or fix the options of the URL"
            )
        if standby:
            version = await migrations.applied_version(conn)
            latest = migrations.latest_version()
            migrations.refuse_newer(version, latest)
            if version < latest:
                raise StoreUnavailable(
                    f"{self.where} is a read-only standby and its schema (version {version}) "
                    f"must be migrated to version {latest} on the primary first"
                )
            self.read_only = (
                "the database is read-only (a standby server); writes are refused until "
                "the service uses the primary"
            )
            return []
        if migrate:
            return await migrations.migrate(conn)
        migrations.refuse_newer(await migrations.applied_version(conn), migrations.latest_version())
        return []

    async def close(self) -> None:
        """Release every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def schema_version(self) -> int:
        return await self._read(migrations.applied_version)

    async def listen_connection(self) -> Conn:
        """A connection of its own for LISTEN (autocommit), outside the pool; the caller
        closes it."""
        return await self._connect()

    # -- helpers for tests and diagnostics -------------------------------

    async def setting(self, name: str) -> str:
        """One server setting as a pooled connection sees it (`SHOW name`)."""

        async def show(conn: Conn) -> str:
            cur = await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])

        return await self._read_statement(show)

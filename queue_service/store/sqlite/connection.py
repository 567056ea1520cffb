"""Connections and threads for the SQLite store.

- One writer connection on one dedicated thread (writer.py). Every write is a whole
  transaction function run there inside BEGIN IMMEDIATE, so a write takes the database
  lock up front and never deadlocks on upgrade; waiting writes share one COMMIT.
- A small pool of reader threads, each with its own connection. WAL lets them read while
  the writer writes; a listing's page and total come from one snapshot.
- A progress handler interrupts any read that runs past its time budget, so no request
  can hold a connection for long.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from queue_service.store.errors import StoreUnavailable
from queue_service.store.sqlite import migrations
from queue_service.store.sqlite.errors import is_busy, translate_error
from queue_service.store.sqlite.jobs import fold_count_deltas
from queue_service.store.sqlite.opening import Opening
from queue_service.store.sqlite.writer import WriterThread, wait_busy
from queue_service.store.types import Migration
from queue_service.store.wakeups import WakeSignal

T = TypeVar("T")

Synchronous = Literal["NORMAL", "FULL"]


class Database(Opening):
    """One SQLite file: a writer thread (group commit), reader threads, and the rules
    every connection follows (WAL, busy_timeout, foreign keys, a time budget per read)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        readers: int = 2,
        busy_timeout_ms: int = 5000,
        write_timeout_s: float = 30.0,
        query_timeout_s: float = 2.0,
        pool_size: int | None = None,
    ) -> None:
        """`pool_size` is PostgreSQL's, accepted so that every store takes the same options;
        SQLite has one writer and `readers` reading threads."""
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.write_timeout_s = write_timeout_s
        self.query_timeout_s = query_timeout_s
        self._writer = WriterThread(
            self._thread_conn, self._begin_immediate, self._translate, fold_count_deltas
        )
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="qs-store-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Why the store only reads (its file or directory cannot be written), or None.
        self.read_only: str | None = None
        #: The URI every connection opens in read-only mode.
        self._read_only_uri: str | None = None
        #: Set when this store enqueues (or requeues) a job: what wait_for_work waits for.
        self._work = WakeSignal()

    # -- connections -----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            if self._read_only_uri is not None:
                conn = sqlite3.connect(
                    self._read_only_uri,
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout_ms / 1000,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            else:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout_ms / 1000,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreUnavailable(f"cannot put {self.path} in WAL mode (got {mode!r})")
            conn.row_factory = sqlite3.Row
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise translate_error(exc, self.path) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        deadline = [float("inf")]
        self._local.deadline = deadline
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline[0] else 0, 10_000)
        with self._lock:
            self._connections.append(conn)
        return conn

    def _thread_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop_thread_conn(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            self._connections.remove(conn)
        conn.close()

    def _in_read(self, fn: Callable[..., T], *args: Any, snapshot: bool = True) -> T:
        """Run `fn` on this thread's connection within the read time budget; with
        `snapshot`, inside one read transaction (several statements, one view)."""
        conn = self._thread_conn()
        self._local.deadline[0] = time.monotonic() + self.query_timeout_s
        try:
            if not snapshot:
                return fn(conn, *args)
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        finally:
            self._local.deadline[0] = float("inf")

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """Open a write transaction, taking the database lock up front."""
        give_up = time.monotonic() + self.write_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                error = translate_error(exc, self.path)
                # busy_timeout already waited; keep trying until our own budget ends,
                # so contention never surfaces as "database is locked".
                if is_busy(error) and wait_busy(give_up):
                    continue
                raise error from exc

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            error = translate_error(exc, self.path)
            error.__cause__ = exc
            return error
        return exc

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._in_read, fn, *args)

    async def _read_inline(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read that is bounded by construction (index seeks that stop after a few
        rows) on the calling thread. A thread hop costs more than such a read, and under
        load the GIL hand-offs between the loop and reader threads dominate: every page
        (a few index walks, totals from the counts and hourly rollups) runs here."""
        return self._in_read(fn, *args)

    async def _read_statement(self, fn: Callable[..., T], *args: Any) -> T:
        """Like _read_inline, for a read of one statement: it is atomic by itself, so it
        needs no BEGIN and COMMIT around it (the token lookup, one job)."""
        return self._in_read(fn, *args, snapshot=False)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a transaction function on the writer thread; it may share its COMMIT with
        other callers' (group commit) but is rolled back alone if it raises."""
        if self.read_only is not None:
            raise StoreUnavailable(self.read_only)
        result: T = await self._writer.submit(fn, *args)
        return result

    async def open(self, *, migrate: bool = True) -> list[Migration]:
        """Open the database, create it if missing, and apply pending migrations.

        A database whose file or directory cannot be written is opened read-only when
        its schema is current: reads work, every write raises StoreUnavailable, and
        `read_only` says why. Raises NotADatabase for a file that is not a queue-service
        SQLite database, SchemaTooNew for one migrated by a newer version, and
        StoreUnavailable when it cannot be opened at all (the message says why).
        """
        applied: list[Migration] = await self._writer.submit(
            self._setup, migrate, transactional=False
        )
        return applied

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._writer.stop()
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def pragma(self, name: str) -> Any:
        """Read one PRAGMA (for tests and diagnostics); `name` must be a plain identifier."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        return await self._read(lambda c: c.execute(f"PRAGMA {name}").fetchone()[0])

    async def schema_version(self) -> int:
        return await self._read(migrations.schema_version)

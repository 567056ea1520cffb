"""The SQLite implementation of the store: the only code that runs SQL.

Design:
- One writer connection on one dedicated thread. Every write is a whole
  transaction function run there, opened with BEGIN IMMEDIATE, so a write takes
  the database lock up front and never deadlocks on upgrade.
- A small pool of reader threads, each with its own connection. WAL lets them
  read while the writer writes; a listing's page and total come from one snapshot.
- Every statement is a named query from queries.sql.
- A progress handler interrupts any query that runs past its time budget, so no
  request can hold a connection for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from queue_service.statuses import SOURCES, STATUSES, Source, Status, allowed_predecessors
from queue_service.store import _schedules, _sync, _work, migrations
from queue_service.store.errors import (
    Conflict,
    IllegalTransition,
    JobNotFound,
    NotADatabase,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)
from queue_service.store.rows import (
    encode_json,
    job_from_row,
    summary_from_row,
    sync_state_from_row,
    token_from_row,
)
from queue_service.store.sql import q
from queue_service.store.types import (
    AttemptEnd,
    Cursor,
    EnqueueResult,
    ExternalJob,
    FireResult,
    Job,
    JobFilter,
    JobPage,
    NewJob,
    RecoveredJob,
    ScheduleState,
    SyncState,
    Token,
    UpsertCounts,
)
from queue_service.timeutil import format_ts, now_ts, utcnow

T = TypeVar("T")

Synchronous = Literal["NORMAL", "FULL"]

#: Upper bound for a cursor's created_at: sorts after any timestamp.
_END_OF_TIME = "~"
_MAX_SEQ = 2**63 - 1

_SUMMARY_QUERY = {
    (False, False): "list_all",
    (True, False): "list_plugin",
    (True, True): "list_plugin_command",
    (False, True): "list_command",
}
_TOTAL_QUERY = {key: name.replace("list_", "total_") for key, name in _SUMMARY_QUERY.items()}
_COUNT_QUERY = {key: name.replace("list_", "count_") for key, name in _SUMMARY_QUERY.items()}

_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY"}


def _is_busy(error: StoreError) -> bool:
    return type(error) is StoreUnavailable and "busy" in str(error)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open; a failing rollback must not hide the error that caused it
    (SQLite has rolled back itself when it reports no transaction)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _prefixed(path: str, exc: NotADatabase) -> str:
    text = str(exc)
    return text if text.startswith(path) else f"{path}: {text}"


def translate_error(exc: sqlite3.Error, path: str) -> StoreError:
    """Map an sqlite3 error to the store's vocabulary, with a message an operator can act on."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_INTERRUPT" or text == "interrupted":
        return QueryTimeout("the query took too long and was stopped; narrow the filters")
    if name in _BUSY or "locked" in text:
        return StoreUnavailable("the database is busy; try again shortly")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StoreUnavailable(
            "the database is read-only; writes are refused until it is writable"
        )
    if name == "SQLITE_FULL" or "disk is full" in text:
        return StoreUnavailable("the disk holding the database is full; free space to resume")
    if name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"} or "not a database" in text:
        return NotADatabase(f"{path} is not a queue-service SQLite database (or it is corrupt)")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StoreUnavailable(f"cannot open the database: {text}")
    if name in {"SQLITE_IOERR_WRITE", "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR_FSYNC"}:
        # A file-size limit (RLIMIT_FSIZE) or a quota shows up here rather than as "full".
        return StoreUnavailable(
            f"cannot write the database ({text}): the disk may be full, or a size limit or "
            "quota reached; writes resume when it can grow"
        )
    if name.startswith("SQLITE_IOERR"):
        return StoreUnavailable(f"I/O error on the database: {text}")
    return StoreError(text)


class SQLiteStore:
    """The job store on one SQLite file.

    Call `await open()` before use and `await close()` after. Every public method
    is a coroutine that runs its SQL off the event loop.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        readers: int = 2,
        busy_timeout_ms: int = 5000,
        write_timeout_s: float = 30.0,
        query_timeout_s: float = 2.0,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.write_timeout_s = write_timeout_s
        self.query_timeout_s = query_timeout_s
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="qs-store-write")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="qs-store-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Why the store only reads (its file or directory cannot be written), or None.
        self.read_only: str | None = None
        #: The URI every connection opens in read-only mode.
        self._read_only_uri: str | None = None

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

    def _in_read(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._thread_conn()
        self._local.deadline[0] = time.monotonic() + self.query_timeout_s
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        finally:
            self._local.deadline[0] = float("inf")

    def _in_write(self, fn: Callable[..., T], *args: Any) -> T:
        if self.read_only is not None:
            raise StoreUnavailable(self.read_only)
        conn = self._thread_conn()
        give_up = time.monotonic() + self.write_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                error = translate_error(exc, self.path)
                # busy_timeout already waited; keep trying until our own budget ends,
                # so contention never surfaces as "database is locked".
                if _is_busy(error) and time.monotonic() < give_up:
                    time.sleep(0.01)
                    continue
                raise error from exc
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise translate_error(exc, self.path) from exc
                raise

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._in_read, fn, *args)

    async def _read_inline(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read that is bounded by construction (index seeks that stop after a few
        rows) on the calling thread. A thread hop costs more than such a read, and under
        load the GIL hand-offs between the loop and reader threads dominate: the polling
        paths (token lookup, one job, a page without time bounds) run here."""
        return self._in_read(fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._in_write, fn, *args)

    # -- lifecycle -------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[migrations.Migration]:
        """Open the database, create it if missing, and apply pending migrations.

        A database whose file or directory cannot be written is opened read-only when
        its schema is current: reads work, every write raises StoreUnavailable, and
        `read_only` says why. Raises NotADatabase for a file that is not a queue-service
        SQLite database, SchemaTooNew for one migrated by a newer version, and
        StoreUnavailable when it cannot be opened at all (the message says why).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._setup, migrate)

    def _setup(self, migrate: bool) -> list[migrations.Migration]:
        give_up = time.monotonic() + self.write_timeout_s
        while True:
            try:
                return self._setup_read_write(migrate)
            except NotADatabase as exc:
                raise NotADatabase(_prefixed(self.path, exc)) from exc.__cause__
            except StoreUnavailable as error:
                self._drop_thread_conn()
                # Other processes writing at the same moment must not fail a start.
                if _is_busy(error) and time.monotonic() < give_up:
                    time.sleep(0.01)
                    continue
                unwritable = self._unwritable()
                if unwritable is None or not Path(self.path).is_file():
                    raise self._cannot_open(error) from error
                self._open_read_only(unwritable)
                return []

    def _setup_read_write(self, migrate: bool) -> list[migrations.Migration]:
        self._identify()
        conn = self._thread_conn()
        try:
            if migrate:
                applied = migrations.migrate(conn)
            else:
                migrations.refuse_newer(
                    migrations.applied_version(conn), migrations.latest_version()
                )
                applied = []
            migrations.probe_write(conn)
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        return applied

    def _identify(self) -> None:
        """Refuse a file that is not a queue-service database before anything changes it:
        switching to WAL rewrites the file header, even of another application's database."""
        path = Path(self.path).absolute()
        if not path.is_file():
            return
        try:
            conn = sqlite3.connect(
                f"file:{urllib.parse.quote(str(path))}?mode=ro",
                uri=True,
                timeout=self.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        try:
            migrations.applied_version(conn)
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        finally:
            conn.close()

    def _unwritable(self) -> str | None:
        """What keeps the database from being written, per the OS, or None. No path in it:
        the reason is also every refused write's answer, and API callers need no paths."""
        path = Path(self.path).absolute()
        if not os.access(path.parent, os.W_OK):
            return "its directory is not writable"
        if path.exists() and not os.access(path, os.W_OK):
            return "the file is not writable"
        return self._read_only_reason_from_sqlite()

    def _read_only_reason_from_sqlite(self) -> str | None:
        """SQLite may find a file read-only that access(2) allows (a read-only mount seen
        through an overlay, say): ask it, with a connection of its own."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.5)
        except sqlite3.Error:
            return None
        try:
            migrations.probe_write(conn)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
                return "SQLite can only read the file"
            return None
        finally:
            conn.close()
        return None

    def _cannot_open(self, error: StoreUnavailable) -> StoreUnavailable:
        path = Path(self.path).absolute()
        if not path.exists() and not os.access(path.parent, os.W_OK):
            return StoreUnavailable(
                f"cannot create the database {path}: its directory is not writable"
            )
        return error

    def _open_read_only(self, why: str) -> None:
        """Serve reads from a database that cannot be written, if its schema is current."""
        path = Path(self.path).absolute()
        base = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        # mode=ro still needs the -shm file, which an unwritable directory cannot get.
        # immutable=1 reads the file alone, which is right only while no write-ahead log
        # holds committed pages; with one, refuse rather than serve stale rows.
        wal = Path(f"{path}-wal")
        candidates = [base]
        if not (wal.exists() and wal.stat().st_size > 0):
            candidates.append(base + "&immutable=1")
        version: int | None = None
        failure: StoreError | None = None
        for uri in candidates:
            self._read_only_uri = uri
            try:
                version = migrations.applied_version(self._thread_conn())
                break
            except NotADatabase as exc:
                raise NotADatabase(_prefixed(self.path, exc)) from exc.__cause__
            except sqlite3.Error as exc:
                failure = translate_error(exc, self.path)
            except StoreError as exc:
                failure = exc
            self._drop_thread_conn()
        if version is None:
            self._read_only_uri = None
            if len(candidates) == 1:
                raise StoreUnavailable(
                    f"{path} cannot be opened: {why}, and its write-ahead log {wal} "
                    "cannot be read without writing beside it; make the directory writable"
                )
            assert failure is not None
            raise failure
        latest = migrations.latest_version()
        migrations.refuse_newer(version, latest)
        if version < latest:
            self._drop_thread_conn()
            self._read_only_uri = None
            raise StoreUnavailable(
                f"{path} is read-only ({why}) and its schema (version {version}) must be "
                f"migrated to version {latest} first; make it writable and start again"
            )
        self.read_only = (
            f"the database is read-only ({why}); writes are refused until it is writable "
            "and the service is restarted"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
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

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: NewJob) -> EnqueueResult:
        """Insert a queued job; with a dedupe_key that matches a queued or running job of the
        same plugin and command, return that job instead (deduplicated=True)."""
        results = await self._write(insert_jobs, [job])
        return results[0]

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Enqueue several jobs in one transaction (all or none)."""
        return await self._write(insert_jobs, list(jobs))

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read_inline(_get_job, job_id)

    async def get_attempts(self, job_id: str) -> list[dict[str, Any]]:
        def fetch(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(q("get_attempts"), {"job_id": job_id})]

        return await self._read_inline(fetch)

    async def list_jobs(
        self, filters: JobFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> JobPage:
        """A page of jobs, newest first, with the exact total matching `filters`.

        Order is (created_at, seq) descending, so keyset paging with `cursor` never
        skips or repeats a job, even while jobs are added.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if filters.created_after is None and filters.created_before is None:
            return await self._read_inline(_list_jobs, filters, limit, cursor)
        # Totals with time bounds count index ranges: off the event loop.
        return await self._read(_list_jobs, filters, limit, cursor)

    async def queue_depth(self) -> int:
        """Jobs that are queued or running."""
        return await self._read_inline(lambda c: int(c.execute(q("queue_depth")).fetchone()[0]))

    async def set_status(
        self,
        job_id: str,
        status: Status,
        *,
        result: Any = None,
        last_error: str | None = None,
    ) -> Status:
        """Move a job to `status` if the vocabulary allows it from its current status.

        Raises JobNotFound or IllegalTransition; nothing is written in either case.
        """
        return await self._write(_set_status, job_id, status, result, last_error)

    # -- tokens ----------------------------------------------------------

    async def create_token(
        self, name: str, token_hash: str, scopes: Sequence[str], expires_at: str | None
    ) -> Token:
        def insert(conn: sqlite3.Connection) -> Token:
            try:
                conn.execute(
                    q("insert_token"),
                    {
                        "name": name,
                        "token_hash": token_hash,
                        "scopes": json.dumps(list(scopes)),
                        "created_at": now_ts(),
                        "expires_at": expires_at,
                    },
                ).fetchall()
            except sqlite3.IntegrityError:
                raise Conflict(f"a live token named {name!r} already exists") from None
            row = conn.execute(q("token_by_hash"), {"token_hash": token_hash}).fetchone()
            return token_from_row(row)

        return await self._write(insert)

    async def create_first_token(
        self, name: str, token_hash: str, scopes: Sequence[str]
    ) -> Token | None:
        """Create a token only on a database that has never had one, atomically (two
        processes starting on a fresh database create one between them). None when a
        token exists, even revoked or expired: revoking every token locks the API."""

        def insert(conn: sqlite3.Connection) -> Token | None:
            now = now_ts()
            if conn.execute(q("count_all_tokens")).fetchone()[0]:
                return None
            for suffix in range(1, 1000):
                candidate = name if suffix == 1 else f"{name}-{suffix}"
                params = {
                    "name": candidate,
                    "token_hash": token_hash,
                    "scopes": json.dumps(list(scopes)),
                    "created_at": now,
                    "expires_at": None,
                }
                try:
                    conn.execute(q("insert_token"), params).fetchall()
                except sqlite3.IntegrityError:
                    continue
                return token_from_row(
                    conn.execute(q("token_by_hash"), {"token_hash": token_hash}).fetchone()
                )
            raise Conflict(f"no free token name like {name!r}")

        return await self._write(insert)

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        """The token row with this hash, and the stored hash (for a constant-time compare)."""

        def fetch(conn: sqlite3.Connection) -> tuple[Token, str] | None:
            row = conn.execute(q("token_by_hash"), {"token_hash": token_hash}).fetchone()
            return None if row is None else (token_from_row(row), row["token_hash"])

        return await self._read_inline(fetch)

    async def list_tokens(self) -> list[Token]:
        return await self._read(lambda c: [token_from_row(r) for r in c.execute(q("list_tokens"))])

    async def count_live_tokens(self) -> int:
        params = {"now": now_ts()}
        return await self._read(
            lambda c: int(c.execute(q("count_live_tokens"), params).fetchone()[0])
        )

    async def revoke_token(self, name: str) -> bool:
        """Revoke the live token called `name`; False when there is none."""

        def revoke(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(q("revoke_token"), {"name": name, "now": now_ts()}).fetchall()
            return bool(rows)

        return await self._write(revoke)

    async def touch_token(self, token_id: int) -> None:
        await self._write(
            lambda c: c.execute(q("touch_token"), {"token_id": token_id, "now": now_ts()})
        )

    # -- worker ----------------------------------------------------------

    async def claim_jobs(
        self,
        plugin: str,
        *,
        limit: int,
        owner: str,
        lease_seconds: float,
        concurrency: int | None = None,
        now: datetime | None = None,
    ) -> list[Job]:
        """Claim up to `limit` runnable queued jobs of `plugin` for `owner`.

        One UPDATE … RETURNING: each claimed job becomes running, its attempt is
        incremented, started_at and a lease are set, and an attempt row is opened.
        With `concurrency`, running jobs of the plugin (in every process) count
        against it.
        """
        moment = now or utcnow()
        lease = format_ts(moment + timedelta(seconds=lease_seconds))
        return await self._write(
            _work.claim_jobs, plugin, limit, owner, lease, concurrency, format_ts(moment)
        )

    async def heartbeat(
        self,
        held: Sequence[tuple[str, int]],
        *,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> dict[str, bool]:
        """Extend the leases of (job_id, attempt) pairs `owner` holds to `now` (default:
        the current time) plus `lease_seconds`.

        Returns {job_id: cancel_requested} for the leases still held; a job missing
        from the answer was recovered by someone else and must not be finished.
        """
        if not held:
            return {}
        lease = format_ts((now or utcnow()) + timedelta(seconds=lease_seconds))
        return await self._write(_work.heartbeat, list(held), owner, lease)

    async def finish_attempt(
        self, job_id: str, *, plugin: str, attempt: int, owner: str, end: AttemptEnd
    ) -> Status | None:
        """Record how an attempt ended and move the job on, in one transaction.

        Plugin state updates are merged in the same transaction. Returns the job's new
        status (a requested cancel wins over a retry), or None, writing nothing, when
        `owner` no longer holds this attempt's lease.
        """
        return await self._write(_work.finish_attempt, job_id, plugin, attempt, owner, end)

    async def recover_expired_leases(
        self, *, now: datetime | None = None, limit: int = 500
    ) -> list[RecoveredJob]:
        """Requeue (or mark dead) running jobs whose lease expired. Safe to run from
        several processes at once: each expired lease is recovered exactly once."""
        return await self._write(_work.recover_expired, format_ts(now or utcnow()), limit)

    async def release_jobs(self, held: Sequence[tuple[str, int]], *, owner: str) -> list[str]:
        """Graceful shutdown: return running jobs to queued without spending the attempt."""
        if not held:
            return []
        return await self._write(_work.release, list(held), owner)

    async def cancel_job(self, job_id: str, *, reason: str = "canceled by request") -> Status:
        """Cancel a queued job (returns canceled) or flag a running one (returns running).

        Raises JobNotFound, or Conflict when the job already finished.
        """
        return await self._write(_work.cancel, job_id, reason)

    async def get_plugin_state(self, plugin: str) -> dict[str, Any]:
        return await self._read(_work.plugin_state, plugin)

    async def kill_orphaned_jobs(
        self, known_plugins: Sequence[str], *, limit: int = 500
    ) -> list[str]:
        """Mark dead the queued local jobs whose plugin is not installed."""

        def run(conn: sqlite3.Connection) -> list[str]:
            params = {
                "known_plugins": json.dumps(list(known_plugins)),
                "now": now_ts(),
                "limit": limit,
            }
            return [row[0] for row in conn.execute(q("orphaned_jobs"), params)]

        return await self._write(run)

    async def prune_finished(self, *, before: str, limit: int = 500) -> int:
        """Delete up to `limit` finished jobs completed before `before` (one small
        transaction; call repeatedly). Queued and running jobs are never pruned."""

        def run(conn: sqlite3.Connection) -> int:
            params = {"before": before, "limit": limit}
            deleted = conn.execute(q("prune_finished"), params).rowcount
            conn.execute(q("prune_schedule_fires"), params)
            return int(deleted)

        return await self._write(run)

    async def next_run_after(self, plugins: Sequence[str]) -> str | None:
        """The earliest run_after among queued jobs of `plugins` (None when there is none)."""
        params = {"plugins": json.dumps(list(plugins))}
        return await self._read(lambda c: c.execute(q("next_run_after"), params).fetchone()[0])

    # -- external runs (Databricks sync) ---------------------------------

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        """Upsert a page of mirrored runs and save the sync state, in one transaction."""
        return await self._write(_sync.record_sync_page, state, list(jobs))

    async def upsert_external_jobs(self, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        return await self._write(_sync.upsert_external_jobs, list(jobs))

    async def save_sync_state(self, state: SyncState) -> None:
        await self._write(_sync.save_sync_state, state)

    async def get_sync_states(self) -> list[SyncState]:
        return await self._read(
            lambda c: [sync_state_from_row(r) for r in c.execute(q("get_sync_states"))]
        )

    async def list_active_external_jobs(self, source: Source) -> list[Job]:
        """Jobs of `source` that are queued or running."""
        return await self._read(
            lambda c: [
                job_from_row(r)
                for r in c.execute(q("active_external_jobs"), {"source": source.value})
            ]
        )

    # -- schedules -------------------------------------------------------

    async def get_schedule_states(self) -> dict[str, ScheduleState]:
        return await self._read(_schedules.schedule_states)

    async def fire_schedule_slot(
        self,
        schedule_key: str,
        slot: str,
        next_run_at: str,
        job: NewJob,
        skip_if_running: bool,
    ) -> FireResult:
        """Fire one schedule slot at most once (UNIQUE (schedule, slot)), in one transaction."""
        return await self._write(
            _schedules.fire_slot, schedule_key, slot, next_run_at, job, skip_if_running
        )

    async def set_schedule_next_run(self, schedule_key: str, next_run_at: str) -> None:
        await self._write(_schedules.set_next_run, schedule_key, next_run_at)


# -- transaction bodies (run on a store thread, inside a transaction) -----


def insert_jobs(conn: sqlite3.Connection, jobs: list[NewJob]) -> list[EnqueueResult]:
    now = now_ts()
    results: list[EnqueueResult] = []
    for job in jobs:
        params = {
            "job_id": job.job_id or str(uuid.uuid4()),
            "plugin": job.plugin,
            "command": job.command,
            "payload": encode_json(job.payload),
            "max_attempts": job.max_attempts,
            "submitted_by": job.submitted_by,
            "dedupe_key": job.dedupe_key,
            "schedule_id": job.schedule_id,
            "created_at": now,
            "run_after": job.run_after or now,
        }
        inserted = conn.execute(q("insert_job"), params).fetchone()
        if inserted is not None:
            results.append(EnqueueResult(inserted[0], deduplicated=False))
            continue
        existing = conn.execute(q("find_active_dedupe"), params).fetchone()
        results.append(EnqueueResult(existing[0], deduplicated=True))
    return results


def _get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(q("get_job"), {"job_id": job_id}).fetchone()
    return None if row is None else job_from_row(row)


def _list_jobs(
    conn: sqlite3.Connection, filters: JobFilter, limit: int, cursor: Cursor | None
) -> JobPage:
    key = (filters.plugin is not None, filters.command is not None)
    statuses = sorted(set(filters.statuses or STATUSES))
    sources = sorted(set(filters.sources or SOURCES))
    base = {
        "plugin": filters.plugin,
        "command": filters.command,
        "after": filters.created_after or "",
        "before": filters.created_before or _END_OF_TIME,
        "cursor_created": cursor.created_at if cursor else _END_OF_TIME,
        "cursor_seq": cursor.seq if cursor else _MAX_SEQ,
        "limit": limit + 1,
    }
    # Counts per (status, source) from job_counts: the exact total when there are no time
    # bounds, and the pairs worth listing at all (a pair with no jobs needs no query).
    counts = {
        (status, source): int(n)
        for status, source, n in conn.execute(
            q(_TOTAL_QUERY[key]),
            {**base, "statuses": json.dumps(statuses), "sources": json.dumps(sources)},
        )
        if n
    }
    # One index walk per pair, merged lazily: the cursors step only as far as the merge
    # needs, so a page reads about limit + pairs rows, not limit x pairs.
    walks = [
        conn.execute(q(_SUMMARY_QUERY[key]), {**base, "status": status, "source": source})
        for status, source in counts
    ]
    try:
        merged = heapq.merge(*walks, key=lambda r: (r["created_at"], r["seq"]), reverse=True)
        rows = list(itertools.islice(merged, limit + 1))
    finally:
        for walk in walks:
            walk.close()
    jobs = [summary_from_row(r) for r in rows[:limit]]
    next_cursor = Cursor(jobs[-1].created_at, jobs[-1].seq) if len(rows) > limit else None

    if filters.created_after is None and filters.created_before is None:
        total = sum(counts.values())
    else:
        total = sum(
            conn.execute(
                q(_COUNT_QUERY[key]), {**base, "status": status, "source": source}
            ).fetchone()[0]
            for status, source in counts
        )
    return JobPage(jobs=jobs, total=int(total), next_cursor=next_cursor)


def _set_status(
    conn: sqlite3.Connection, job_id: str, status: Status, result: Any, last_error: str | None
) -> Status:
    current = conn.execute(q("get_status"), {"job_id": job_id}).fetchone()
    if current is None:
        raise JobNotFound(job_id)
    allowed = sorted(allowed_predecessors(status, Source(current["source"])))
    row = conn.execute(
        q("set_status"),
        {
            "job_id": job_id,
            "status": status.value,
            "result": encode_json(result),
            "last_error": last_error,
            "now": now_ts(),
            "allowed_from": json.dumps(allowed),
        },
    ).fetchone()
    if row is None:
        raise IllegalTransition(job_id, current["status"], status.value)
    return Status(row[0])

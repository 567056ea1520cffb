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
import heapq
import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from queue_service.statuses import SOURCES, STATUSES, Source, Status, allowed_predecessors
from queue_service.store import migrations
from queue_service.store.errors import (
    Conflict,
    IllegalTransition,
    JobNotFound,
    NotADatabase,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)
from queue_service.store.sql import q
from queue_service.store.types import (
    Cursor,
    EnqueueResult,
    Job,
    JobFilter,
    JobPage,
    JobSummary,
    NewJob,
    Token,
)
from queue_service.timeutil import now_ts

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


def _decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _encode_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        seq=row["seq"],
        job_id=row["job_id"],
        plugin=row["plugin"],
        command=row["command"],
        status=Status(row["status"]),
        source=Source(row["source"]),
        payload=_decode_json(row["payload"]),
        result=_decode_json(row["result"]),
        events=_decode_json(row["events"]),
        logs=_decode_json(row["logs"]),
        last_error=row["last_error"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        submitted_by=row["submitted_by"],
        external_id=row["external_id"],
        external_url=row["external_url"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        run_after=row["run_after"],
        lease_expires_at=row["lease_expires_at"],
        dedupe_key=row["dedupe_key"],
        schedule_id=row["schedule_id"],
    )


def _summary_from_row(row: sqlite3.Row) -> JobSummary:
    return JobSummary(
        job_id=row["job_id"],
        plugin=row["plugin"],
        command=row["command"],
        status=Status(row["status"]),
        source=Source(row["source"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        attempt=row["attempt"],
        external_url=row["external_url"],
        seq=row["seq"],
    )


def _token_from_row(row: sqlite3.Row) -> Token:
    return Token(
        token_id=row["token_id"],
        name=row["name"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def translate_error(exc: sqlite3.Error, path: str) -> StoreError:
    """Map an sqlite3 error to the store's vocabulary, with a message an operator can act on."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_INTERRUPT" or text == "interrupted":
        return QueryTimeout("the query took too long and was stopped; narrow the filters")
    if name in _BUSY or "locked" in text:
        return StoreUnavailable("the database is busy; try again shortly")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StoreUnavailable(f"the database {path} is read-only; writes are refused")
    if name == "SQLITE_FULL" or "disk is full" in text:
        return StoreUnavailable("the disk holding the database is full; free space to resume")
    if name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"} or "not a database" in text:
        return NotADatabase(f"{path} is not a queue-service SQLite database (or it is corrupt)")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StoreUnavailable(f"cannot open the database {path}: {text}")
    if name.startswith("SQLITE_IOERR"):
        return StoreUnavailable(f"I/O error on the database {path}: {text}")
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

    # -- connections -----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_ms / 1000,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreUnavailable(f"cannot put {self.path} in WAL mode (got {mode!r})")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
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
        conn = self._thread_conn()
        give_up = time.monotonic() + self.write_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                error = translate_error(exc, self.path)
                # busy_timeout already waited; keep trying until our own budget ends,
                # so contention never surfaces as "database is locked".
                busy = type(error) is StoreUnavailable and "busy" in str(error)
                if busy and time.monotonic() < give_up:
                    time.sleep(0.01)
                    continue
                raise error from exc
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate_error(exc, self.path) from exc
                raise

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._in_read, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._in_write, fn, *args)

    # -- lifecycle -------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[migrations.Migration]:
        """Open the database, create it if missing, and apply pending migrations.

        Raises NotADatabase for a file that is not SQLite and SchemaTooNew for a
        database migrated by a newer version.
        """
        loop = asyncio.get_running_loop()

        def setup() -> list[migrations.Migration]:
            conn = self._thread_conn()
            try:
                if migrate:
                    return migrations.migrate(conn)
                migrations.schema_version(conn)
                return []
            except sqlite3.Error as exc:
                raise translate_error(exc, self.path) from exc

        return await loop.run_in_executor(self._writer, setup)

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
        results = await self._write(_enqueue_many, [job])
        return results[0]

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Enqueue several jobs in one transaction (all or none)."""
        return await self._write(_enqueue_many, list(jobs))

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read(_get_job, job_id)

    async def get_attempts(self, job_id: str) -> list[dict[str, Any]]:
        def fetch(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(q("get_attempts"), {"job_id": job_id})]

        return await self._read(fetch)

    async def list_jobs(
        self, filters: JobFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> JobPage:
        """A page of jobs, newest first, with the exact total matching `filters`.

        Order is (created_at, seq) descending, so keyset paging with `cursor` never
        skips or repeats a job, even while jobs are added.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._read(_list_jobs, filters, limit, cursor)

    async def queue_depth(self) -> int:
        """Jobs that are queued or running."""
        return await self._read(lambda c: int(c.execute(q("queue_depth")).fetchone()[0]))

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
            return _token_from_row(row)

        return await self._write(insert)

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        """The token row with this hash, and the stored hash (for a constant-time compare)."""

        def fetch(conn: sqlite3.Connection) -> tuple[Token, str] | None:
            row = conn.execute(q("token_by_hash"), {"token_hash": token_hash}).fetchone()
            return None if row is None else (_token_from_row(row), row["token_hash"])

        return await self._read(fetch)

    async def list_tokens(self) -> list[Token]:
        return await self._read(lambda c: [_token_from_row(r) for r in c.execute(q("list_tokens"))])

    async def count_live_tokens(self) -> int:
        return await self._read(lambda c: int(c.execute(q("count_live_tokens")).fetchone()[0]))

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


# -- transaction bodies (run on a store thread, inside a transaction) -----


def _enqueue_many(conn: sqlite3.Connection, jobs: list[NewJob]) -> list[EnqueueResult]:
    now = now_ts()
    results: list[EnqueueResult] = []
    for job in jobs:
        params = {
            "job_id": job.job_id or str(uuid.uuid4()),
            "plugin": job.plugin,
            "command": job.command,
            "payload": _encode_json(job.payload),
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
    return None if row is None else _job_from_row(row)


def _list_jobs(
    conn: sqlite3.Connection, filters: JobFilter, limit: int, cursor: Cursor | None
) -> JobPage:
    key = (filters.plugin is not None, filters.command is not None)
    statuses: Iterable[str] = filters.statuses or STATUSES
    sources: Iterable[str] = filters.sources or SOURCES
    statuses, sources = sorted(set(statuses)), sorted(set(sources))
    base = {
        "plugin": filters.plugin,
        "command": filters.command,
        "after": filters.created_after or "",
        "before": filters.created_before or _END_OF_TIME,
        "cursor_created": cursor.created_at if cursor else _END_OF_TIME,
        "cursor_seq": cursor.seq if cursor else _MAX_SEQ,
        "limit": limit + 1,
    }
    runs = []
    for status, source in itertools.product(statuses, sources):
        params = {**base, "status": status, "source": source}
        runs.append(conn.execute(q(_SUMMARY_QUERY[key]), params).fetchall())
    merged = heapq.merge(*runs, key=lambda r: (r["created_at"], r["seq"]), reverse=True)
    rows = list(itertools.islice(merged, limit + 1))
    jobs = [_summary_from_row(r) for r in rows[:limit]]
    next_cursor = Cursor(jobs[-1].created_at, jobs[-1].seq) if len(rows) > limit else None

    if filters.created_after is None and filters.created_before is None:
        total = conn.execute(
            q(_TOTAL_QUERY[key]),
            {**base, "statuses": json.dumps(statuses), "sources": json.dumps(sources)},
        ).fetchone()[0]
    else:
        total = 0
        for status, source in itertools.product(statuses, sources):
            params = {**base, "status": status, "source": source}
            total += conn.execute(q(_COUNT_QUERY[key]), params).fetchone()[0]
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
            "result": _encode_json(result),
            "last_error": last_error,
            "now": now_ts(),
            "allowed_from": json.dumps(allowed),
        },
    ).fetchone()
    if row is None:
        raise IllegalTransition(job_id, current["status"], status.value)
    return Status(row[0])

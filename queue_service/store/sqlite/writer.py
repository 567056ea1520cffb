"""The SQLite writer thread, with group commit.

Every write is a transaction function `fn(conn, *args)`. Callers queue them; one thread
runs them. When several are waiting, the thread runs them all inside one
`BEGIN IMMEDIATE … COMMIT`, each in its own SAVEPOINT, so that:

- one COMMIT (one WAL append and, with synchronous=FULL, one fsync) serves many callers;
- a caller whose function raises has only its own work rolled back (ROLLBACK TO its
  savepoint) and gets its own exception; the others commit;
- no caller hears "done" before the COMMIT that holds its work has returned.

If the shared transaction itself is lost (COMMIT fails, or SQLite rolled everything back
after an I/O error), the functions that had succeeded in it are run again one per
transaction, so each caller still gets its own true outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: How many queued transaction functions one COMMIT may serve at most. Bounds the time a
#: caller waits behind others and the size of the WAL frame written at once.
MAX_GROUP = 256


@dataclass(slots=True)
class _Item:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    #: False for calls that manage their own transaction (opening, migrating).
    transactional: bool = True
    outcome: tuple[bool, Any] = field(default=(False, None))


def _deliver(items: list[_Item]) -> None:
    """On the callers' loop: resolve each future (once; a cancelled caller is skipped)."""
    for item in items:
        if item.future.done():
            continue
        ok, value = item.outcome
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)


class WriterThread:
    """One thread that owns the write connection and commits queued work in groups.

    `begin` opens a transaction on the connection (BEGIN IMMEDIATE, waiting out other
    processes' locks), `before_commit` runs last in every transaction (the store folds its
    count deltas there) and `translate` maps sqlite3 errors to the store's errors; all
    come from the store, so this class knows nothing about the schema.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        begin: Callable[[sqlite3.Connection], None],
        translate: Callable[[BaseException], BaseException],
        before_commit: Callable[[sqlite3.Connection], None],
        name: str = "qs-store-write",
    ) -> None:
        self._connect = connect
        self._begin = begin
        self._translate = translate
        self._before_commit = before_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()
        #: Groups committed and items they carried, for diagnostics and the benchmark.
        self.commits = 0
        self.items = 0

    def submit(
        self, fn: Callable[..., Any], *args: Any, transactional: bool = True
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()
        self._queue.put(_Item(fn, args, loop, future, transactional))
        return future

    def stop(self) -> None:
        """Finish what is queued, then end the thread (blocking)."""
        with self._lock:
            started = self._started
        if started:
            self._queue.put(None)
            self._thread.join()

    # -- the thread ------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._run_group(group)
            if stop:
                return

    def _run_group(self, group: list[_Item]) -> None:
        pending: list[_Item] = []
        for item in group:
            if not item.transactional:
                self._flush(pending)
                pending = []
                self._run_raw(item)
            else:
                pending.append(item)
        self._flush(pending)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in group:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop closed meanwhile
                loop.call_soon_threadsafe(_deliver, items)

    def _run_raw(self, item: _Item) -> None:
        try:
            item.outcome = (True, item.fn(*item.args))
        except BaseException as exc:
            item.outcome = (False, exc)

    def _flush(self, items: list[_Item]) -> None:
        if not items:
            return
        if len(items) == 1:
            self._alone(items[0])
            return
        try:
            conn = self._connect()
            self._begin(conn)
        except BaseException as exc:
            for item in items:
                item.outcome = (False, exc)
            return
        lost = False
        for item in items:
            try:
                conn.execute("SAVEPOINT item")
            except sqlite3.Error:
                lost = True
                break
            try:
                item.outcome = (True, item.fn(conn, *item.args))
                conn.execute("RELEASE item")
            except BaseException as exc:
                item.outcome = (False, self._translate(exc))
                if not self._undo_savepoint(conn):
                    lost = True
                    break
        if not lost:
            try:
                self._before_commit(conn)
                conn.execute("COMMIT")
                self.commits += 1
                self.items += len(items)
                return
            except sqlite3.Error:
                lost = True
        # The shared transaction is gone: nothing in it was committed. Give each caller
        # its own transaction, so one item's fault (a full disk, a broken row) is its own.
        _rollback(conn)
        for item in items:
            self._alone(item)

    @staticmethod
    def _undo_savepoint(conn: sqlite3.Connection) -> bool:
        """Undo one item's work; False when the whole transaction went with it."""
        if not conn.in_transaction:
            return False
        try:
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
        except sqlite3.Error:
            return False
        return True

    def _alone(self, item: _Item) -> None:
        """Run one transaction function in a transaction of its own."""
        try:
            conn = self._connect()
            self._begin(conn)
        except BaseException as exc:
            item.outcome = (False, exc)
            return
        try:
            result = item.fn(conn, *item.args)
            self._before_commit(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            item.outcome = (False, self._translate(exc))
            return
        self.commits += 1
        self.items += 1
        item.outcome = (True, result)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open; a failing rollback must not hide the error that caused it
    (SQLite has rolled back itself when it reports no transaction)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def wait_busy(give_up: float) -> bool:
    """Sleep briefly before retrying a busy BEGIN; False once the budget is spent."""
    if time.monotonic() >= give_up:
        return False
    time.sleep(0.01)
    return True

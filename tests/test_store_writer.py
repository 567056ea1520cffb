"""The writer thread's group commit, on a real SQLite file: what each caller hears when the
shared transaction cannot commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from queue_service.store.sqlite.writer import WriterThread

pytestmark = pytest.mark.anyio


def _writer(path: Path, fail_commit: list[bool]) -> tuple[WriterThread, list[sqlite3.Connection]]:
    conns: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        if not conns:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER UNIQUE)")
            conns.append(conn)
        return conns[0]

    def before_commit(conn: sqlite3.Connection) -> None:
        # A fault at COMMIT time (as a full disk would give) for the next group only.
        if fail_commit and fail_commit.pop():
            raise sqlite3.OperationalError("database or disk is full")

    def begin(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    writer = WriterThread(connect, begin, lambda e: e, before_commit)
    return writer, conns


def insert(conn: sqlite3.Connection, v: int) -> int:
    conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
    return v


async def test_a_lost_group_is_retried_one_caller_at_a_time(tmp_path: Path) -> None:
    fail = [True]
    writer, conns = _writer(tmp_path / "w.db", fail)
    release = threading.Event()

    try:
        # The thread waits in a first item while the next four queue up: they form one group.
        gate = writer.submit(release.wait, 10, transactional=False)
        futures = [writer.submit(insert, v) for v in (1, 2, 2, 3)]
        release.set()
        assert await gate is True
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await asyncio.to_thread(writer.stop)
    assert outcomes[0] == 1 and outcomes[1] == 2 and outcomes[3] == 3
    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    rows = sorted(v for (v,) in conns[0].execute("SELECT v FROM t"))
    assert rows == [1, 2, 3]
    assert fail == []  # the grouped COMMIT did fail; each caller was then run alone
    assert (writer.commits, writer.items) == (3, 3)  # 1, 2 and 3 each in its own COMMIT


async def test_waiting_callers_share_one_commit_and_a_failure_stays_its_own(
    tmp_path: Path,
) -> None:
    writer, conns = _writer(tmp_path / "w.db", [])
    release = threading.Event()

    try:
        gate = writer.submit(release.wait, 10, transactional=False)
        futures = [writer.submit(insert, v) for v in (1, 2, 2, 3, 4)]
        release.set()
        await gate
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await asyncio.to_thread(writer.stop)
    assert [o if isinstance(o, int) else "error" for o in outcomes] == [1, 2, "error", 3, 4]
    assert sorted(v for (v,) in conns[0].execute("SELECT v FROM t")) == [1, 2, 3, 4]
    assert (writer.commits, writer.items) == (1, 5)

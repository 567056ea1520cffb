"""Contention on one database (an SQLite file; a PostgreSQL schema): no double claims, no
"database is locked", a sound database.

Four contender processes enqueue (single jobs and batches) and work (claim, heartbeat,
finish, recover) through the store, the same calls and transactions as the worker, while a
`serve` process on the same database runs a real worker that takes some of their jobs,
answers API readers, and runs ledger jobs enqueued over HTTP. 20,000 jobs (QS_SOAK=1: 100,000;
`bench/soak.py` runs more). Plugin subprocesses are left out of the contenders on purpose:
at tens of milliseconds each they would measure process start-up, not the database.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from queue_service.store import NewJob, SQLiteStore
from tests.reliability import run_contention

SOAK = os.environ.get("QS_SOAK") == "1"


@pytest.mark.slow
def test_four_processes_and_the_api_on_one_database_never_double_claim_or_see_a_lock(
    tmp_path: Path, db_url: str
) -> None:
    per_process = 25_000 if SOAK else 5_000
    report = run_contention(
        tmp_path,
        processes=4,
        jobs_per_process=per_process,
        time_limit=1800 if SOAK else 240,
        db=db_url,
    )
    print(report.summary())
    assert report.problems == []
    assert report.jobs >= 4 * per_process
    assert report.double_claims == 0
    assert report.store_errors == 0, "a contender saw a store error (busy, locked, ...)"
    assert report.api_requests > 100 and report.api_failures == 0
    assert report.http_jobs == 60
    assert report.integrity == ["ok"]


@pytest.mark.anyio
async def test_open_outlasts_a_writer_holding_the_lock_longer_than_busy_timeout(
    db_path: Path,
) -> None:
    """Regression: open() ran its migration check in one BEGIN IMMEDIATE without the write
    path's retry, so a process starting while others wrote failed with "database is busy"."""
    first = SQLiteStore(db_path)
    await first.open()
    await first.close()
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO plugin_state VALUES ('p', '{}', 'x')")
    release = threading.Timer(0.6, holder.execute, ("COMMIT",))
    release.start()
    store = SQLiteStore(db_path, busy_timeout_ms=50, write_timeout_s=10)
    started = time.monotonic()
    try:
        await store.open()
        assert time.monotonic() - started >= 0.5, "open() did not wait for the writer"
        assert store.read_only is None
        await store.enqueue(NewJob("p", "poll"))
    finally:
        release.join()
        holder.close()
        await store.close()

"""Reading the database behind the service's back (read-only)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Log = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def integrity_check(db: Path) -> list[str]:
    """PRAGMA integrity_check on a fresh connection: ["ok"] when the file is sound."""
    with read_only(db) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def count_mismatches(db: Path) -> list[tuple[Any, ...]]:
    """Rows where the trigger-maintained job_counts disagree with the jobs table."""
    with read_only(db) as conn:
        actual = {
            tuple(row[:4]): row[4]
            for row in conn.execute(
                "SELECT plugin, command, status, source, COUNT(*) FROM jobs "
                "GROUP BY plugin, command, status, source"
            )
        }
        kept = {
            tuple(row[:4]): row[4]
            for row in conn.execute(
                "SELECT plugin, command, status, source, n FROM job_counts WHERE n != 0"
            )
        }
    return sorted(
        (*key, actual.get(key), kept.get(key))
        for key in set(actual) | set(kept)
        if actual.get(key) != kept.get(key)
    )


def owner_pid(owner: str) -> int:
    """The process id in a lease owner `host:pid:random`."""
    return int(owner.rsplit(":", 2)[-2])


def held_leases(db: Path) -> dict[str, list[tuple[str, int]]]:
    """{lease_owner: [(job_id, attempt), ...]} of the running local jobs."""
    held: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with read_only(db) as conn:
        for job_id, attempt, owner in conn.execute(
            "SELECT job_id, attempt, lease_owner FROM jobs "
            "WHERE status = 'running' AND source = 'local' AND lease_owner IS NOT NULL"
        ):
            held[owner].append((job_id, attempt))
    return held


def status_counts(db: Path, plugin: str | None = None) -> Counter[str]:
    with read_only(db) as conn:
        rows = conn.execute(
            "SELECT status, COUNT(*) FROM jobs WHERE ?1 IS NULL OR plugin = ?1 GROUP BY status",
            (plugin,),
        ).fetchall()
    return Counter({status: n for status, n in rows})

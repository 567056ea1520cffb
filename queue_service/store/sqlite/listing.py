"""Listing jobs: which index walks serve a filter, and exact totals (read transactions).

A page is served by as few index walks as the filter allows, merged lazily on
(created_at, seq) descending, so a page reads about `limit` rows plus one per walk. Every
walk also checks every filter on the row, so the choice below is only about speed:

- statuses without `succeeded` (queued, running, failed, ...) walk the partial indexes
  that leave succeeded jobs out: one walk per status, on (status, plugin, command) when
  both are given, else on (status) with plugin or command checked on the row;
- otherwise plugin + command walk jobs_by_plugin_command, and everything else walks
  jobs_by_time, checking the rest on the row, unless the matching jobs are too rare among
  the rows walked: then one jobs_by_plugin_command walk per matching (plugin, command).

A filter on the submitting token (GET /jobs?mine=true) walks that token's entries in
jobs_by_submitter alone and counts them there: its cost grows with the token's own jobs, not
with the table, and the store's read time budget bounds it.

Totals are exact: without time bounds, the sum of job_counts; with them, whole hours from
the hourly rollups and the two partial hours at the edges counted in an index.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from queue_service.statuses import SOURCES, STATUSES, Status
from queue_service.store.sqlite.rows import summary_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import Cursor, JobFilter, JobPage, JobSummary

#: Bounds outside any timestamp or hour: '' sorts first, '~' after every digit.
_START, _END = "", "~"
_MAX_SEQ = 2**63 - 1
#: The length of the hour prefix of a timestamp: 2026-11-23T15
_HOUR = 13
_SUCCEEDED = Status.SUCCEEDED.value

_COUNTS = {
    (False, False): "counts_all",
    (True, False): "counts_plugin",
    (True, True): "counts_plugin_command",
    (False, True): "counts_command",
}
_HOURS = {key: name.replace("counts_", "hours_") for key, name in _COUNTS.items()}
#: A row-filtered walk may read up to this many rows per row returned (on average, from
#: the exact counts) before per-(plugin, command) walks are used instead.
_MAX_SCAN_RATIO = 40
#: At most this many walks merged for one page when a single row-filtered walk would do.
_MAX_WALKS = 12

CountRow = tuple[str, str, str | None, str | None, int]  # status, source, plugin, command, n


def _padded(prefix: str, values: Sequence[str], size: int) -> dict[str, str]:
    """Bind a list to a fixed number of placeholders by repeating its first element."""
    return {f"{prefix}{i}": values[min(i, len(values) - 1)] for i in range(size)}


def _counts(
    conn: sqlite3.Connection, filters: JobFilter, statuses: list[str], sources: list[str]
) -> list[CountRow]:
    """Exact counts per key that match the filters (keys without jobs left out)."""
    key = (filters.plugin is not None, filters.command is not None)
    names = {"plugin": filters.plugin, "command": filters.command}
    summed: dict[tuple[str, str, str | None, str | None], int] = {}
    for status, source, plugin, command, n in conn.execute(q(_COUNTS[key]), names):
        if status in statuses and source in sources:
            k = (status, source, plugin, command)
            summed[k] = summed.get(k, 0) + int(n)
    return [(*k, n) for k, n in summed.items() if n > 0]


def list_jobs(
    conn: sqlite3.Connection, filters: JobFilter, limit: int, cursor: Cursor | None
) -> JobPage:
    statuses = sorted({s.value for s in filters.statuses} or set(STATUSES))
    sources = sorted({s.value for s in filters.sources} or set(SOURCES))
    if filters.submitted_by_token is not None:
        counts: list[CountRow] = []
    else:
        counts = _counts(conn, filters, statuses, sources)
        if not counts:
            return JobPage(jobs=[], total=0, next_cursor=None)
    base: dict[str, Any] = {
        "after": filters.created_after or _START,
        "before": filters.created_before or _END,
        "cursor_created": cursor.created_at if cursor else _END,
        "cursor_seq": cursor.seq if cursor else _MAX_SEQ,
        "limit": limit + 1,
        "plugin": filters.plugin,
        "command": filters.command,
        **_padded("s", statuses, 7),
        **_padded("src", sources, 2),
        "token": filters.submitted_by_token,
    }
    if filters.submitted_by_token is not None:
        return _own_jobs(conn, filters, base, limit)
    walks = [
        conn.execute(q(name), {**base, **params}) for name, params in _walks(conn, filters, counts)
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
        total = sum(n for *_, n in counts)
    else:
        total = _bounded_total(conn, filters, base)
    return JobPage(jobs=jobs, total=total, next_cursor=next_cursor)


def _own_jobs(
    conn: sqlite3.Connection, filters: JobFilter, base: dict[str, Any], limit: int
) -> JobPage:
    """The jobs one token enqueued: one walk and one count over jobs_by_submitter."""
    rows = conn.execute(q("walk_submitter"), base).fetchall()
    jobs = [summary_from_row(r) for r in rows[:limit]]
    next_cursor = Cursor(jobs[-1].created_at, jobs[-1].seq) if len(rows) > limit else None
    only_time = not (filters.plugin or filters.command or filters.statuses or filters.sources)
    total = _count(conn, "count_submitter_by_time" if only_time else "count_submitter", base)
    return JobPage(jobs=jobs, total=total, next_cursor=next_cursor)


def _walks(
    conn: sqlite3.Connection, filters: JobFilter, counts: list[CountRow]
) -> Iterable[tuple[str, dict[str, Any]]]:
    """(query name, parameters beyond the base ones) of each index walk a page needs."""
    plugin, command = filters.plugin, filters.command
    wanted = sorted({status for status, *_ in counts})
    if filters.statuses and _SUCCEEDED not in wanted:
        name = "walk_status_plugin_command" if plugin and command else "walk_status"
        for status in wanted:
            yield name, {"status": status}
        return
    if plugin is not None and command is not None:
        yield "walk_plugin_command", {}
        return
    if plugin is None and command is None:
        yield "walk_time", {}
        return
    # Only one of plugin and command: one row-filtered walk over every job, or one walk per
    # matching (plugin, command), whichever reads fewer rows.
    pairs = sorted({(p, c) for _, _, p, c, _ in counts if p is not None and c is not None})
    matching = sum(n for *_, n in counts)
    every = _count(conn, "count_every_job", {})
    if len(pairs) > _MAX_WALKS or every <= matching * _MAX_SCAN_RATIO:
        yield "walk_time", {}
        return
    for pair_plugin, pair_command in pairs:
        yield "walk_plugin_command", {"plugin": pair_plugin, "command": pair_command}


def _bounded_total(conn: sqlite3.Connection, filters: JobFilter, base: dict[str, Any]) -> int:
    """The exact count with time bounds: whole hours from the rollups, edges from an index."""
    after, before = base["after"], base["before"]
    if after >= before:
        return 0
    hour_after = after[:_HOUR] if filters.created_after else _START
    hour_before = before[:_HOUR] if filters.created_before else _END
    key = (filters.plugin is not None, filters.command is not None)
    edge = "edge_count_plugin_command" if key == (True, True) else "edge_count_time"
    params = base
    if filters.created_after and filters.created_before and hour_after == hour_before:
        # One partial hour: count it whole in the index.
        return _count(conn, edge, {**params, "lo": after, "hi": before})
    total = _count(
        conn, _HOURS[key], {**params, "hour_after": hour_after, "hour_before": hour_before}
    )
    if filters.created_after:
        # (after, end of its hour): every timestamp of that hour sorts before hour + '~'.
        total += _count(conn, edge, {**params, "lo": after, "hi": hour_after + _END})
    if filters.created_before:
        # [start of its hour, before): every timestamp of that hour sorts after the prefix.
        total += _count(conn, edge, {**params, "lo": hour_before, "hi": before})
    return total


def _count(conn: sqlite3.Connection, name: str, params: dict[str, Any]) -> int:
    return int(conn.execute(q(name), params).fetchone()[0] or 0)


def count_by_status(conn: sqlite3.Connection, filters: JobFilter) -> dict[Status, int]:
    """Exact counts per status of the jobs matching `filters` (no time bounds)."""
    if filters.created_after is not None or filters.created_before is not None:
        raise ValueError("counts by status take no time bounds")
    statuses = sorted({s.value for s in filters.statuses} or set(STATUSES))
    sources = sorted({s.value for s in filters.sources} or set(SOURCES))
    by_status: dict[Status, int] = {}
    for status, _source, _plugin, _command, n in _counts(conn, filters, statuses, sources):
        by_status[Status(status)] = by_status.get(Status(status), 0) + n
    return by_status


def count_by_plugin(conn: sqlite3.Connection) -> dict[str, dict[Status, int]]:
    """Exact counts per plugin and status, from job_counts and the unfolded deltas."""
    by_plugin: dict[str, dict[Status, int]] = {}
    for plugin, status, n in conn.execute(q("counts_by_plugin")):
        by_plugin.setdefault(plugin, {})[Status(status)] = int(n)
    return by_plugin


def oldest_queued(conn: sqlite3.Connection) -> JobSummary | None:
    row = conn.execute(q("oldest_queued")).fetchone()
    return None if row is None else summary_from_row(row)

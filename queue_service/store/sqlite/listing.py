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

from queue_service.statuses import Status
from queue_service.store.listing_plan import (
    CountRow,
    base_params,
    bounded_total,
    by_status,
    cut_page,
    own_jobs_by_time_only,
    sources_of,
    statuses_of,
    sum_counts,
)
from queue_service.store.sqlite.rows import summary_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import Cursor, JobFilter, JobPage, JobSummary

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


def _padded(prefix: str, values: Sequence[str], size: int) -> dict[str, str]:
    """Bind a list to a fixed number of placeholders by repeating its first element."""
    return {f"{prefix}{i}": values[min(i, len(values) - 1)] for i in range(size)}


def _counts(
    conn: sqlite3.Connection, filters: JobFilter, statuses: list[str], sources: list[str]
) -> list[CountRow]:
    """Exact counts per key that match the filters (keys without jobs left out)."""
    key = (filters.plugin is not None, filters.command is not None)
    names = {"plugin": filters.plugin, "command": filters.command}
    return sum_counts(conn.execute(q(_COUNTS[key]), names), statuses, sources)


def list_jobs(
    conn: sqlite3.Connection, filters: JobFilter, limit: int, cursor: Cursor | None
) -> JobPage:
    statuses = statuses_of(filters)
    sources = sources_of(filters)
    if filters.submitted_by_token is not None:
        counts: list[CountRow] = []
    else:
        counts = _counts(conn, filters, statuses, sources)
        if not counts:
            return JobPage(jobs=[], total=0, next_cursor=None)
    base: dict[str, Any] = {
        **base_params(filters, limit, cursor),
        **_padded("s", statuses, 7),
        **_padded("src", sources, 2),
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
    jobs, next_cursor = cut_page(rows, limit, summary_from_row)
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
    jobs, next_cursor = cut_page(rows, limit, summary_from_row)
    only_time = own_jobs_by_time_only(filters)
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
    parts = bounded_total(filters)
    if parts is None:
        return 0
    key = (filters.plugin is not None, filters.command is not None)
    edge = "edge_count_plugin_command" if key == (True, True) else "edge_count_time"
    total = 0
    for _hour, hour_after, hour_before in parts.units:
        hours = {**base, "hour_after": hour_after, "hour_before": hour_before}
        total += _count(conn, _HOURS[key], hours)
    for lo, hi in parts.edges:
        total += _count(conn, edge, {**base, "lo": lo, "hi": hi})
    return total


def _count(conn: sqlite3.Connection, name: str, params: dict[str, Any]) -> int:
    return int(conn.execute(q(name), params).fetchone()[0] or 0)


def count_by_status(conn: sqlite3.Connection, filters: JobFilter) -> dict[Status, int]:
    """Exact counts per status of the jobs matching `filters` (no time bounds)."""
    if filters.created_after is not None or filters.created_before is not None:
        raise ValueError("counts by status take no time bounds")
    return by_status(_counts(conn, filters, statuses_of(filters), sources_of(filters)))


def count_by_plugin(conn: sqlite3.Connection) -> dict[str, dict[Status, int]]:
    """Exact counts per plugin and status, from job_counts and the unfolded deltas."""
    by_plugin: dict[str, dict[Status, int]] = {}
    for plugin, status, n in conn.execute(q("counts_by_plugin")):
        by_plugin.setdefault(plugin, {})[Status(status)] = int(n)
    return by_plugin


def oldest_queued(conn: sqlite3.Connection) -> JobSummary | None:
    row = conn.execute(q("oldest_queued")).fetchone()
    return None if row is None else summary_from_row(row)

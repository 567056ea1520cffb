"""Listing jobs and exact counts on PostgreSQL, and the fold that keeps the counts small.

Counts (schema: migrations/postgresql/0001_initial.sql, "Listing and exact counts"):
triggers append a delta row per change of a job's key in the writer's own transaction; a
background task of every open store folds committed deltas into the rollups, one process at
a time (a transaction-level advisory lock, tried, never waited for), and vacuums the delta
log so its heap stays small. Every count read adds the unfolded deltas to the rollups in one
snapshot, so counts are exact whatever the fold has reached, and no writer ever waits for
another on a count row.

A page is one statement over one or several index walks (listing.sql), chosen from the
exact counts of the keys the filter matches: the walk set expected to read the fewest rows.
A walk over several keys (statuses, (plugin, command) pairs, ...) reads up to `limit` rows
per key in a LATERAL subquery, so its cost is the sum over its keys. Listing reads run with
sorts disabled, so the planner can only use the ordered index scan each walk is written
for: plans never depend on statistics (a freshly copied database has none).

Totals are exact: without time bounds, the sum of the matching counts; with them, whole
hours from the hourly rollups and the partial hours at the edges counted in an index
(store/listing_plan.py). A filter on the submitting token walks and counts that token's
entries of jobs_by_submitter: its cost grows with the token's own jobs, not the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from queue_service.statuses import Source, Status
from queue_service.store.errors import StoreUnavailable
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
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import summary_from_row
from queue_service.store.postgresql.sql import q
from queue_service.store.types import Cursor, JobCount, JobFilter, JobPage, JobSummary, Migration

log = logging.getLogger("queue_service.store")

_SUCCEEDED = Status.SUCCEEDED.value

#: Listing reads: one snapshot for the counts, the page and its total; sorts off, so each
#: walk can only be planned as the ordered index scan it is written for (the merge of a
#: walk over several keys still sorts its few rows); no JIT (sorts off make plans look
#: expensive, and compiling would cost more than any of these statements).
_LISTING_BEGIN = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
    "SET LOCAL enable_sort = off; SET LOCAL enable_incremental_sort = off; SET LOCAL jit = off"
)

#: A walk's cost, in rows read, for finding where its key starts in the index.
_SEEK_ROWS = 3

#: How many count deltas one fold transaction moves at most.
FOLD_BATCH = 20_000
#: Pauses of the fold task: after a fold that moved deltas, and at most when idle.
_FOLD_BUSY_S = 0.2
_FOLD_IDLE_MAX_S = 2.0
#: The folded deltas' space is given back at most this often (a VACUUM of the delta log).
_VACUUM_EVERY_S = 1.0
#: close() folds what is left for at most this long (a process that enqueued or imported
#: many jobs leaves the counts compact for the next one).
_CLOSE_FOLD_S = 60.0

_COUNTS_QUERY = {
    (False, False): "list_counts_status",
    (True, False): "list_counts_plugin",
    (True, True): "list_counts_plugin_command",
    (False, True): "list_counts_command",
}
_HOURS_QUERY = {
    (False, False): "hours_all",
    (True, False): "hours_plugin",
    (True, True): "hours_plugin_command",
    (False, True): "hours_command",
}
_FOLDS = (
    "fold_job_counts",
    "fold_status",
    "fold_hour",
    "fold_hour_plugin",
    "fold_hour_command",
    "fold_hour_plugin_command",
)
_STATUSES = {s.value: s for s in Status}
_SOURCES = {s.value: s for s in Source}

Key = tuple[str, str, str, str]  # status, source, plugin, command


@dataclass(slots=True)
class _Counts:
    """Exact counts read for one filter: per (status, source) over every job, and per key
    of the filter's plugin and command (None when not read)."""

    per_status_source: dict[tuple[str, str], int]
    per_key: dict[Key, int] | None

    def matching(self, statuses: Sequence[str], sources: Sequence[str]) -> list[CountRow]:
        """The keys with jobs that match (per key when read, else per status and source)."""
        rows: list[CountRow]
        if self.per_key is None:
            rows = [(s, src, None, None, n) for (s, src), n in self.per_status_source.items()]
        else:
            rows = [(s, src, p, c, n) for (s, src, p, c), n in self.per_key.items()]
        return sum_counts(rows, statuses, sources)


async def _read_counts(conn: Conn, filters: JobFilter) -> _Counts:
    """The counts a listing plans with (one statement: one snapshot). Keys are read when
    the filter names a plugin, a command or a source: per-key walks may then be cheaper."""
    plugin, command = filters.plugin, filters.command
    shape = (plugin is not None, command is not None)
    keys = shape != (False, False) or bool(filters.sources)
    name = "list_counts_every_key" if shape == (False, False) and keys else _COUNTS_QUERY[shape]
    cur = await conn.execute(q(name), {"plugin": plugin, "command": command})
    per_status_source: dict[tuple[str, str], int] = {}
    per_key: dict[Key, int] = {}
    for kind, status, source, row_plugin, row_command, n in await cur.fetchall():
        if kind != "k":  # a per-status row, or a delta: every job counts there
            per_status_source[(status, source)] = per_status_source.get((status, source), 0) + n
        if kind == "s" or not keys:
            continue
        if (plugin is None or row_plugin == plugin) and (command is None or row_command == command):
            key = (status, source, row_plugin, row_command)
            per_key[key] = per_key.get(key, 0) + n
    return _Counts(per_status_source, per_key if keys else None)


def _plan_walk(
    filters: JobFilter, counts: _Counts, matching: list[CountRow], limit: int
) -> tuple[str, dict[str, Any]]:
    """The walk (query name, key arrays) expected to read the fewest rows for a page.

    A walk over one index range whose jobs match with probability m / n reads about
    `limit` * n / m rows (at most n): the exact counts give n and m for every candidate."""
    rows = limit + 1

    def cost(index_rows: int, matches: int) -> float:
        return _SEEK_ROWS + min(index_rows, rows * index_rows / matches)

    status_totals: dict[str, int] = {}
    for (status, _source), n in counts.per_status_source.items():
        status_totals[status] = status_totals.get(status, 0) + n
    every = sum(status_totals.values())
    matches_by_status: dict[str, int] = {}
    for status, _source, _plugin, _command, n in matching:
        matches_by_status[status] = matches_by_status.get(status, 0) + n
    candidates: list[tuple[float, str, dict[str, Any]]] = [
        (cost(every, sum(matches_by_status.values())), "walk_time", {})
    ]
    # The status-led indexes hold every job but the succeeded ones.
    no_succeeded = _SUCCEEDED not in matches_by_status
    if no_succeeded:
        walks = sorted(matches_by_status)
        estimate = sum(cost(status_totals[s], matches_by_status[s]) for s in walks)
        candidates.append((estimate, "walk_status", {"walk_statuses": walks}))
    if counts.per_key is not None:
        # Per key: every job of the key (what its walk reads), and those that match.
        keyed = [(s, p, c, n) for (s, _src, p, c), n in counts.per_key.items()]
        matched = [(s, p or "", c or "", n) for s, _src, p, c, n in matching]
        pair_totals = Counter({(p, c): 0 for _, p, c, _ in keyed})
        triple_totals = Counter({(s, p, c): 0 for s, p, c, _ in keyed})
        pair_matches: Counter[tuple[str, str]] = Counter()
        triple_matches: Counter[tuple[str, str, str]] = Counter()
        for status, plugin, command, n in keyed:
            pair_totals[(plugin, command)] += n
            triple_totals[(status, plugin, command)] += n
        for status, plugin, command, n in matched:
            pair_matches[(plugin, command)] += n
            triple_matches[(status, plugin, command)] += n
        pairs = sorted(pair_matches)
        estimate = sum(cost(pair_totals[p], pair_matches[p]) for p in pairs)
        keys = {"walk_plugins": [p for p, _ in pairs], "walk_commands": [c for _, c in pairs]}
        candidates.append((estimate, "walk_plugin_command", keys))
        if no_succeeded:
            triples = sorted(triple_matches)
            estimate = sum(cost(triple_totals[t], triple_matches[t]) for t in triples)
            keys = {
                "walk_statuses": [s for s, _, _ in triples],
                "walk_plugins": [p for _, p, _ in triples],
                "walk_commands": [c for _, _, c in triples],
            }
            candidates.append((estimate, "walk_status_plugin_command", keys))
    _, name, keys = min(candidates, key=lambda c: c[0])
    return name, keys


async def _list_jobs(conn: Conn, filters: JobFilter, limit: int, cursor: Cursor | None) -> JobPage:
    statuses, sources = statuses_of(filters), sources_of(filters)
    params = {**base_params(filters, limit, cursor), "statuses": statuses, "sources": sources}
    if filters.submitted_by_token is not None:
        return await _own_jobs(conn, filters, params, limit)
    counts = await _read_counts(conn, filters)
    matching = counts.matching(statuses, sources)
    if not matching:
        return JobPage(jobs=[], total=0, next_cursor=None)
    name, keys = _plan_walk(filters, counts, matching, limit)
    bounded = filters.created_after is not None or filters.created_before is not None
    parts = bounded_total(filters) if bounded else None
    walk = conn.cursor(row_factory=dict_row)
    totals = []
    async with conn.pipeline():
        await walk.execute(q(name), {**params, **keys})
        if parts is not None:
            shape = (filters.plugin is not None, filters.command is not None)
            if parts.hours is not None:
                hour_after, hour_before = parts.hours
                hours = {**params, "hour_after": hour_after, "hour_before": hour_before}
                totals.append(await conn.execute(q(_HOURS_QUERY[shape]), hours))
            edge = _edge_query(filters, shape)
            for lo, hi in parts.edges:
                totals.append(await conn.execute(q(edge), {**params, "lo": lo, "hi": hi}))
    jobs, next_cursor = cut_page(await walk.fetchall(), limit, summary_from_row)
    if not bounded:
        total = sum(n for *_, n in matching)
    else:
        total = 0
        for cur in totals:
            row = await cur.fetchone()
            assert row is not None
            total += int(row[0])
    return JobPage(jobs=jobs, total=total, next_cursor=next_cursor)


def _edge_query(filters: JobFilter, shape: tuple[bool, bool]) -> str:
    """Which index counts a partial hour at an edge of the time bounds."""
    if shape == (True, True):
        return "edge_count_plugin_command"
    if filters.statuses and Status.SUCCEEDED not in filters.statuses:
        return "edge_count_status"
    return "edge_count_time"


async def _own_jobs(conn: Conn, filters: JobFilter, params: dict[str, Any], limit: int) -> JobPage:
    """The jobs one token enqueued: one walk and one count over jobs_by_submitter."""
    walk = conn.cursor(row_factory=dict_row)
    count = "count_submitter_by_time" if own_jobs_by_time_only(filters) else "count_submitter"
    async with conn.pipeline():
        await walk.execute(q("walk_submitter"), params)
        counted = await conn.execute(q(count), params)
    jobs, next_cursor = cut_page(await walk.fetchall(), limit, summary_from_row)
    row = await counted.fetchone()
    assert row is not None
    return JobPage(jobs=jobs, total=int(row[0]), next_cursor=next_cursor)


async def _count_by_status(conn: Conn, filters: JobFilter) -> dict[Status, int]:
    counts = await _read_counts(conn, filters)
    return by_status(counts.matching(statuses_of(filters), sources_of(filters)))


async def _one_number(conn: Conn, name: str) -> int:
    cur = await conn.execute(q(name))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def _count_by_plugin(conn: Conn) -> dict[str, dict[Status, int]]:
    by_plugin: dict[str, dict[Status, int]] = {}
    cur = await conn.execute(q("counts_by_plugin"))
    for plugin, status, n in await cur.fetchall():
        by_plugin.setdefault(plugin, {})[_STATUSES[status]] = int(n)
    return by_plugin


async def _job_counts(conn: Conn) -> list[JobCount]:
    cur = await conn.execute(q("job_counts"))
    return [
        JobCount(plugin, command, _SOURCES[source], _STATUSES[status], int(n))
        for plugin, command, source, status, n in await cur.fetchall()
    ]


async def _oldest_queued(conn: Conn) -> JobSummary | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("oldest_queued"))
    row = await cur.fetchone()
    return None if row is None else summary_from_row(row)


async def _queued_by_plugin(conn: Conn) -> dict[str, int]:
    cur = await conn.execute(q("queued_by_plugin"))
    return {plugin: int(n) for plugin, n in await cur.fetchall()}


async def _oldest_queued_by_plugin(conn: Conn) -> dict[str, str]:
    cur = await conn.execute(q("oldest_queued_by_plugin"))
    return {plugin: run_after for plugin, run_after in await cur.fetchall()}


async def _fold(conn: Conn, batch: int) -> int | None:
    """Fold up to `batch` committed deltas into the rollups; how many were folded, or None
    when another transaction holds the fold lock."""
    cur = await conn.execute(q("fold_lock"))
    locked = await cur.fetchone()
    if locked is None or not locked[0]:
        return None
    cur = await conn.execute(q("fold_take_deltas"), {"batch": batch})
    rows = await cur.fetchall()
    sums = [r for r in rows if r[5] != 0]
    if sums:
        params = {
            "plugins": [r[0] for r in sums],
            "commands": [r[1] for r in sums],
            "statuses": [r[2] for r in sums],
            "sources": [r[3] for r in sums],
            "hours": [r[4] for r in sums],
            "ds": [r[5] for r in sums],
        }
        async with conn.pipeline():
            for name in _FOLDS:
                await conn.execute(q(name), params)
    return sum(int(r[6]) for r in rows)


async def _vacuum_deltas(conn: Conn, truncate: bool) -> None:
    await conn.execute(q("vacuum_count_deltas" if truncate else "vacuum_count_deltas_keep"))


class ListingMixin(Database):
    """list_jobs and the counts; the fold of the count deltas (a task of every open store)."""

    _fold_task: asyncio.Task[None] | None = None

    # -- lifecycle: the fold task ------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[Migration]:
        applied = await super().open(migrate=migrate)
        if self.read_only is None:
            self._fold_task = asyncio.create_task(self._fold_forever(), name="fold-counts")
        return applied

    async def close(self) -> None:
        task, self._fold_task = self._fold_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fold_what_is_left(), _CLOSE_FOLD_S)
        await super().close()

    async def fold_count_deltas(self, *, batch: int = FOLD_BATCH) -> int | None:
        """Fold up to `batch` committed count deltas into the rollups, in one transaction.
        Returns how many were folded, or None when another process is folding (a fold is
        never waited for). Counts read the same before and after: this only keeps the delta
        log, which every count read scans, short."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        return await self._tx(_fold, batch)

    async def vacuum_count_deltas(self, *, truncate: bool = True) -> None:
        """VACUUM the delta log, so the space of folded deltas is used again (and, with
        `truncate`, empty pages at its end are given back: it then briefly locks the table
        against writers, so the fold task truncates only when the log is idle)."""
        await self._read_statement(_vacuum_deltas, truncate)

    async def _fold_forever(self) -> None:
        pause = _FOLD_BUSY_S
        vacuumed_at = time.monotonic()
        moved_since_vacuum = 0
        truncated = True
        while True:
            try:
                moved = await self.fold_count_deltas()
                if moved:
                    moved_since_vacuum += moved
                    truncated = False
                now = time.monotonic()
                if moved_since_vacuum and now - vacuumed_at >= _VACUUM_EVERY_S:
                    await self.vacuum_count_deltas(truncate=False)
                    vacuumed_at, moved_since_vacuum = now, 0
                elif moved == 0 and not truncated:
                    # Idle after folding: give the heap's empty pages back while no writer
                    # needs the table.
                    await self.vacuum_count_deltas(truncate=True)
                    vacuumed_at, moved_since_vacuum, truncated = now, 0, True
            except StoreUnavailable as exc:
                log.warning("folding the count deltas failed (retrying): %s", exc)
                moved = 0
                pause = _FOLD_IDLE_MAX_S
            if moved is not None and moved >= FOLD_BATCH:
                pause = 0
            elif moved:
                pause = _FOLD_BUSY_S
            else:
                pause = min(max(pause, _FOLD_BUSY_S) * 2, _FOLD_IDLE_MAX_S)
            await asyncio.sleep(pause)

    async def _fold_what_is_left(self) -> None:
        """At close: fold every delta left (unless another process is folding), then give
        the log's space back. Failures are logged: the next store folds them."""
        if self._pool is None or self.read_only is not None:
            return
        try:
            folded = 0
            while (moved := await self.fold_count_deltas()) is not None:
                folded += moved
                if moved < FOLD_BATCH:
                    break
            if folded:
                await self.vacuum_count_deltas(truncate=True)
        except StoreUnavailable as exc:
            log.warning("the count deltas were not folded at close: %s", exc)

    # -- listing and counts ------------------------------------------------

    async def list_jobs(
        self, filters: JobFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> JobPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._run(_list_jobs, (filters, limit, cursor), _LISTING_BEGIN)

    async def queue_depth(self) -> int:
        return await self._read_statement(_one_number, "queue_depth")

    async def count_jobs_by_status(self, filters: JobFilter) -> dict[Status, int]:
        if filters.created_after is not None or filters.created_before is not None:
            raise ValueError("counts by status take no time bounds")
        return await self._read_statement(_count_by_status, filters)

    async def count_jobs_by_plugin(self) -> dict[str, dict[Status, int]]:
        return await self._read_statement(_count_by_plugin)

    async def oldest_queued_job(self) -> JobSummary | None:
        return await self._read_statement(_oldest_queued)

    async def job_counts(self) -> list[JobCount]:
        return await self._read_statement(_job_counts)

    async def oldest_queued_by_plugin(self) -> dict[str, str]:
        return await self._read_statement(_oldest_queued_by_plugin)

    async def queued_by_plugin(self) -> dict[str, int]:
        return await self._read_statement(_queued_by_plugin)

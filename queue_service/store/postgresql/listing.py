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
for: walks never depend on statistics (a freshly copied database has none).

Totals are exact: without time bounds, the sum of the matching counts; with them, whole
days and hours from the daily and hourly rollups and the partial hours at the edges counted
over the walk's keys in an index (store/listing_plan.py). A filter on the submitting token
walks and counts that token's entries of jobs_by_submitter: its cost grows with the token's
own jobs, not the table.
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

from queue_service.statuses import SOURCES, Source, Status
from queue_service.store.errors import StoreError
from queue_service.store.listing_plan import (
    DAY,
    END,
    HOUR,
    MAX_SEQ,
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

#: A walk's cost, in rows read, for starting on its key: a loop of the LATERAL join, an
#: index descent (measured: about as long as reading 8 rows of a walk).
_SEEK_ROWS = 8

#: How many count deltas one fold transaction moves at most.
FOLD_BATCH = 20_000
#: Pauses of the fold task: after a fold that moved deltas, and at most when idle.
_FOLD_BUSY_S = 0.2
_FOLD_IDLE_MAX_S = 2.0
#: The folded deltas' space is given back at most this often (a VACUUM of the delta log).
_VACUUM_EVERY_S = 1.0
#: The rollups are vacuumed at most this often (after folds), so the pages of past days
#: and hours stay all-visible and their sums index-only even without autovacuum.
_ROLLUPS_VACUUM_S = 60.0
#: close() waits this long for a fold in progress to end before cancelling it.
_STOP_FOLD_S = 10.0
#: close() folds what is left for at most this long (a process that enqueued or imported
#: many jobs leaves the counts compact for the next one).
_CLOSE_FOLD_S = 60.0

_COUNTS_QUERY = {
    (False, False): "list_counts_status",
    (True, False): "list_counts_plugin",
    (True, True): "list_counts_plugin_command",
    (False, True): "list_counts_command",
}
#: The rollup sums of whole units of time, per level (DAY, HOUR) and filter shape.
_UNITS_QUERY = {
    level: {
        (False, False): f"{unit}_all",
        (True, False): f"{unit}_plugin",
        (True, True): f"{unit}_plugin_command",
        (False, True): f"{unit}_command",
    }
    for level, unit in ((DAY, "days"), (HOUR, "hours"))
}
_FOLDS = (
    "fold_job_counts",
    "fold_status",
    "fold_hour",
    "fold_hour_plugin",
    "fold_hour_command",
    "fold_hour_plugin_command",
    "fold_day",
    "fold_day_plugin",
    "fold_day_command",
    "fold_day_plugin_command",
)
_STATUSES = {s.value: s for s in Status}
_SOURCES = {s.value: s for s in Source}

Key = tuple[str, str, str, str]  # status, source, plugin, command
#: A way to walk a page: (estimated rows read, query name, its key arrays).
Candidate = tuple[float, str, dict[str, Any]]


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


def _counts_statement(filters: JobFilter) -> tuple[str, dict[str, Any]]:
    """The statement reading the counts a listing plans with (one statement: one snapshot).
    Per key only when the filter names a plugin or a command: a few keys then (a plugin's
    commands, or the plugins with a command)."""
    shape = (filters.plugin is not None, filters.command is not None)
    return q(_COUNTS_QUERY[shape]), {"plugin": filters.plugin, "command": filters.command}


def _counts_of(filters: JobFilter, rows: Sequence[Sequence[Any]]) -> _Counts:
    plugin, command = filters.plugin, filters.command
    keys = plugin is not None or command is not None
    per_status_source: dict[tuple[str, str], int] = {}
    per_key: dict[Key, int] = {}
    for kind, status, source, row_plugin, row_command, n in rows:
        if kind != "k":  # a per-status row, or a delta: every job counts there
            per_status_source[(status, source)] = per_status_source.get((status, source), 0) + n
        if kind == "s" or not keys:
            continue
        if (plugin is None or row_plugin == plugin) and (command is None or row_command == command):
            key = (status, source, row_plugin, row_command)
            per_key[key] = per_key.get(key, 0) + n
    return _Counts(per_status_source, per_key if keys else None)


async def _read_counts(conn: Conn, filters: JobFilter) -> _Counts:
    cur = await conn.execute(*_counts_statement(filters))
    return _counts_of(filters, await cur.fetchall())


def _walk_known_beforehand(filters: JobFilter) -> tuple[str, dict[str, Any]] | None:
    """The walk when no count can change the choice, so the counts travel with it in one
    round trip: no filter at all (every job matches: the time walk), or a plugin and a
    command alone (every job of their walk matches: polling). With a status or a source,
    the counts come first: a walk whose jobs all fail the filter would read them all."""
    if filters.statuses or filters.sources:
        return None
    if filters.plugin is not None and filters.command is not None:
        keys = {"walk_plugins": [filters.plugin], "walk_commands": [filters.command]}
        return "walk_plugin_command", keys
    if filters.plugin is None and filters.command is None:
        return "walk_time", {"walk_sources": sorted(SOURCES)}
    return None


def _plan_walk(counts: _Counts, matching: list[CountRow], limit: int) -> tuple[str, dict[str, Any]]:
    """The walk (query name, key arrays) expected to read the fewest rows for a page.

    A walk over one index range whose jobs match with probability m / n reads about
    `limit` * n / m rows (at most n): the exact counts give n and m for every candidate."""
    rows = limit + 1

    def cost(index_rows: int, matches: int) -> float:
        return _SEEK_ROWS + min(index_rows, rows * index_rows / matches)

    matches: Counter[tuple[str, str]] = Counter()
    for status, source, _plugin, _command, n in matching:
        matches[(status, source)] += n
    per_source: Counter[str] = Counter()
    source_matches: Counter[str] = Counter()
    for (_status, source), n in counts.per_status_source.items():
        per_source[source] += n
    for (_status, source), n in matches.items():
        source_matches[source] += n
    # jobs_by_time is per source.
    sources = sorted(source_matches)
    estimate = sum(cost(per_source[s], source_matches[s]) for s in sources)
    candidates: list[Candidate] = [(estimate, "walk_time", {"walk_sources": sources})]
    # The status-led indexes hold every job but the succeeded ones; jobs_by_status is per
    # (status, source).
    no_succeeded = all(status != _SUCCEEDED for status, _ in matches)
    if no_succeeded:
        walks = sorted(matches)
        estimate = sum(cost(counts.per_status_source[w], matches[w]) for w in walks)
        keys = {"walk_statuses": [s for s, _ in walks], "walk_sources": [src for _, src in walks]}
        candidates.append((estimate, "walk_status", keys))
    if counts.per_key is not None:
        # Per key: every job of the key (what its walk reads), and those that match.
        keyed = [(s, p, c, n) for (s, _src, p, c), n in counts.per_key.items()]
        matched = [(s, p or "", c or "", n) for s, _src, p, c, n in matching]
        pair_totals: Counter[tuple[str, str]] = Counter()
        triple_totals: Counter[tuple[str, str, str]] = Counter()
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
    _, name, keys = _cheapest(candidates)
    return name, keys


def _cheapest(candidates: list[Candidate]) -> Candidate:
    """The candidate walk expected to read the fewest rows (the first of equals)."""
    return min(candidates, key=lambda c: c[0])


async def _list_jobs(conn: Conn, filters: JobFilter, limit: int, cursor: Cursor | None) -> JobPage:
    statuses, sources = statuses_of(filters), sources_of(filters)
    params = {
        **base_params(filters, limit, cursor),
        **_upper_bound(filters, cursor),
        "statuses": statuses,
        "sources": sources,
    }
    if filters.submitted_by_token is not None:
        return await _own_jobs(conn, filters, params, limit)
    planned = _walk_known_beforehand(filters)
    counts: _Counts | None = None
    if planned is None:
        counts = await _read_counts(conn, filters)
        matching = counts.matching(statuses, sources)
        if not matching:
            return JobPage(jobs=[], total=0, next_cursor=None)
        planned = _plan_walk(counts, matching, limit)
    name, keys = planned
    bounded = filters.created_after is not None or filters.created_before is not None
    parts = bounded_total(filters, (DAY, HOUR)) if bounded else None
    walk = conn.cursor(row_factory=dict_row)
    counted = None
    totals = []
    async with conn.pipeline():
        if counts is None:
            counted = await conn.execute(*_counts_statement(filters))
        await walk.execute(q(name), {**params, **keys})
        if parts is not None:
            shape = (filters.plugin is not None, filters.command is not None)
            for level, unit_after, unit_before in parts.units:
                units = {**params, "unit_after": unit_after, "unit_before": unit_before}
                totals.append(await conn.execute(q(_UNITS_QUERY[level][shape]), units))
            edge = name.replace("walk_", "edge_")
            for lo, hi in parts.edges:
                edges = {**params, **keys, "lo": lo, "hi": hi}
                totals.append(await conn.execute(q(edge), edges))
    if counted is not None:
        matching = _counts_of(filters, await counted.fetchall()).matching(statuses, sources)
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


def _upper_bound(filters: JobFilter, cursor: Cursor | None) -> dict[str, Any]:
    """The upper end of a walk as one (created_at, seq) bound: the cursor, or just below
    `created_before` (every seq is positive) when that is tighter."""
    upper = (cursor.created_at, cursor.seq) if cursor else (END, MAX_SEQ)
    if filters.created_before is not None:
        upper = min(upper, (filters.created_before, 0))
    return {"upper_created": upper[0], "upper_seq": upper[1]}


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
    await cur.execute(q("oldest_queued"), {"sources": sorted(SOURCES)})
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
            "days": [r[4][:DAY] for r in sums],
            "ds": [r[5] for r in sums],
        }
        async with conn.pipeline():
            for name in _FOLDS:
                await conn.execute(q(name), params)
    return sum(int(r[6]) for r in rows)


async def _vacuum_deltas(conn: Conn, truncate: bool) -> None:
    await conn.execute(q("vacuum_count_deltas" if truncate else "vacuum_count_deltas_keep"))


async def _vacuum_rollups(conn: Conn) -> None:
    await conn.execute(q("vacuum_count_rollups"))


@dataclass(slots=True)
class _Upkeep:
    """What the fold task did since it last vacuumed the delta log and the rollups."""

    folded: int = 0
    vacuumed_at: float = 0.0
    truncated: bool = True
    rollups_clean: bool = True
    rollups_vacuumed_at: float = 0.0


class ListingMixin(Database):
    """list_jobs and the counts; the fold of the count deltas (a task of every open store)."""

    _fold_task: asyncio.Task[None] | None = None
    _fold_stop: asyncio.Event | None = None

    # -- lifecycle: the fold task ------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[Migration]:
        applied = await super().open(migrate=migrate)
        if self.read_only is None:
            self._fold_stop = asyncio.Event()
            self._fold_task = asyncio.create_task(
                self._fold_forever(self._fold_stop), name="fold-counts"
            )
        return applied

    async def close(self) -> None:
        task, self._fold_task = self._fold_task, None
        if task is not None and self._fold_stop is not None:
            # Between two folds, not in the middle of one: a fold being cancelled would
            # only roll back, but its connection would be discarded.
            self._fold_stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_FOLD_S)
            except TimeoutError:
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
        await self._maintenance(_vacuum_deltas, truncate)

    async def _fold_forever(self, stop: asyncio.Event) -> None:
        """Fold while there is something to fold, then less and less often; keep the delta
        log's heap small and the rollups' visibility maps set (index-only sums), whether
        or not the server's autovacuum runs. Returns once `stop` is set."""
        upkeep = _Upkeep()
        pause = _FOLD_BUSY_S
        while not stop.is_set():
            try:
                moved = await self.fold_count_deltas()
                await self._after_fold(moved or 0, upkeep)
            except StoreError as exc:
                log.warning("folding the count deltas failed (retrying): %s", exc)
                moved, pause = 0, _FOLD_IDLE_MAX_S
            if moved is not None and moved >= FOLD_BATCH:
                pause = 0
            elif moved:
                pause = _FOLD_BUSY_S
            else:
                pause = min(max(pause, _FOLD_BUSY_S) * 2, _FOLD_IDLE_MAX_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def _after_fold(self, moved: int, upkeep: _Upkeep) -> None:
        now = time.monotonic()
        if moved:
            upkeep.folded += moved
            upkeep.truncated = upkeep.rollups_clean = False
        if upkeep.folded and now - upkeep.vacuumed_at >= _VACUUM_EVERY_S:
            await self.vacuum_count_deltas(truncate=False)
            upkeep.folded, upkeep.vacuumed_at = 0, now
        elif not moved and not upkeep.truncated:
            # Idle after folding: give the heap's empty pages back while no writer needs
            # the table.
            await self.vacuum_count_deltas(truncate=True)
            upkeep.folded, upkeep.vacuumed_at, upkeep.truncated = 0, now, True
        if not upkeep.rollups_clean and now - upkeep.rollups_vacuumed_at >= _ROLLUPS_VACUUM_S:
            await self._maintenance(_vacuum_rollups)
            upkeep.rollups_clean, upkeep.rollups_vacuumed_at = True, now

    async def _fold_what_is_left(self) -> None:
        """At close: fold every delta left (unless another process is folding), then give
        the log's space back and vacuum the rollups (a process that imported many jobs
        leaves them ready for index-only sums). Failures are logged: the next store folds
        what is left."""
        if self._pool is None or self.read_only is not None:
            return
        try:
            folded = 0
            while (moved := await self.fold_count_deltas()) is not None:
                folded += moved
                if moved < FOLD_BATCH:
                    break
            if folded:
                # Without giving pages back: other processes may still be writing deltas,
                # and VACUUM would try for up to 5 s to lock them out. The fold task of the
                # next store truncates once the log is idle.
                await self.vacuum_count_deltas(truncate=False)
                await self._maintenance(_vacuum_rollups)
        except StoreError as exc:
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

"""What every backend's job listing shares, in pure Python (no SQL, no connection).

- the status and source lists a filter means (all of them when it names none);
- exact counts per (status, source, plugin, command), added up from the rows of the count
  rollups and of the deltas not folded into them yet (a key may come in several rows);
- how an exact total with time bounds splits into whole days or hours (summed from the
  rollups) and at most two partial hours at the edges (counted in an index);
- how a page and its keyset cursor are cut from the `limit + 1` rows read.

Timestamps are fixed-width UTC text (timeutil.format_ts), so text order is time order and
the first 13 characters of a timestamp name its hour: 2026-11-23T15.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from queue_service.statuses import SOURCES, STATUSES, Status
from queue_service.store.types import Cursor, JobFilter, JobSummary

#: Bounds outside any timestamp or hour: '' sorts first, '~' after every digit.
START, END = "", "~"
#: Above every seq: the cursor of a first page.
MAX_SEQ = 2**63 - 1
#: The lengths of the day and hour prefixes of a timestamp: 2026-11-23, 2026-11-23T15
DAY, HOUR = 10, 13

#: (status, source, plugin, command, n): plugin and command are None in rows of a rollup
#: that does not keep them (per status and source only).
CountRow = tuple[str, str, str | None, str | None, int]


def statuses_of(filters: JobFilter) -> list[str]:
    """The statuses a filter keeps, sorted (every status when it names none)."""
    return sorted({s.value for s in filters.statuses} or set(STATUSES))


def sources_of(filters: JobFilter) -> list[str]:
    """The sources a filter keeps, sorted (every source when it names none)."""
    return sorted({s.value for s in filters.sources} or set(SOURCES))


def sum_counts(
    rows: Iterable[Sequence[Any]], statuses: Sequence[str], sources: Sequence[str]
) -> list[CountRow]:
    """Add up (status, source, plugin, command, n) rows per key, keeping the keys of
    `statuses` and `sources` that have jobs (n > 0)."""
    summed: dict[tuple[str, str, str | None, str | None], int] = {}
    for status, source, plugin, command, n in rows:
        if status in statuses and source in sources:
            key = (status, source, plugin, command)
            summed[key] = summed.get(key, 0) + int(n)
    return [(*key, n) for key, n in summed.items() if n > 0]


def by_status(counts: Iterable[CountRow]) -> dict[Status, int]:
    """Counts per status (statuses without jobs left out)."""
    totals: dict[Status, int] = {}
    for status, _source, _plugin, _command, n in counts:
        totals[Status(status)] = totals.get(Status(status), 0) + n
    return {status: n for status, n in totals.items() if n > 0}


def base_params(filters: JobFilter, limit: int, cursor: Cursor | None) -> dict[str, Any]:
    """The parameters every listing statement shares: bounds (absent ones are values outside
    any timestamp), the keyset position, `limit + 1` (one more row tells whether a next page
    exists), plugin, command and token (None: any)."""
    return {
        "after": filters.created_after or START,
        "before": filters.created_before or END,
        "cursor_created": cursor.created_at if cursor else END,
        "cursor_seq": cursor.seq if cursor else MAX_SEQ,
        "limit": limit + 1,
        "plugin": filters.plugin,
        "command": filters.command,
        "token": filters.submitted_by_token,
    }


@dataclass(frozen=True, slots=True)
class BoundedTotal:
    """How to count the jobs between two time bounds exactly: for each (level, lo, hi) of
    `units`, the whole units of that level (a prefix length: DAY, HOUR) strictly between lo
    and hi, summed from the rollups of that level; plus each (lo, hi) range of `edges`
    (at most a unit of the finest level), counted in an index. Every bound is exclusive."""

    units: tuple[tuple[int, str, str], ...]
    edges: tuple[tuple[str, str], ...]


def bounded_total(filters: JobFilter, levels: Sequence[int] = (HOUR,)) -> BoundedTotal | None:
    """The parts of an exact total with time bounds, from the coarsest of `levels` (prefix
    lengths of a timestamp, coarse to fine) to the finest, then the edges; None when no job
    can be between the bounds (after >= before)."""
    after = filters.created_after or START
    before = filters.created_before or END
    if after >= before:
        return None
    units: list[tuple[int, str, str]] = []
    edges: list[tuple[str, str]] = []
    _split(after, before, tuple(levels), units, edges)
    return BoundedTotal(tuple(units), tuple(edges))


def _split(
    lo: str,
    hi: str,
    levels: tuple[int, ...],
    units: list[tuple[int, str, str]],
    edges: list[tuple[str, str]],
) -> None:
    """Cover (lo, hi) with whole units of levels[0], the rest with finer levels, the rest
    with edges. A bound no longer than the level's prefix (START, END, a day's or an
    hour's prefix) lies on a unit boundary: every timestamp of a unit sorts after the
    unit's prefix and before the prefix + END."""
    if lo >= hi:
        return
    if not levels:
        edges.append((lo, hi))
        return
    size, finer = levels[0], levels[1:]
    unit_lo = lo if len(lo) <= size else lo[:size]
    unit_hi = hi if len(hi) <= size else hi[:size]
    if unit_lo == unit_hi:  # within one unit: no whole unit of this level
        _split(lo, hi, finer, units, edges)
        return
    units.append((size, unit_lo, unit_hi))
    if unit_lo != lo:  # (lo, end of its unit)
        _split(lo, unit_lo + END, finer, units, edges)
    if unit_hi != hi:  # (start of its unit, hi)
        _split(unit_hi, hi, finer, units, edges)


def own_jobs_by_time_only(filters: JobFilter) -> bool:
    """Whether a listing of one token's jobs filters on nothing but time (then its total is
    counted in the index alone)."""
    return not (filters.plugin or filters.command or filters.statuses or filters.sources)


def cut_page(
    rows: Sequence[Any], limit: int, summary: Callable[[Any], JobSummary]
) -> tuple[list[JobSummary], Cursor | None]:
    """The jobs of a page from up to `limit + 1` rows in listing order, and the cursor of
    the next page (None when the extra row is absent: this is the last page)."""
    jobs = [summary(r) for r in rows[:limit]]
    next_cursor = Cursor(jobs[-1].created_at, jobs[-1].seq) if len(rows) > limit else None
    return jobs, next_cursor

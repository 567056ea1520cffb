"""The pure parts of listing that every backend shares (store/listing_plan.py)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from queue_service.store import JobFilter
from queue_service.store.listing_plan import DAY, HOUR, bounded_total
from queue_service.timeutil import format_ts

START = datetime(2026, 11, 20, 21, 0, 0).astimezone()


def _count(
    parts_units: tuple[tuple[int, str, str], ...], edges: tuple[tuple[str, str], ...], ts: list[str]
) -> int:
    """What a store would count: each timestamp in whole units of a level, or in an edge."""
    total = 0
    for t in ts:
        in_units = sum(lo < t[:size] < hi for size, lo, hi in parts_units)
        in_edges = sum(lo < t < hi for lo, hi in edges)
        assert in_units + in_edges <= 1, (t, parts_units, edges)  # no job counted twice
        total += in_units + in_edges
    return total


@pytest.mark.parametrize("levels", [(HOUR,), (DAY, HOUR)])
def test_a_bounded_total_counts_every_job_between_the_bounds_once(levels: tuple[int, ...]) -> None:
    rng = random.Random(3)
    moments = [START + timedelta(minutes=rng.randrange(0, 4 * 24 * 60)) for _ in range(400)]
    times = sorted({format_ts(m.replace(second=rng.choice([0, 0, 30]))) for m in moments})
    edges_of_units = [format_ts(START + timedelta(hours=h)) for h in range(-2, 100)]

    def bound() -> str | None:
        kind = rng.choice(["none", "row", "unit", "any"])
        if kind == "none":
            return None
        if kind == "row":
            return rng.choice(times)
        if kind == "unit":  # exactly on an hour or a day boundary
            return rng.choice(edges_of_units)
        return format_ts(START + timedelta(seconds=rng.randrange(-7200, 5 * 86400)))

    checked = 0
    for _ in range(2000):
        f = JobFilter(created_after=bound(), created_before=bound())
        if f.created_after is None and f.created_before is None:
            continue
        expected = sum(
            (f.created_after is None or t > f.created_after)
            and (f.created_before is None or t < f.created_before)
            for t in times
        )
        parts = bounded_total(f, levels)
        if parts is None:
            assert expected == 0
            continue
        assert {size for size, _, _ in parts.units} <= set(levels)
        assert _count(parts.units, parts.edges, times) == expected, f
        # Edges are at most one unit of the finest level: an index counts them cheaply.
        for lo, hi in parts.edges:
            assert lo[: levels[-1]] == hi[: levels[-1]] or len(lo) <= levels[-1], (lo, hi)
        checked += expected > 0
    assert checked > 500


def test_a_range_over_weeks_sums_days_and_hours_only_at_its_ends() -> None:
    f = JobFilter(
        created_after="2026-11-02T10:15:00.000000Z", created_before="2026-11-26T02:32:44.000000Z"
    )
    parts = bounded_total(f, (DAY, HOUR))
    assert parts is not None
    assert parts.units == (
        (DAY, "2026-11-02", "2026-11-26"),
        (HOUR, "2026-11-02T10", "2026-11-02~"),
        (HOUR, "2026-11-26", "2026-11-26T02"),
    )
    assert parts.edges == (
        ("2026-11-02T10:15:00.000000Z", "2026-11-02T10~"),
        ("2026-11-26T02", "2026-11-26T02:32:44.000000Z"),
    )
    assert bounded_total(JobFilter(created_after="b", created_before="a")) is None

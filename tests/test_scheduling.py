"""Pure schedule logic with an injected clock: slots, time zones and DST, jitter, catch-up.

No test sleeps: every function under test is given `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from queue_service.scheduling import (
    MISFIRE_GRACE,
    Decision,
    ScheduleSpec,
    ScheduleState,
    decide,
    schedule_key,
)
from queue_service.timeutil import format_ts, parse_rfc3339

KEY = "echo:hb"


def at(text: str) -> datetime:
    return parse_rfc3339(text)


def ts(text: str) -> str:
    """RFC 3339 -> the store's fixed-width slot text."""
    return format_ts(at(text))


def spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"id": "hb", "command": "poll", **fields})


def slots(schedule: ScheduleSpec, start: str, end: str) -> list[str]:
    """Every slot in (start, end], as UTC text."""
    found, moment = [], at(start)
    while (moment := schedule.next_slot_after(moment)) <= at(end):
        found.append(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return found


def state(next_run_at: str | None) -> ScheduleState:
    return ScheduleState(next_run_at=ts(next_run_at) if next_run_at else None)


# -- slots ----------------------------------------------------------------------------


def test_schedule_key() -> None:
    assert schedule_key("echo", "hb") == "echo:hb"


@pytest.mark.parametrize(
    ("every", "after", "expected"),
    [
        ("5m", "2026-01-01T10:02:30Z", "2026-01-01T10:05:00Z"),
        ("5m", "2026-01-01T10:05:00Z", "2026-01-01T10:10:00Z"),  # strictly after
        ("5m", "2026-01-01T10:04:59.999999Z", "2026-01-01T10:05:00Z"),
        ("30s", "2026-01-01T10:00:31Z", "2026-01-01T10:01:00Z"),
        ("1h", "2026-01-01T10:00:00.5Z", "2026-01-01T11:00:00Z"),
        ("1d", "2026-01-01T10:00:00Z", "2026-01-02T00:00:00Z"),
        ("7m", "2026-01-01T00:00:00Z", "2026-01-01T00:07:00Z"),  # counted from the epoch
        ("7m", "2026-01-02T00:00:00Z", "2026-01-02T00:02:00Z"),
        ("1d", "2026-01-01T23:30:00+02:00", "2026-01-02T00:00:00Z"),  # offsets are honoured
    ],
)
def test_every_slots_are_aligned_to_the_epoch(every: str, after: str, expected: str) -> None:
    assert spec(every=every).next_slot_after(at(after)) == at(expected)


def test_every_slots_do_not_depend_on_when_the_process_started() -> None:
    schedule = spec(every="5m")
    a = slots(schedule, "2026-01-01T09:58:01Z", "2026-01-01T10:20:00Z")
    b = slots(schedule, "2026-01-01T10:03:59Z", "2026-01-01T10:20:00Z")
    assert (
        a[1:]
        == b
        == [
            "2026-01-01T10:05:00Z",
            "2026-01-01T10:10:00Z",
            "2026-01-01T10:15:00Z",
            "2026-01-01T10:20:00Z",
        ]
    )


def test_cron_in_utc() -> None:
    weekdays_at_nine = spec(cron="0 9 * * 1-5")
    # Friday 2026-01-02 10:00 -> Monday 2026-01-05 09:00
    assert weekdays_at_nine.next_slot_after(at("2026-01-02T10:00:00Z")) == at(
        "2026-01-05T09:00:00Z"
    )
    assert weekdays_at_nine.next_slot_after(at("2026-01-05T09:00:00Z")) == at(
        "2026-01-06T09:00:00Z"
    )


def test_cron_is_read_in_its_timezone() -> None:
    nine_in_new_york = spec(cron="0 9 * * *", timezone="America/New_York")
    assert nine_in_new_york.next_slot_after(at("2026-01-15T00:00:00Z")) == at(
        "2026-01-15T14:00:00Z"
    )
    assert nine_in_new_york.next_slot_after(at("2026-07-15T00:00:00Z")) == at(
        "2026-07-15T13:00:00Z"
    )


def test_dst_spring_forward_daily_time_in_the_gap_runs_once_after_it() -> None:
    # Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    daily = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    assert slots(daily, "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z") == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST, the first time after the gap
        "2026-03-30T00:30:00Z",  # 02:30 CEST
        "2026-03-31T00:30:00Z",
    ]


def test_dst_spring_forward_hourly_has_23_slots_that_day() -> None:
    hourly = spec(cron="30 * * * *", timezone="Europe/Berlin")
    # The local day 2026-03-29 runs from 23:00Z on the 28th to 22:00Z on the 29th.
    assert len(slots(hourly, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")) == 23


def test_dst_fall_back_daily_time_in_the_repeated_hour_runs_once() -> None:
    # Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    daily = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    assert slots(daily, "2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z") == [
        "2026-10-24T00:30:00Z",  # 02:30 CEST
        "2026-10-25T00:30:00Z",  # the first 02:30 (CEST) only
        "2026-10-26T01:30:00Z",  # 02:30 CET
    ]
    fixed_hour_every_20_minutes = spec(cron="*/20 2 * * *", timezone="Europe/Berlin")
    assert slots(fixed_hour_every_20_minutes, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z") == [
        "2026-10-25T00:00:00Z",
        "2026-10-25T00:20:00Z",
        "2026-10-25T00:40:00Z",
    ]


def test_dst_fall_back_hourly_counts_every_real_hour() -> None:
    hourly = spec(cron="30 * * * *", timezone="Europe/Berlin")
    day = slots(hourly, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z")
    assert len(day) == 25
    assert "2026-10-25T00:30:00Z" in day and "2026-10-25T01:30:00Z" in day  # both 02:30s


def test_is_slot() -> None:
    assert spec(every="5m").is_slot(at("2026-01-01T10:05:00Z"))
    assert not spec(every="5m").is_slot(at("2026-01-01T10:05:01Z"))
    berlin = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    assert berlin.is_slot(at("2026-10-25T00:30:00Z"))
    assert not berlin.is_slot(at("2026-10-25T01:30:00Z"))  # the repeated 02:30


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        spec(every="5m").next_slot_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        decide(spec(every="5m"), KEY, None, datetime(2026, 1, 1))


def test_spec_defaults() -> None:
    schedule = spec(every="5m")
    assert schedule.timezone == "UTC"
    assert schedule.jitter_span == timedelta(0)
    assert schedule.payload == {}
    assert schedule.if_running == "skip"
    assert schedule.catch_up == "skip"


# -- jitter ---------------------------------------------------------------------------


def test_jitter_is_deterministic_per_schedule_and_slot() -> None:
    slot = at("2026-01-01T10:00:00Z")
    first = spec(every="1h", jitter="10m")
    restarted = spec(every="1h", jitter="10m")  # parsed again, as after a restart
    assert first.jitter_for(KEY, slot) == restarted.jitter_for(KEY, slot)
    assert first.due_at(KEY, slot) == slot + first.jitter_for(KEY, slot)
    others = {first.jitter_for(f"echo:s{i}", slot) for i in range(20)}
    assert len(others) > 15  # schedules sharing a slot are spread out


def test_jitter_stays_within_bounds_and_spreads() -> None:
    schedule = spec(every="1h", jitter="10m")
    start = at("2026-01-01T00:00:00Z")
    offsets = [schedule.jitter_for(KEY, start + timedelta(hours=i)) for i in range(1000)]
    assert all(timedelta(0) <= o < timedelta(minutes=10) for o in offsets)
    assert min(offsets) < timedelta(seconds=30)
    assert max(offsets) > timedelta(minutes=9, seconds=30)


@pytest.mark.parametrize("jitter", [None, "0", "0s", "0m"])
def test_zero_jitter(jitter: str | None) -> None:
    schedule = spec(every="1h", jitter=jitter)
    assert schedule.jitter_for(KEY, at("2026-01-01T10:00:00Z")) == timedelta(0)


# -- decide ---------------------------------------------------------------------------


def test_new_schedule_starts_at_the_next_slot_without_firing() -> None:
    decision = decide(spec(every="5m"), KEY, None, at("2026-01-01T10:02:00Z"))
    assert decision == Decision(fire_slot=None, next_run_at=ts("2026-01-01T10:05:00Z"), reset=True)
    empty = decide(spec(every="5m"), KEY, ScheduleState(), at("2026-01-01T10:02:00Z"))
    assert empty == decision


def test_nothing_to_do_before_the_slot() -> None:
    assert (
        decide(spec(every="5m"), KEY, state("2026-01-01T10:05:00Z"), at("2026-01-01T10:04:59Z"))
        is None
    )


def test_a_due_slot_fires_and_the_next_one_is_persisted() -> None:
    decision = decide(
        spec(every="5m"), KEY, state("2026-01-01T10:05:00Z"), at("2026-01-01T10:05:00Z")
    )
    assert decision == Decision(
        fire_slot=ts("2026-01-01T10:05:00Z"), next_run_at=ts("2026-01-01T10:10:00Z")
    )


def test_a_slot_late_within_the_grace_still_fires() -> None:
    late = at("2026-01-01T10:05:00Z") + MISFIRE_GRACE
    for catch_up in ("skip", "run_once"):
        decision = decide(
            spec(every="5m", catch_up=catch_up), KEY, state("2026-01-01T10:05:00Z"), late
        )
        assert decision is not None
        assert decision.fire_slot == ts("2026-01-01T10:05:00Z")
        assert decision.missed_since is None


def test_a_slot_later_than_the_grace_is_missed() -> None:
    too_late = at("2026-01-01T10:05:00Z") + MISFIRE_GRACE + timedelta(microseconds=1)
    skip = decide(spec(every="5m"), KEY, state("2026-01-01T10:05:00Z"), too_late)
    assert skip == Decision(
        fire_slot=None,
        next_run_at=ts("2026-01-01T10:10:00Z"),
        missed_since=ts("2026-01-01T10:05:00Z"),
    )
    run_once = decide(
        spec(every="5m", catch_up="run_once"), KEY, state("2026-01-01T10:05:00Z"), too_late
    )
    assert run_once is not None and run_once.fire_slot == ts("2026-01-01T10:05:00Z")


def test_jittered_slot_fires_at_its_due_time_under_its_nominal_key() -> None:
    schedule = spec(every="1h", jitter="10m")
    slot = at("2026-01-01T10:00:00Z")
    due = schedule.due_at(KEY, slot)
    assert due > slot  # this key and slot happen to have a non-zero jitter
    assert (
        decide(schedule, KEY, state("2026-01-01T10:00:00Z"), due - timedelta(microseconds=1))
        is None
    )
    decision = decide(schedule, KEY, state("2026-01-01T10:00:00Z"), due)
    assert decision == Decision(
        fire_slot=ts("2026-01-01T10:00:00Z"), next_run_at=ts("2026-01-01T11:00:00Z")
    )


def test_catch_up_skip_fires_nothing_for_missed_slots() -> None:
    decision = decide(
        spec(every="1h"), KEY, state("2026-01-01T10:00:00Z"), at("2026-01-01T13:20:00Z")
    )
    assert decision == Decision(
        fire_slot=None,
        next_run_at=ts("2026-01-01T14:00:00Z"),
        missed_since=ts("2026-01-01T10:00:00Z"),
    )


def test_catch_up_run_once_fires_one_job_keyed_by_the_first_missed_slot() -> None:
    schedule = spec(every="1h", catch_up="run_once")
    decision = decide(schedule, KEY, state("2026-01-01T10:00:00Z"), at("2026-01-01T13:20:00Z"))
    assert decision == Decision(
        fire_slot=ts("2026-01-01T10:00:00Z"),
        next_run_at=ts("2026-01-01T14:00:00Z"),
        missed_since=ts("2026-01-01T10:00:00Z"),
    )
    # A second process deciding a little later from the same state picks the same
    # slot, so the store's unique key lets only one of them enqueue.
    later = decide(schedule, KEY, state("2026-01-01T10:00:00Z"), at("2026-01-01T13:59:59Z"))
    assert later is not None and later.fire_slot == decision.fire_slot


def test_downtime_ending_just_after_a_slot_fires_that_slot_only() -> None:
    for catch_up in ("skip", "run_once"):
        schedule = spec(every="1h", catch_up=catch_up)
        decision = decide(schedule, KEY, state("2026-01-01T10:00:00Z"), at("2026-01-01T13:00:30Z"))
        assert decision == Decision(
            fire_slot=ts("2026-01-01T13:00:00Z"),
            next_run_at=ts("2026-01-01T14:00:00Z"),
            missed_since=ts("2026-01-01T10:00:00Z"),
        )


def test_catch_up_with_jitter_leaves_a_not_yet_due_slot_pending() -> None:
    schedule = spec(every="1h", jitter="30m", catch_up="run_once")
    slot = at("2026-01-01T13:00:00Z")
    now = slot + timedelta(seconds=1)
    assert schedule.due_at(KEY, slot) > now
    decision = decide(schedule, KEY, state("2026-01-01T10:00:00Z"), now)
    assert decision is not None
    assert decision.next_run_at == ts("2026-01-01T13:00:00Z")  # still to fire, with its jitter
    assert decision.fire_slot == ts("2026-01-01T10:00:00Z")


def test_long_outages_are_settled_without_walking_every_slot() -> None:
    year_later = at("2027-01-01T00:00:10Z")
    for schedule in (spec(every="30s"), spec(cron="* * * * *", jitter="5m"), spec(every="1h")):
        decision = decide(schedule, KEY, state("2026-01-01T00:00:00Z"), year_later)
        assert decision is not None
        assert decision.missed_since == ts("2026-01-01T00:00:00Z")
        # Only a slot that is on time now may fire (catch_up is "skip").
        if decision.fire_slot is not None:
            assert year_later - schedule.due_at(KEY, at(decision.fire_slot)) <= MISFIRE_GRACE
        assert at(decision.next_run_at) <= schedule.next_slot_after(year_later)
        assert schedule.due_at(KEY, at(decision.next_run_at)) > year_later


@pytest.mark.parametrize(
    ("stored", "every", "now", "expected_next"),
    [
        # not a slot of the schedule (its interval was edited)
        ("2026-01-01T10:07:00Z", "5m", "2026-01-01T10:06:00Z", "2026-01-01T10:10:00Z"),
        # later than the next slot: daily edited to hourly must not wait for tomorrow
        ("2026-01-02T00:00:00Z", "1h", "2026-01-01T10:30:00Z", "2026-01-01T11:00:00Z"),
    ],
)
def test_state_that_does_not_fit_the_schedule_restarts_it(
    stored: str, every: str, now: str, expected_next: str
) -> None:
    decision = decide(spec(every=every), KEY, state(stored), at(now))
    assert decision == Decision(fire_slot=None, next_run_at=ts(expected_next), reset=True)


def test_unreadable_state_restarts_the_schedule() -> None:
    decision = decide(
        spec(every="5m"), KEY, ScheduleState(next_run_at="garbage"), at("2026-01-01T10:01:00Z")
    )
    assert decision == Decision(fire_slot=None, next_run_at=ts("2026-01-01T10:05:00Z"), reset=True)


def test_all_times_are_utc() -> None:
    slot = spec(cron="0 9 * * *", timezone="Asia/Tokyo").next_slot_after(at("2026-01-01T00:00:00Z"))
    assert slot.tzinfo is UTC

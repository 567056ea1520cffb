"""Schedule arithmetic: when slots fall, which one is due, and what to persist.

Pure logic: no I/O, and no clock of its own (every function is given `now`), so the
behaviour across downtime, restarts and DST changes is tested without sleeping.

Vocabulary:

- A **slot** is one nominal firing instant of a schedule, before jitter. It is
  identified by its fixed-width UTC text (see `queue_service.timeutil`), which is
  the key the store's UNIQUE (schedule, slot) constraint uses.
- A slot is **due** at `slot + jitter`, the jitter being a deterministic function of
  (schedule key, slot), so every process and every restart agrees on it.
- The persisted `next_run_at` is the nominal slot that has not been handled yet.
- A due slot is **on time** while `now - due <= MISFIRE_GRACE`; an older one was
  **missed** (the service was down or stalled), and `catch_up` decides its fate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from queue_service.store.types import FireOutcome, FireResult, ScheduleState
from queue_service.timeutil import format_ts, parse_duration, parse_rfc3339

__all__ = [
    "MISFIRE_GRACE",
    "Decision",
    "FireOutcome",
    "FireResult",
    "ScheduleSpec",
    "ScheduleState",
    "decide",
    "schedule_key",
]

#: How late a due slot may still fire as "on time". Beyond it the slot counts as
#: missed, so a stall or a restart of a few seconds never drops a slot, while an
#: outage does follow `catch_up`.
MISFIRE_GRACE = timedelta(seconds=60)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SCHEDULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ZERO_DURATION = re.compile(r"^\s*0+\s*[smhd]?\s*$")


def schedule_key(plugin: str, schedule_id: str) -> str:
    """The stable key of a schedule in the store: `plugin:schedule_id`."""
    return f"{plugin}:{schedule_id}"


class ScheduleSpec(BaseModel):
    """One entry of `[plugins.NAME] schedules`: which command runs when.

    `every` slots are multiples of the interval counted from the Unix epoch in UTC
    (so `1h` falls on the hour and `1d` at 00:00 UTC), which lets every process agree
    on them without coordination. `cron` is evaluated in `timezone` by croniter.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str
    command: str
    every: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    if_running: Literal["skip", "queue"] = "skip"
    catch_up: Literal["skip", "run_once"] = "skip"

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _SCHEDULE_ID.match(value):
            raise ValueError(
                f"{value!r} is not a schedule id; use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a command of the plugin, e.g. 'poll'")
        return value

    @field_validator("every")
    @classmethod
    def _check_every(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a five-field cron expression "
                "(minute hour day-of-month month day-of-week), e.g. '0 9 * * 1-5'"
            )
        try:
            croniter(value, _EPOCH).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"{value!r} never matches a date") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str, info: ValidationInfo) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"{value!r} is not an IANA time zone; use e.g. 'UTC' or 'Europe/Berlin'"
            ) from None
        if info.data.get("every") is not None and value != "UTC":
            raise ValueError(
                "only applies to cron schedules; 'every' is a fixed interval counted in UTC "
                "(use cron for local wall-clock times)"
            )
        return value

    @field_validator("jitter")
    @classmethod
    def _check_jitter(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _ZERO_DURATION.match(value):
            return value
        span = parse_duration(value)
        every = info.data.get("every")
        if every is not None and span >= parse_duration(every):
            raise ValueError(f"must be shorter than every ({every.strip()})")
        return value

    @model_validator(mode="after")
    def _exactly_one_timetable(self) -> Self:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of 'every' or 'cron'")
        return self

    @property
    def interval(self) -> timedelta | None:
        """The `every` interval, or None for a cron schedule."""
        return parse_duration(self.every) if self.every is not None else None

    @property
    def jitter_span(self) -> timedelta:
        """Upper bound (exclusive) of the jitter added to each slot; zero without jitter."""
        if self.jitter is None or _ZERO_DURATION.match(self.jitter):
            return timedelta(0)
        return parse_duration(self.jitter)

    def next_slot_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment` (aware), as an aware UTC datetime."""
        if moment.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        moment = moment.astimezone(UTC)
        interval = self.interval
        if interval is not None:
            period = interval // _MICROSECOND
            elapsed = (moment - _EPOCH) // _MICROSECOND
            return _EPOCH + (elapsed // period + 1) * period * _MICROSECOND
        assert self.cron is not None
        # Cron slots are whole minutes, so the answer only depends on the minute;
        # caching per minute keeps a once-a-second tick cheap.
        return _cron_slot_after(self.cron, self.timezone, moment.replace(second=0, microsecond=0))

    def is_slot(self, moment: datetime) -> bool:
        """Whether `moment` is one of this schedule's slots."""
        return self.next_slot_after(moment - _MICROSECOND) == moment

    def jitter_for(self, key: str, slot: datetime) -> timedelta:
        """The deterministic jitter of `slot`, in [0, jitter_span), seeded by (key, slot)."""
        span = self.jitter_span // _MICROSECOND
        if span == 0:
            return timedelta(0)
        seed = f"{key}\x00{format_ts(slot)}".encode()
        digest = hashlib.blake2b(seed, digest_size=8).digest()
        return (int.from_bytes(digest, "big") % span) * _MICROSECOND

    def due_at(self, key: str, slot: datetime) -> datetime:
        """When `slot` fires: the slot plus its jitter."""
        return slot + self.jitter_for(key, slot)


@lru_cache(maxsize=4096)
def _cron_slot_after(expr: str, zone_name: str, minute: datetime) -> datetime:
    zone = ZoneInfo(zone_name)
    # Like cron(8): when clocks fall back, a job at a fixed hour runs at the first of
    # the two identical wall-clock times only; a job with a wildcard hour (`*`, `*/2`)
    # follows real elapsed time and runs in both. croniter itself yields both.
    fixed_hour = not expr.split()[1].startswith("*")
    times = croniter(expr, minute.astimezone(zone))
    while True:
        slot = times.get_next(datetime).astimezone(UTC)
        if not (fixed_hour and _is_repeated_wall_time(slot.astimezone(zone))):
            return slot


def _is_repeated_wall_time(local: datetime) -> bool:
    """True for the second occurrence of a wall-clock time that a fall-back repeats."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one schedule now.

    `fire_slot`: the slot to enqueue (its UNIQUE key), or None to only move
    `next_run_at` forward. `missed_since`: the first slot that was missed, if any.
    `reset`: the persisted state was absent or did not fit the schedule (for example
    the schedule was edited), so the schedule starts afresh at the next slot.
    """

    fire_slot: str | None
    next_run_at: str
    missed_since: str | None = None
    reset: bool = False


def decide(
    spec: ScheduleSpec,
    key: str,
    state: ScheduleState | None,
    now: datetime,
    *,
    grace: timedelta = MISFIRE_GRACE,
) -> Decision | None:
    """Decide what one schedule does at `now`, given its persisted state.

    Returns None when nothing is due and the state is consistent. Otherwise the
    slots from `state.next_run_at` onwards that are due by `now` are settled:

    - the latest one that is on time fires (older missed slots are covered by it);
    - with none on time, `catch_up = "run_once"` fires one job keyed by the first
      missed slot, and `"skip"` fires nothing;
    - `next_run_at` becomes the first slot that is not yet due.

    A schedule without usable state is (re)started at the first slot after `now`
    without firing. The answer depends only on the arguments, so a restarted or
    second process reading the same state makes the same choice, and the store's
    UNIQUE (schedule, slot) turns a repeated choice into a no-op.
    """
    if now.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
    upcoming = spec.next_slot_after(now)
    pending = _parse_slot(state.next_run_at if state else None)
    # A pending slot later than the next upcoming one cannot come from this schedule
    # (it was edited, e.g. daily -> hourly, or the clock went back): start afresh.
    if pending is None or pending > upcoming or not spec.is_slot(pending):
        return Decision(fire_slot=None, next_run_at=format_ts(upcoming), reset=True)
    if spec.due_at(key, pending) > now:
        return None

    latest_on_time: datetime | None = None
    first_missed: datetime | None = None
    slot = pending
    # Slots up to the cutoff are missed whatever their jitter: skip them in one step
    # rather than walk a year of minutely slots after a long outage.
    cutoff = now - grace - spec.jitter_span
    if slot < cutoff:
        first_missed = slot
        slot = spec.next_slot_after(cutoff - _MICROSECOND)
    while (due := spec.due_at(key, slot)) <= now:
        if now - due <= grace:
            latest_on_time = slot
        elif first_missed is None:
            first_missed = slot
        slot = spec.next_slot_after(slot)

    if latest_on_time is not None:
        fire: datetime | None = latest_on_time
    elif spec.catch_up == "run_once":
        # Keyed by the first missed slot, which every process reads from the same
        # state, so two processes catching up at once still enqueue one job.
        fire = first_missed
    else:
        fire = None
    return Decision(
        fire_slot=format_ts(fire) if fire is not None else None,
        next_run_at=format_ts(slot),
        missed_since=format_ts(first_missed) if first_missed is not None else None,
    )


def _parse_slot(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None

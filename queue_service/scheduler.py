"""The scheduler: turns configured schedules into jobs, once per slot.

Each tick reads every schedule's persisted state, asks `scheduling.decide` what is
due, and hands the store one transaction per firing. The store's UNIQUE
(schedule, slot) key is what makes a slot fire at most once, across restarts and
across several `serve` processes sharing the database; this class keeps no state
that matters between ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from queue_service.config import ServiceConfig
from queue_service.plugins import Registry
from queue_service.scheduling import (
    Decision,
    FireOutcome,
    FireResult,
    ScheduleSpec,
    decide,
    schedule_key,
)
from queue_service.store import NewJob, Store, StoreUnavailable
from queue_service.timeutil import utcnow

__all__ = ["PluginSchedule", "Scheduler", "SlotFiring"]

logger = logging.getLogger(__name__)

#: Who scheduled jobs are submitted by, as stored in `submitted_by`.
SUBMITTED_BY = "scheduler"
#: The longest pause between two ticks while the store is unavailable (well inside
#: scheduling.MISFIRE_GRACE, so slots due during a short outage still fire on time).
MAX_OUTAGE_PAUSE = 5.0


@dataclass(frozen=True, slots=True)
class PluginSchedule:
    """One schedule of one plugin, with what a fired job needs."""

    plugin: str
    spec: ScheduleSpec
    max_attempts: int = 4

    @property
    def key(self) -> str:
        return schedule_key(self.plugin, self.spec.id)

    def new_job(self) -> NewJob:
        return NewJob(
            plugin=self.plugin,
            command=self.spec.command,
            payload=dict(self.spec.payload),
            max_attempts=self.max_attempts,
            submitted_by=SUBMITTED_BY,
            schedule_id=self.key,
        )


@dataclass(frozen=True, slots=True)
class SlotFiring:
    """One slot the scheduler asked the store to fire, and what the store did."""

    schedule_key: str
    slot: str
    next_run_at: str
    result: FireResult


class Scheduler:
    """Fires due schedule slots into the store.

    `clock` is injected so tests drive time explicitly; `tick(now)` also takes it.
    """

    def __init__(
        self,
        store: Store,
        schedules: Sequence[PluginSchedule],
        *,
        clock: Callable[[], datetime] = utcnow,
        tick_seconds: float = 1.0,
    ) -> None:
        keys = [s.key for s in schedules]
        if len(set(keys)) != len(keys):
            raise ValueError("schedule keys must be unique")
        self._store = store
        self._schedules = tuple(schedules)
        self._clock = clock
        self._tick_seconds = tick_seconds

    @classmethod
    def from_config(
        cls,
        store: Store,
        config: ServiceConfig,
        *,
        plugins: Collection[str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        tick_seconds: float = 1.0,
    ) -> Scheduler:
        """A scheduler for the configured schedules, limited to `plugins` when given
        (for example the plugins that loaded; schedules of the others never fire)."""
        schedules = [
            PluginSchedule(plugin=name, spec=spec, max_attempts=config.plugin(name).max_attempts)
            for _key, name, spec in config.schedules()
            if plugins is None or name in plugins
        ]
        return cls(store, schedules, clock=clock, tick_seconds=tick_seconds)

    @property
    def schedules(self) -> tuple[PluginSchedule, ...]:
        return self._schedules

    async def tick(self, now: datetime | None = None) -> list[SlotFiring]:
        """Settle every schedule at `now` (default: the clock) and return the slots it
        tried to fire, with the store's answer for each (enqueued, already fired by
        someone else, or skipped because a job of the schedule was still active).

        A failure on one schedule does not stop the others; failures are raised
        together as an ExceptionGroup after every schedule had its turn.
        """
        if not self._schedules:
            return []
        now = now if now is not None else self._clock()
        states = await self._store.get_schedule_states()
        firings: list[SlotFiring] = []
        errors: list[Exception] = []
        for schedule in self._schedules:
            decision = decide(schedule.spec, schedule.key, states.get(schedule.key), now)
            if decision is None:
                continue
            try:
                firing = await self._apply(schedule, decision)
            except Exception as exc:  # one broken schedule must not starve the rest
                errors.append(exc)
                continue
            if firing is not None:
                firings.append(firing)
        if errors:
            raise ExceptionGroup("scheduler tick failed for some schedules", errors)
        return firings

    async def _apply(self, schedule: PluginSchedule, decision: Decision) -> SlotFiring | None:
        key = schedule.key
        if decision.missed_since is not None:
            logger.warning(
                "schedule %s missed its slots from %s (service down or stalled); catch_up=%s: %s",
                key,
                decision.missed_since,
                schedule.spec.catch_up,
                "one job runs for them" if decision.fire_slot else "they are skipped",
            )
        if decision.fire_slot is None:
            await self._store.set_schedule_next_run(key, decision.next_run_at)
            return None
        result = await self._store.fire_schedule_slot(
            key,
            decision.fire_slot,
            decision.next_run_at,
            schedule.new_job(),
            skip_if_running=schedule.spec.if_running == "skip",
        )
        if result.outcome is FireOutcome.ENQUEUED:
            logger.info("schedule %s fired slot %s: job %s", key, decision.fire_slot, result.job_id)
        elif result.outcome is FireOutcome.SKIPPED_RUNNING:
            logger.info(
                "schedule %s slot %s skipped: a job of the schedule is still active",
                key,
                decision.fire_slot,
            )
        return SlotFiring(key, decision.fire_slot, decision.next_run_at, result)

    async def run_forever(self, stop_event: asyncio.Event) -> None:
        """Tick about once per `tick_seconds` until `stop_event` is set.

        Errors are logged and the loop goes on: a locked or unavailable database
        delays slots (within MISFIRE_GRACE they still fire on time), it never stops
        the scheduler. While it stays unavailable, ticks come further apart (twice the
        pause per failure in a row, up to MAX_OUTAGE_PAUSE), one log line each.
        """
        if not self._schedules:
            await stop_event.wait()
            return
        failures = 0
        while not stop_event.is_set():
            try:
                await self.tick()
                failures = 0
            except Exception as exc:
                failures += 1
                _log_tick_failure(exc)
            pause = self._tick_seconds
            if failures:
                pause = min(pause * 2.0 ** min(failures, 30), MAX_OUTAGE_PAUSE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=pause)


def _log_tick_failure(exc: Exception) -> None:
    """One line when the store is unavailable (the message says why, and repeats until it
    is fixed); a traceback for anything unexpected."""
    unavailable: BaseException | None = exc
    if isinstance(exc, ExceptionGroup):
        unavailable, rest = exc.split(StoreUnavailable)
        if rest is not None:
            unavailable = None
    if isinstance(unavailable, ExceptionGroup):
        unavailable = unavailable.exceptions[0]
    if isinstance(unavailable, StoreUnavailable):
        logger.warning("scheduler tick failed; will retry: %s", unavailable)
    else:
        logger.error("scheduler tick failed", exc_info=exc)


def check_schedules(config: ServiceConfig, registry: Registry) -> list[str]:
    """Problems with the configured schedules of loaded plugins, one line each, naming the
    key: a command the plugin does not declare, or a payload its input_schema rejects.

    Schedules of plugins that did not load are not checked here: the plugin's own
    problem is reported when it loads, and its schedules never fire.
    """
    problems: list[str] = []
    for name, section in config.plugins.items():
        plugin = registry.get(name)
        if plugin is None or not plugin.valid:
            continue
        for index, spec in enumerate(section.schedules):
            where = f"plugins.{name}.schedules[{index}]"
            command = plugin.command(spec.command)
            if command is None:
                declared = ", ".join(c.name for c in plugin.commands) or "none"
                problems.append(
                    f"{where}.command: plugin {name!r} has no command {spec.command!r} "
                    f"(it declares: {declared})"
                )
                continue
            invalid = command.validate_payload(dict(spec.payload))
            if invalid is not None:
                problems.append(
                    f"{where}.payload: does not match the input_schema of {name}.{spec.command} "
                    f"at {invalid.path}: {invalid.message}"
                )
    return problems

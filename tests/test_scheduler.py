"""The scheduler against the real store of every backend, with an injected clock (no sleeps)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from queue_service.config import parse_config
from queue_service.scheduler import PluginSchedule, Scheduler
from queue_service.scheduling import FireOutcome, FireResult, ScheduleSpec, ScheduleState
from queue_service.statuses import Status
from queue_service.store import SQLiteStore, Store, StoreUnavailable, create_store
from queue_service.store.types import JobFilter, NewJob
from queue_service.timeutil import format_ts, parse_rfc3339

pytestmark = pytest.mark.anyio

KEY = "echo:hb"


def at(text: str) -> datetime:
    return parse_rfc3339(text)


def ts(text: str) -> str:
    return format_ts(at(text))


def scheduler(store: Store, **fields: Any) -> Scheduler:
    spec = ScheduleSpec.model_validate({"id": "hb", "command": "poll", **fields})
    return Scheduler(store, [PluginSchedule("echo", spec, max_attempts=3)])


async def test_fires_each_slot_once_and_persists_its_state(store: Store) -> None:
    s = scheduler(store, every="5m", payload={"k": "v"})
    assert await s.tick(at("2026-01-01T09:58:00Z")) == []
    states = await store.get_schedule_states()
    assert states[KEY].next_run_at == ts("2026-01-01T10:00:00Z")
    assert states[KEY].last_job_id is None

    fired = await s.tick(at("2026-01-01T10:00:00.3Z"))
    assert [(f.slot, f.result.outcome) for f in fired] == [
        (ts("2026-01-01T10:00:00Z"), FireOutcome.ENQUEUED)
    ]
    job_id = fired[0].result.job_id
    assert job_id is not None
    for second in (1, 2, 30, 299):
        assert await s.tick(at("2026-01-01T10:00:00Z") + timedelta(seconds=second)) == []

    job = await store.get_job(job_id)
    assert job is not None
    assert (job.plugin, job.command, job.status) == ("echo", "poll", Status.QUEUED)
    assert (job.payload, job.max_attempts, job.schedule_id) == ({"k": "v"}, 3, KEY)
    assert job.submitted_by == "scheduler"
    states = await store.get_schedule_states()
    assert states[KEY].next_run_at == ts("2026-01-01T10:05:00Z")
    assert states[KEY].last_job_id == job_id
    assert states[KEY].last_fired_at is not None


async def test_restart_neither_fires_twice_nor_forgets(db_url: str) -> None:
    async def run(now: str) -> list[FireOutcome]:
        store = create_store(db_url)  # a fresh process each time
        await store.open()
        try:
            s = scheduler(store, every="1h", if_running="queue")
            return [f.result.outcome for f in await s.tick(at(now))]
        finally:
            await store.close()

    assert await run("2026-01-01T09:59:50Z") == []
    assert await run("2026-01-01T10:00:20Z") == [FireOutcome.ENQUEUED]  # not forgotten
    assert await run("2026-01-01T10:00:21Z") == []  # not twice
    assert await run("2026-01-01T10:59:59Z") == []
    assert await run("2026-01-01T11:00:00Z") == [FireOutcome.ENQUEUED]


@pytest.mark.parametrize(("catch_up", "jobs"), [("skip", 0), ("run_once", 1)])
async def test_downtime_follows_catch_up(store: Store, catch_up: str, jobs: int) -> None:
    await scheduler(store, every="1h", catch_up=catch_up).tick(at("2026-01-01T09:30:00Z"))
    restarted = scheduler(store, every="1h", catch_up=catch_up)
    fired = await restarted.tick(at("2026-01-01T14:30:00Z"))
    fired += await restarted.tick(at("2026-01-01T14:30:01Z"))
    assert [f.slot for f in fired] == [ts("2026-01-01T10:00:00Z")] * jobs
    assert (await store.get_schedule_states())[KEY].next_run_at == ts("2026-01-01T15:00:00Z")


async def test_two_processes_sharing_the_database_fire_a_slot_once(
    store: Store, another_store: Store
) -> None:
    a, b = scheduler(store, every="1m"), scheduler(another_store, every="1m", if_running="queue")
    await a.tick(at("2026-01-01T09:59:30Z"))
    start = at("2026-01-01T10:00:00Z")
    enqueued = 0
    for second in range(0, 600, 7):  # ten minutes, both ticking at once
        now = start + timedelta(seconds=second)
        fired_a, fired_b = await asyncio.gather(a.tick(now), b.tick(now))
        enqueued += sum(f.result.outcome is FireOutcome.ENQUEUED for f in fired_a + fired_b)
        for job in fired_a + fired_b:  # finish jobs so if_running=skip does not interfere
            if job.result.job_id:
                await store.cancel_job(job.result.job_id)
    assert enqueued == 10
    page = await store.list_jobs(JobFilter())
    assert page.total == 10


async def test_processes_firing_slots_of_a_skip_schedule_at_once_enqueue_one_job(
    store: Store, another_store: Store
) -> None:
    """if_running=skip across processes: two processes fire two slots of one schedule at
    the same moment (clocks a minute apart); the fire that commits second sees the job of
    the first, so one job is enqueued and the other slot is skipped."""
    for n in range(20):
        key = f"echo:race{n}"
        job = NewJob("echo", "poll", {}, schedule_id=key, submitted_by="scheduler")
        first, second = await asyncio.gather(
            store.fire_schedule_slot(key, ts("2026-01-01T10:00:00Z"), "x", job, True),
            another_store.fire_schedule_slot(key, ts("2026-01-01T10:01:00Z"), "x", job, True),
        )
        outcomes = sorted([first.outcome, second.outcome])
        assert outcomes == sorted([FireOutcome.ENQUEUED, FireOutcome.SKIPPED_RUNNING]), n


async def test_if_running_skip_waits_for_the_active_job(store: Store) -> None:
    s = scheduler(store, every="5m")
    await s.tick(at("2026-01-01T09:59:00Z"))
    (first,) = await s.tick(at("2026-01-01T10:00:00Z"))
    (skipped,) = await s.tick(at("2026-01-01T10:05:00Z"))
    assert skipped.result.outcome is FireOutcome.SKIPPED_RUNNING
    assert (await store.get_schedule_states())[KEY].next_run_at == ts("2026-01-01T10:10:00Z")
    assert first.result.job_id is not None
    await store.cancel_job(first.result.job_id)
    (second,) = await s.tick(at("2026-01-01T10:10:00Z"))
    assert second.result.outcome is FireOutcome.ENQUEUED
    assert (await store.list_jobs(JobFilter())).total == 2


async def test_if_running_queue_enqueues_while_a_job_is_active(store: Store) -> None:
    s = scheduler(store, every="5m", if_running="queue")
    for now in ("2026-01-01T09:59:00Z", "2026-01-01T10:00:00Z", "2026-01-01T10:05:00Z"):
        await s.tick(at(now))
    assert (await store.list_jobs(JobFilter())).total == 2


async def test_editing_a_schedule_restarts_it_at_its_next_slot(store: Store) -> None:
    await scheduler(store, every="1d").tick(at("2026-01-01T10:30:00Z"))
    assert (await store.get_schedule_states())[KEY].next_run_at == ts("2026-01-02T00:00:00Z")
    hourly = scheduler(store, every="1h")
    assert await hourly.tick(at("2026-01-01T10:31:00Z")) == []
    assert (await store.get_schedule_states())[KEY].next_run_at == ts("2026-01-01T11:00:00Z")
    (fired,) = await hourly.tick(at("2026-01-01T11:00:00Z"))
    assert fired.result.outcome is FireOutcome.ENQUEUED


async def test_a_failing_schedule_does_not_stop_the_others(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    every_5m = ScheduleSpec.model_validate({"id": "hb", "command": "poll", "every": "5m"})
    s = Scheduler(store, [PluginSchedule("broken", every_5m), PluginSchedule("echo", every_5m)])
    await s.tick(at("2026-01-01T09:59:00Z"))
    real_fire = store.fire_schedule_slot

    async def fire(schedule_key: str, *args: Any, **kwargs: Any) -> FireResult:
        if schedule_key == "broken:hb":
            raise RuntimeError("disk I/O error")
        return await real_fire(schedule_key, *args, **kwargs)

    monkeypatch.setattr(store, "fire_schedule_slot", fire)
    with pytest.raises(ExceptionGroup) as info:
        await s.tick(at("2026-01-01T10:00:00Z"))
    assert [str(e) for e in info.value.exceptions] == ["disk I/O error"]
    states = await store.get_schedule_states()
    assert states["echo:hb"].next_run_at == ts("2026-01-01T10:05:00Z")
    assert states["broken:hb"].next_run_at == ts("2026-01-01T10:00:00Z")  # retried next tick


async def test_run_forever_keeps_ticking_after_a_failed_tick_until_stopped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = asyncio.Event()
    times = [at("2026-01-01T09:59:58Z"), at("2026-01-01T09:59:59Z"), at("2026-01-01T10:00:00Z")]

    def clock() -> datetime:
        if len(times) == 1:
            stop.set()  # the tick at 10:00 is the last one
        return times.pop(0)

    real_states = store.get_schedule_states
    failures = [RuntimeError("database is locked")]

    async def flaky_states() -> dict[str, ScheduleState]:
        if failures:
            raise failures.pop()
        return await real_states()

    monkeypatch.setattr(store, "get_schedule_states", flaky_states)
    spec = ScheduleSpec.model_validate({"id": "hb", "command": "poll", "every": "5m"})
    s = Scheduler(store, [PluginSchedule("echo", spec)], clock=clock, tick_seconds=0)
    await asyncio.wait_for(s.run_forever(stop), timeout=5)
    assert times == []
    assert (await store.list_jobs(JobFilter())).total == 1


async def test_an_unavailable_store_is_one_log_line_per_tick_and_the_scheduler_goes_on(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    real_states = store.get_schedule_states
    failures = [StoreUnavailable("cannot reach PostgreSQL: the server is restarting")] * 2

    async def unavailable_states() -> dict[str, ScheduleState]:
        if failures:
            raise failures.pop()
        stop.set()
        return await real_states()

    monkeypatch.setattr(store, "get_schedule_states", unavailable_states)
    spec = ScheduleSpec.model_validate({"id": "hb", "command": "poll", "every": "5m"})
    s = Scheduler(store, [PluginSchedule("echo", spec)], tick_seconds=0)
    with caplog.at_level(logging.WARNING, logger="queue_service.scheduler"):
        await asyncio.wait_for(s.run_forever(stop), timeout=5)
    assert "echo:hb" in await real_states(), "the tick after the outage settled the schedule"
    said = [r for r in caplog.records if r.name == "queue_service.scheduler"]
    assert [r.getMessage() for r in said] == [
        "scheduler tick failed; will retry: cannot reach PostgreSQL: the server is restarting"
    ] * 2
    assert all(r.exc_info is None for r in said), "no traceback for an unavailable store"


async def test_run_forever_without_schedules_waits_for_stop(store: Store) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(Scheduler(store, []).run_forever(stop))
    for _ in range(20):  # event-loop turns, not wall time: nothing else is waiting to run
        await asyncio.sleep(0)
    assert not task.done(), "run_forever returned before stop was set"
    stop.set()
    await asyncio.wait_for(task, timeout=5)


def test_from_config_keeps_only_the_given_plugins(db_path: Path) -> None:
    store = SQLiteStore(db_path)  # never opened: building a scheduler does no I/O
    config = parse_config(
        {
            "plugins": {
                "echo": {
                    "max_attempts": 7,
                    "schedules": [{"id": "hb", "command": "poll", "every": "5m"}],
                },
                "gone": {"schedules": [{"id": "hb", "command": "poll", "every": "5m"}]},
            }
        }
    )
    loaded = Scheduler.from_config(store, config, plugins={"echo"})
    assert [(s.key, s.max_attempts) for s in loaded.schedules] == [("echo:hb", 7)]
    assert len(Scheduler.from_config(store, config).schedules) == 2


def test_schedule_keys_must_be_unique(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    spec = ScheduleSpec.model_validate({"id": "hb", "command": "poll", "every": "5m"})
    with pytest.raises(ValueError, match="unique"):
        Scheduler(store, [PluginSchedule("echo", spec)] * 2)


def test_check_schedules_names_unknown_commands_and_bad_payloads(tmp_path: Path) -> None:
    from queue_service.config import parse_config
    from queue_service.plugins import load
    from queue_service.scheduler import check_schedules

    plugins_dir = Path(__file__).parent / "plugins"
    config = parse_config(
        {
            "service": {"plugin_dirs": [str(plugins_dir)]},
            "plugins": {
                "strict": {
                    "schedules": [
                        {"id": "typo", "command": "pol", "every": "1m"},
                        {"id": "bad", "command": "lookup", "every": "1m", "payload": {}},
                    ]
                },
                "ok": {"schedules": [{"id": "fine", "command": "poll", "every": "1m"}]},
                "not-installed": {"schedules": [{"id": "x", "command": "poll", "every": "1m"}]},
            },
        }
    )
    problems = check_schedules(config, load([plugins_dir]))
    assert len(problems) == 2, problems
    assert problems[0].startswith("plugins.strict.schedules[0].command: plugin 'strict' has no")
    assert problems[1].startswith("plugins.strict.schedules[1].payload: does not match")

"""The PostgreSQL store's schedule state: each slot fires once, whichever processes on
whichever hosts run the scheduler.

A fire is one transaction: the slot's row in schedule_fires (its primary key refuses a
second fire of the slot: INSERT ... ON CONFLICT DO NOTHING), the job, and the schedule's
state. Fires of one schedule take turns under a transaction-level advisory lock, so that
skip_if_running sees the job of a fire that committed a moment earlier in another process.
"""

from __future__ import annotations

from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.jobs import insert_jobs
from queue_service.store.postgresql.sql import q
from queue_service.store.types import FireOutcome, FireResult, NewJob, ScheduleState
from queue_service.timeutil import now_ts


async def _schedule_states(conn: Conn) -> dict[str, ScheduleState]:
    cur = await conn.execute(q("get_schedule_states"))
    return {
        key: ScheduleState(next_run_at=next_run_at, last_fired_at=fired_at, last_job_id=job_id)
        for key, next_run_at, fired_at, job_id in await cur.fetchall()
    }


async def _fire_slot(
    conn: Conn,
    schedule_key: str,
    slot: str,
    next_run_at: str,
    job: NewJob,
    skip_if_running: bool,
) -> FireResult:
    now = now_ts()
    keys = {"schedule_key": schedule_key, "slot": slot, "now": now, "next_run_at": next_run_at}
    not_fired = {**keys, "fired_at": None, "job_id": None}
    await conn.execute(q("schedule_lock"), keys)
    cur = await conn.execute(q("claim_schedule_slot"), keys)
    if await cur.fetchone() is None:
        await conn.execute(q("advance_schedule"), not_fired)
        return FireResult(FireOutcome.ALREADY_FIRED)
    if skip_if_running:
        cur = await conn.execute(q("schedule_has_active_job"), keys)
        if await cur.fetchone() is not None:
            await conn.execute(q("advance_schedule"), not_fired)
            return FireResult(FireOutcome.SKIPPED_RUNNING)
    (result,) = await insert_jobs(conn, [job])
    fired = {**keys, "fired_at": now, "job_id": result.job_id}
    await conn.execute(q("record_slot_job"), fired)
    await conn.execute(q("advance_schedule"), fired)
    return FireResult(FireOutcome.ENQUEUED, result.job_id)


async def _set_next_run(conn: Conn, schedule_key: str, next_run_at: str) -> None:
    await conn.execute(
        q("set_schedule_next_run"),
        {"schedule_key": schedule_key, "next_run_at": next_run_at, "now": now_ts()},
    )


class SchedulesMixin(Database):
    """The scheduler's methods of the Store protocol (see the module docstring)."""

    async def get_schedule_states(self) -> dict[str, ScheduleState]:
        return await self._read_statement(_schedule_states)

    async def fire_schedule_slot(
        self,
        schedule_key: str,
        slot: str,
        next_run_at: str,
        job: NewJob,
        skip_if_running: bool,
    ) -> FireResult:
        return await self._tx(_fire_slot, schedule_key, slot, next_run_at, job, skip_if_running)

    async def set_schedule_next_run(self, schedule_key: str, next_run_at: str) -> None:
        await self._tx(_set_next_run, schedule_key, next_run_at)

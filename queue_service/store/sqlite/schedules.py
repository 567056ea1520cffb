"""Transaction bodies for the scheduler's persisted state."""

from __future__ import annotations

import sqlite3

from queue_service.store.sqlite.jobs import insert_jobs
from queue_service.store.sqlite.sql import q
from queue_service.store.types import FireOutcome, FireResult, NewJob, ScheduleState
from queue_service.timeutil import now_ts


def schedule_states(conn: sqlite3.Connection) -> dict[str, ScheduleState]:
    return {
        row["schedule_key"]: ScheduleState(
            next_run_at=row["next_run_at"],
            last_fired_at=row["last_fired_at"],
            last_job_id=row["last_job_id"],
        )
        for row in conn.execute(q("get_schedule_states"))
    }


def fire_slot(
    conn: sqlite3.Connection,
    schedule_key: str,
    slot: str,
    next_run_at: str,
    job: NewJob,
    skip_if_running: bool,
) -> FireResult:
    now = now_ts()
    keys = {"schedule_key": schedule_key, "slot": slot, "now": now, "next_run_at": next_run_at}
    if conn.execute(q("claim_schedule_slot"), keys).fetchone() is None:
        conn.execute(q("advance_schedule"), {**keys, "fired_at": None, "job_id": None})
        return FireResult(FireOutcome.ALREADY_FIRED)
    if skip_if_running and conn.execute(q("schedule_has_active_job"), keys).fetchone():
        conn.execute(q("advance_schedule"), {**keys, "fired_at": None, "job_id": None})
        return FireResult(FireOutcome.SKIPPED_RUNNING)
    (result,) = insert_jobs(conn, [job])
    conn.execute(q("record_slot_job"), {**keys, "job_id": result.job_id})
    conn.execute(q("advance_schedule"), {**keys, "fired_at": now, "job_id": result.job_id})
    return FireResult(FireOutcome.ENQUEUED, result.job_id)


def set_next_run(conn: sqlite3.Connection, schedule_key: str, next_run_at: str) -> None:
    conn.execute(
        q("set_schedule_next_run"),
        {"schedule_key": schedule_key, "next_run_at": next_run_at, "now": now_ts()},
    )

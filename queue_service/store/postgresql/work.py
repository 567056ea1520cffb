"""The PostgreSQL store's worker side: claims (FOR UPDATE SKIP LOCKED), heartbeats,
finish_attempt, lease recovery, release, plugin state, cancel_queued, and the wake-ups a
worker waits for (LISTEN/NOTIFY, wakeups.py).

Every protocol method is one statement over arrays (work.sql), so a heartbeat of 50 leases
or a claim of 100 jobs costs one round trip inside its transaction.

finish_attempt is committed in groups: calls that arrive while a group is being committed
wait for the next one, which carries them all in one statement and one COMMIT (a worker
that finishes many short jobs at once pays for one transaction, not one each). Each caller
still gets its own outcome: the statement leaves out an attempt whose lease was lost
(None), and when a group fails for a reason of its own rows each of its finishes runs
again alone. A finish with state updates runs alone, its merge in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from queue_service.statuses import Status
from queue_service.store.errors import StoreUnavailable
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import encode_json, free_text, job_rows
from queue_service.store.postgresql.sql import q
from queue_service.store.postgresql.wakeups import WorkListener
from queue_service.store.types import AttemptEnd, Job, RecoveredJob
from queue_service.timeutil import format_ts, now_ts, utcnow

#: The most finishes one group commits (bounds the statement and the time locks are held).
MAX_FINISH_GROUP = 500


#: What names an attempt's end: (job_id, attempt, owner).
Key = tuple[str, int, str]


@dataclass(slots=True)
class _Finish:
    """One finish_attempt call (waiting for its group, when `future` is set)."""

    job_id: str
    attempt: int
    owner: str
    end: AttemptEnd
    future: asyncio.Future[Status | None] | None = None

    @property
    def key(self) -> Key:
        return (self.job_id, self.attempt, self.owner)


def _finish_params(finishes: Sequence[_Finish], now: str) -> dict[str, Any]:
    """The ends of finish_attempts as one JSON array, in job id order (so that a heartbeat
    or release of the same jobs locks them in the same order)."""
    ends = [
        {
            "job_id": f.job_id,
            "attempt": f.attempt,
            "owner": f.owner,
            "status": f.end.status.value,
            "result": encode_json(f.end.result),
            "events": encode_json(f.end.events),
            "logs": encode_json(f.end.logs),
            "error": free_text(f.end.error),
            "run_after": f.end.run_after,
            "attempt_status": f.end.attempt_status.value,
            "exit_code": f.end.exit_code,
            "stderr_tail": free_text(f.end.stderr_tail),
        }
        for f in sorted(finishes, key=lambda f: f.job_id)
    ]
    return {"ends": orjson.dumps(ends).decode(), "now": now}


async def _finish(conn: Conn, finishes: Sequence[_Finish], plugin: str | None) -> dict[Key, Status]:
    """Finish a group of attempts; {key: new status} for those whose lease was held.
    `plugin` is given for a single finish with state updates, merged in this transaction."""
    now = now_ts()
    cur = await conn.execute(q("finish_attempts"), _finish_params(finishes, now))
    done = {
        (job_id, attempt, owner): Status(status)
        for job_id, attempt, owner, status in await cur.fetchall()
    }
    if plugin is not None and done:
        (only,) = finishes
        await conn.execute(
            q("merge_plugin_state"),
            {"plugin": plugin, "updates": json.dumps(only.end.state_updates), "now": now},
        )
    return done


async def _claim(
    conn: Conn,
    plugin: str,
    limit: int,
    owner: str,
    lease_expires_at: str,
    concurrency: int | None,
    now: str,
) -> list[Job]:
    if concurrency is not None:
        # Two processes must not both read "2 running of 3" and claim 1 each beyond the cap:
        # claims of a capped plugin take turns, and each counts after the last one committed.
        await conn.execute(q("plugin_claim_lock"), {"plugin": plugin})
        cur = await conn.execute(q("running_count"), {"plugin": plugin})
        row = await cur.fetchone()
        assert row is not None
        limit = min(limit, concurrency - int(row[0]))
    if limit <= 0:
        return []
    params = {
        "plugin": plugin,
        "limit": limit,
        "owner": owner,
        "lease_expires_at": lease_expires_at,
        "now": now,
    }
    async with conn.cursor(row_factory=job_rows) as cur:
        await cur.execute(q("claim_jobs"), params)
        return await cur.fetchall()


def _held_params(held: Sequence[tuple[str, int]]) -> dict[str, Any]:
    # Sorted, so that two statements over the same jobs lock them in the same order.
    pairs = sorted(held)
    return {"job_ids": [p[0] for p in pairs], "attempts": [p[1] for p in pairs]}


async def _heartbeat(
    conn: Conn, held: Sequence[tuple[str, int]], owner: str, lease_expires_at: str
) -> dict[str, bool]:
    params = {**_held_params(held), "owner": owner, "lease_expires_at": lease_expires_at}
    cur = await conn.execute(q("heartbeat"), params)
    return {job_id: bool(cancel) for job_id, cancel in await cur.fetchall()}


async def _recover(conn: Conn, now: str, limit: int) -> list[RecoveredJob]:
    cur = await conn.execute(q("recover_expired"), {"now": now, "limit": limit})
    return [
        RecoveredJob(job_id, Status(status), attempt)
        for job_id, status, attempt in await cur.fetchall()
    ]


async def _release(conn: Conn, held: Sequence[tuple[str, int]], owner: str) -> list[str]:
    params = {**_held_params(held), "owner": owner, "now": now_ts()}
    cur = await conn.execute(q("release_jobs"), params)
    released = {row[0] for row in await cur.fetchall()}
    return [job_id for job_id, _ in held if job_id in released]


async def _plugin_state(conn: Conn, plugin: str) -> dict[str, Any]:
    cur = await conn.execute(q("get_plugin_state"), {"plugin": plugin})
    row = await cur.fetchone()
    state: dict[str, Any] = json.loads(row[0]) if row else {}
    return state


async def _cancel_queued(
    conn: Conn, plugin: str, command: str | None, reason: str, limit: int
) -> list[str]:
    params = {
        "plugin": plugin,
        "command": command,
        "reason": free_text(reason),
        "limit": limit,
        "now": now_ts(),
    }
    cur = await conn.execute(q("cancel_queued_batch"), params)
    return [row[0] for row in await cur.fetchall()]


def _lease_end(now: datetime | None, lease_seconds: float) -> str:
    return format_ts((now or utcnow()) + timedelta(seconds=lease_seconds))


class WorkMixin(Database):
    """The worker's methods of the Store protocol (see the module docstring)."""

    #: finish_attempt calls waiting for the next group, and the task committing groups.
    _finish_queue: list[_Finish] | None = None
    _finisher: asyncio.Task[None] | None = None
    #: The LISTEN connection's task, started by the first wait_for_work.
    _listener: WorkListener | None = None

    async def claim_jobs(
        self,
        plugin: str,
        *,
        limit: int,
        owner: str,
        lease_seconds: float,
        concurrency: int | None = None,
        now: datetime | None = None,
    ) -> list[Job]:
        moment = now or utcnow()
        lease = _lease_end(moment, lease_seconds)
        return await self._tx(_claim, plugin, limit, owner, lease, concurrency, format_ts(moment))

    async def heartbeat(
        self,
        held: Sequence[tuple[str, int]],
        *,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> dict[str, bool]:
        if not held:
            return {}
        # Extending a lease twice is harmless: one statement in autocommit (one round trip).
        return await self._write_statement(
            _heartbeat, list(held), owner, _lease_end(now, lease_seconds)
        )

    async def finish_attempt(
        self, job_id: str, *, plugin: str, attempt: int, owner: str, end: AttemptEnd
    ) -> Status | None:
        finish = _Finish(job_id, attempt, owner, end)
        if end.state_updates:
            done = await self._tx(_finish, [finish], plugin)
            return done.get(finish.key)
        future: asyncio.Future[Status | None] = asyncio.get_running_loop().create_future()
        finish.future = future
        if self._finish_queue is None:
            self._finish_queue = []
        self._finish_queue.append(finish)
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._commit_finishes())
        # A caller that gives up cancels only its own future: the finish stays in its group
        # and is committed with the others (_settle passes over a future already done).
        return await future

    async def _commit_finishes(self) -> None:
        """Commit the waiting finishes in groups until none waits (one group at a time)."""
        queue = self._finish_queue
        assert queue is not None
        while queue:
            group: list[_Finish] = []
            later: list[_Finish] = []
            keys: set[Key] = set()
            for finish in queue:
                # The same attempt twice (a repeated call) goes in the next group, so that
                # each call learns whether its own write happened.
                if finish.key in keys or len(group) >= MAX_FINISH_GROUP:
                    later.append(finish)
                else:
                    keys.add(finish.key)
                    group.append(finish)
            queue[:] = later
            await self._commit_group(group)

    async def _commit_group(self, group: list[_Finish]) -> None:
        try:
            done = await self._tx(_finish, group, None)
        except StoreUnavailable as exc:
            # The server or the connection failed, not a row: every finish shares the fault.
            for finish in group:
                _settle(finish, exc)
            return
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], exc)
                return
            # Something about one row: each finish alone, so that only its own call fails.
            for finish in group:
                try:
                    alone = await self._tx(_finish, [finish], None)
                except Exception as own:
                    _settle(finish, own)
                else:
                    _settle(finish, alone.get(finish.key))
            return
        for finish in group:
            _settle(finish, done.get(finish.key))

    async def recover_expired_leases(
        self, *, now: datetime | None = None, limit: int = 500
    ) -> list[RecoveredJob]:
        return await self._tx(_recover, format_ts(now or utcnow()), limit)

    async def release_jobs(self, held: Sequence[tuple[str, int]], *, owner: str) -> list[str]:
        if not held:
            return []
        return await self._tx(_release, list(held), owner)

    async def get_plugin_state(self, plugin: str) -> dict[str, Any]:
        return await self._read_statement(_plugin_state, plugin)

    async def cancel_queued(
        self,
        *,
        plugin: str,
        command: str | None = None,
        reason: str = "canceled by request",
        limit: int = 500,
    ) -> list[str]:
        return await self._tx(_cancel_queued, plugin, command, reason, limit)

    # -- wake-ups ----------------------------------------------------------

    async def wait_for_work(self) -> None:
        if self._listener is None:
            self._listener = WorkListener(self._connect)
        await self._listener.wait()

    async def close(self) -> None:
        finisher, self._finisher = self._finisher, None
        if finisher is not None:
            # Finishes already handed over are committed (or fail) before the pool goes.
            with contextlib.suppress(Exception):
                await finisher
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        await super().close()


def _settle(finish: _Finish, outcome: Status | BaseException | None) -> None:
    future = finish.future
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

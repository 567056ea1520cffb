"""Wake-ups across hosts: LISTEN on a connection of its own, per process.

The schema's triggers NOTIFY the channel `queue_service_work_<oid of jobs>` when a job
becomes claimable (migrations/postgresql/0001_initial.sql, "Work wake-ups"). A process that
waits for work (a worker) keeps one extra connection LISTENing there; each notification
sets its WakeSignal, so an idle worker claims a job enqueued on any host at once.

The connection outlives server restarts: when it breaks, the listener reconnects with a
growing pause (at most RECONNECT_MAX_S) and the worker falls back to its poll interval
meanwhile; once listening again it wakes the worker once, since jobs may have arrived while
nobody listened. A connection that is silent for HEALTH_CHECK_S is checked with a query, so
a peer that vanished without closing it (a network cut) is noticed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from queue_service.store.wakeups import WakeSignal

log = logging.getLogger("queue_service.store")

#: Seconds of silence after which the LISTEN connection is checked with a query.
HEALTH_CHECK_S = 30.0
#: The first and the longest pause before reconnecting the LISTEN connection.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 5.0

#: The channel name of this schema: the jobs table's oid tells schemas apart.
_CHANNEL = "SELECT 'queue_service_work_' || 'jobs'::regclass::oid::text"


class WorkListener:
    """One LISTEN connection and the WakeSignal it sets; started by the first `wait`."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]) -> None:
        self._connect = connect
        self.signal = WakeSignal()
        self._task: asyncio.Task[None] | None = None
        #: True while notifications can arrive, and the server process of that connection
        #: (for diagnostics and tests).
        self.listening = False
        self.backend_pid: int | None = None

    async def wait(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="queue-service-listen")
        await self.signal.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        # Cancelled until it ends: on Python 3.11 a cancellation that lands as an awaited
        # wait completes can be lost (asyncio.wait_for), and one lost here would hang.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _run(self) -> None:
        pause = RECONNECT_FIRST_S
        outage_logged = False
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                cur = await conn.execute(_CHANNEL)
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(row[0])))
                self.backend_pid = conn.info.backend_pid
                self.listening = True
                if outage_logged:
                    log.warning("listening for work again: wake-ups from other hosts are back")
                outage_logged = False
                pause = RECONNECT_FIRST_S
                self.signal.set()  # what arrived while nobody listened
                while True:
                    async for _ in conn.notifies(timeout=HEALTH_CHECK_S):
                        self.signal.set()
                    await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not outage_logged:
                    log.warning(
                        "not listening for work (%s); workers poll until PostgreSQL answers again",
                        str(exc).strip() or type(exc).__name__,
                    )
                    outage_logged = True
            finally:
                self.listening = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX_S)

"""The wake-up a worker waits for between claim rounds (`Store.wait_for_work`), for every
backend: each store sets it when work may have arrived (its own enqueues; PostgreSQL also
every process's, through LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio


class WakeSignal:
    """A wake-up kept until it is waited for: `set()` while nobody waits makes the next
    `wait()` return at once, so a job that arrives between a claim round and the wait that
    follows it is not left for the poll interval."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Return once set, and clear it. A wait cancelled before that consumes nothing."""
        await self._event.wait()
        self._event.clear()

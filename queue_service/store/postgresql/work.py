"""The PostgreSQL store's claims (FOR UPDATE SKIP LOCKED), heartbeats, finish_attempt, lease
recovery, release, plugin state, cancel_queued, LISTEN/NOTIFY wake-ups.

Owner: branch h-pgwork. The protocol methods of this area are `async def` methods of
`WorkMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class WorkMixin(Database):
    """Not written yet (h-pgwork)."""

"""The PostgreSQL store's schedule state; each slot fires once across hosts.

Owner: branch h-pgwork. The protocol methods of this area are `async def` methods of
`SchedulesMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class SchedulesMixin(Database):
    """Not written yet (h-pgwork)."""

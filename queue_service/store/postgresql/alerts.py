"""The PostgreSQL store's the alert outbox: events, cursors, deliveries.

Owner: branch h-pgalerts. The protocol methods of this area are `async def` methods of
`AlertsMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class AlertsMixin(Database):
    """Not written yet (h-pgalerts)."""

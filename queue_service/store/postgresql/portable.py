"""The PostgreSQL store's the portable form (export/import for `queue-service copy`).

Owner: branch h-pgalerts. The protocol methods of this area are `async def` methods of
`PortableMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class PortableMixin(Database):
    """Not written yet (h-pgalerts)."""

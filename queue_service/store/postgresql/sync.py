"""The PostgreSQL store's mirrored external runs (Databricks sync): upserts, sync state, one
sync per workspace at a time.

Owner: branch h-pgwork. The protocol methods of this area are `async def` methods of
`SyncMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class SyncMixin(Database):
    """Not written yet (h-pgwork)."""

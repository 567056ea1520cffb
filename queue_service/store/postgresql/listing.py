"""The PostgreSQL store's list_jobs (keyset, exact total), the counts (job_counts,
count_jobs_by_status/plugin, queue_depth, oldest_*) and the fold of the count deltas into
the rollups.

Owner: branch h-pglist. The protocol methods of this area are `async def` methods of
`ListingMixin`, each running its SQL through `self._tx(fn, *args)` / `self._read(fn, *args)`."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class ListingMixin(Database):
    """Not written yet (h-pglist)."""

"""The PostgreSQL store's jobs: enqueue (with dedupe), get_job, get_attempts, set_status,
cancel_job, prune_finished.

Owner: branch h-pgcore."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class JobsMixin(Database):
    """Not written yet (h-pgcore)."""

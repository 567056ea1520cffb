"""The PostgreSQL store's tokens. Only hashes are stored; the secret never reaches here.

Owner: branch h-pgcore."""

from __future__ import annotations

from queue_service.store.postgresql.connection import Database


class TokensMixin(Database):
    """Not written yet (h-pgcore)."""

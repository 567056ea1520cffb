"""The PostgreSQL backend: several hosts sharing one queue (`--db postgresql://...`)."""

from queue_service.store.postgresql.store import PostgreSQLStore

__all__ = ["PostgreSQLStore"]

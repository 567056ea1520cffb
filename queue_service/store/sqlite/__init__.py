"""The SQLite backend: the embedded default, one file in WAL mode."""

from queue_service.store.sqlite.errors import translate_error
from queue_service.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "translate_error"]

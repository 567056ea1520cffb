"""Loads the named SQL blocks (`-- name: NAME`) from the store's .sql files, once."""

from __future__ import annotations

from functools import cache

from queue_service.store.named_sql import load_queries, parse_named_queries

__all__ = ["QUERY_FILES", "parse_named_queries", "q", "queries"]

#: The files of named queries, one per concern.
QUERY_FILES = ("queries.sql", "work.sql", "sync.sql", "schedules.sql", "alerts.sql")


@cache
def queries() -> dict[str, str]:
    """Every named query of the package's query files. A name used twice is an error."""
    return load_queries("queue_service.store.sqlite", QUERY_FILES)


def q(name: str) -> str:
    """The SQL text of a named query. KeyError names the missing query."""
    return queries()[name]

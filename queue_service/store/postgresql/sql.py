"""The named SQL blocks (`-- name: NAME`) of the PostgreSQL store's .sql files, loaded once.

Every `*.sql` file of this package is read (one per concern: jobs.sql, listing.sql, ...);
a name defined twice is an error. Parameters are psycopg's `%(name)s` placeholders, bound
by the server; a literal `%` is written `%%`."""

from __future__ import annotations

from functools import cache

from queue_service.store.named_sql import load_queries

__all__ = ["q", "queries"]


@cache
def queries() -> dict[str, str]:
    return load_queries("queue_service.store.postgresql")


def q(name: str) -> str:
    """The SQL text of a named query. KeyError names the missing query."""
    return queries()[name]

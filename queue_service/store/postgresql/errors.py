"""Mapping psycopg errors to the store's vocabulary, with messages an operator can act on."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout

from queue_service.store.errors import (
    Conflict,
    NotADatabase,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)

#: What API callers are told of a failure whose message names the server (StoreUnavailable's
#: `public`): the service's log has the whole message.
_UNREACHABLE = "the database server cannot be reached right now; try again shortly"
_REFUSED = "the database server refused the service's connection; the server log has why"

#: SQLSTATEs after which the whole transaction may simply run again.
_RETRYABLE = (pg.SerializationFailure, pg.DeadlockDetected)


def is_retryable(exc: BaseException) -> bool:
    """A transaction that failed this way wrote nothing and may run again as it was."""
    return isinstance(exc, _RETRYABLE)


def is_connection_lost(exc: BaseException, conn: psycopg.AsyncConnection[object] | None) -> bool:
    """The connection broke (server restart, pg_terminate_backend, network): the server
    rolled back whatever was not committed."""
    if isinstance(exc, pg.AdminShutdown | pg.CrashShutdown | pg.CannotConnectNow):
        return True
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, pg.QueryCanceled):
        return False
    # Without a connection the pool raised (PoolTimeout): it has already waited its
    # timeout for one, so running the body again would only multiply the wait.
    return conn is not None and (conn.broken or conn.closed)


def translate_error(exc: BaseException, where: str) -> BaseException:
    """The store error for a psycopg (or pool) error; `where` names the database (no
    password) for messages about reaching it. Anything else is returned unchanged."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(
            f"no connection to PostgreSQL ({where}) became free in time: the server is "
            "unreachable or every pooled connection is busy; try again shortly",
            public=_UNREACHABLE,
        )
    if not isinstance(exc, psycopg.Error):
        return exc
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, pg.QueryCanceled):
        return QueryTimeout("the query took too long and was stopped; narrow the filters")
    if isinstance(exc, pg.UniqueViolation):
        return Conflict(f"a uniqueness rule refused the write: {text}")
    if isinstance(exc, pg.ReadOnlySqlTransaction):
        return StoreUnavailable(
            "the database is read-only (a standby server, or a read-only transaction "
            "default); writes are refused until it is writable"
        )
    if isinstance(exc, pg.DiskFull | pg.InsufficientResources | pg.OutOfMemory):
        return StoreUnavailable(
            f"the PostgreSQL server cannot take the write: {text}",
            public="the database server cannot take the write (out of disk or memory)",
        )
    if isinstance(exc, pg.TooManyConnections):
        return StoreUnavailable(
            f"PostgreSQL ({where}) refuses more connections: {text}; lower the pool sizes "
            "of the queue-service processes or raise max_connections",
            public=_UNREACHABLE,
        )
    if isinstance(exc, pg.InvalidCatalogName):
        return StoreUnavailable(
            f"cannot open {where}: {text}; create the database first", public=_REFUSED
        )
    if isinstance(exc, pg.InvalidAuthorizationSpecification | pg.InvalidPassword):
        return StoreUnavailable(f"PostgreSQL ({where}) refused the login: {text}", public=_REFUSED)
    if isinstance(exc, pg.InsufficientPrivilege):
        return StoreUnavailable(
            f"PostgreSQL ({where}) refused the operation: {text}", public=_REFUSED
        )
    if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected):
        return StoreUnavailable("the database is busy (concurrent writes); try again shortly")
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"cannot reach PostgreSQL ({where}): {text}", public=_UNREACHABLE)
    if isinstance(exc, pg.UndefinedTable | pg.UndefinedFunction | pg.UndefinedColumn):
        return NotADatabase(
            f"{where} does not hold a current queue-service schema ({text}); "
            "run `queue-service migrate --db URL`"
        )
    return StoreError(text)

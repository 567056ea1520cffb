"""Transaction bodies for tokens. Only hashes are stored; the secret never reaches here."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from queue_service.store.errors import Conflict
from queue_service.store.sqlite.rows import token_from_row
from queue_service.store.sqlite.sql import q
from queue_service.store.types import Token
from queue_service.timeutil import now_ts


def _params(
    name: str, token_hash: str, scopes: Sequence[str], now: str, expires_at: str | None
) -> dict[str, object]:
    return {
        "name": name,
        "token_hash": token_hash,
        "scopes": json.dumps(list(scopes)),
        "created_at": now,
        "expires_at": expires_at,
    }


def create(
    conn: sqlite3.Connection,
    name: str,
    token_hash: str,
    scopes: Sequence[str],
    expires_at: str | None,
) -> Token:
    try:
        conn.execute(
            q("insert_token"), _params(name, token_hash, scopes, now_ts(), expires_at)
        ).fetchall()
    except sqlite3.IntegrityError:
        raise Conflict(f"a live token named {name!r} already exists") from None
    found = by_hash(conn, token_hash)
    assert found is not None
    return found[0]


def create_first(
    conn: sqlite3.Connection, name: str, token_hash: str, scopes: Sequence[str]
) -> Token | None:
    """A token only on a database that has never had one: revoked and expired rows stay, so
    revoking every token locks the API for good."""
    if conn.execute(q("count_all_tokens")).fetchone()[0]:
        return None
    # No row at all, so the name cannot be taken.
    return create(conn, name, token_hash, scopes, None)


def by_hash(conn: sqlite3.Connection, token_hash: str) -> tuple[Token, str] | None:
    row = conn.execute(q("token_by_hash"), {"token_hash": token_hash}).fetchone()
    return None if row is None else (token_from_row(row), row["token_hash"])


def list_all(conn: sqlite3.Connection) -> list[Token]:
    return [token_from_row(r) for r in conn.execute(q("list_tokens"))]


def count_live(conn: sqlite3.Connection) -> int:
    return int(conn.execute(q("count_live_tokens"), {"now": now_ts()}).fetchone()[0])


def revoke(conn: sqlite3.Connection, name: str) -> bool:
    return bool(conn.execute(q("revoke_token"), {"name": name, "now": now_ts()}).fetchall())


def touch(conn: sqlite3.Connection, token_id: int) -> None:
    conn.execute(q("touch_token"), {"token_id": token_id, "now": now_ts()})

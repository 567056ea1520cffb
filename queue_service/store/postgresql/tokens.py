"""The PostgreSQL store's tokens. Only hashes are stored; the secret never reaches here.

Owner: branch h-pgcore."""

from __future__ import annotations

import json
from collections.abc import Sequence

from psycopg import errors as pg
from psycopg.rows import dict_row

from queue_service.store.errors import Conflict
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import NUL, refuse_nul, token_from_row
from queue_service.store.postgresql.sql import q
from queue_service.store.types import Token
from queue_service.timeutil import now_ts


async def create(
    conn: Conn, name: str, token_hash: str, scopes: Sequence[str], expires_at: str | None
) -> Token:
    refuse_nul(name=name, token_hash=token_hash, expires_at=expires_at)
    cur = conn.cursor(row_factory=dict_row)
    try:
        await cur.execute(
            q("insert_token"),
            {
                "name": name,
                "token_hash": token_hash,
                "scopes": json.dumps(list(scopes)),
                "created_at": now_ts(),
                "expires_at": expires_at,
            },
        )
    except pg.UniqueViolation:
        raise Conflict(f"a live token named {name!r} already exists") from None
    row = await cur.fetchone()
    assert row is not None
    return token_from_row(row)


async def create_first(
    conn: Conn, name: str, token_hash: str, scopes: Sequence[str]
) -> Token | None:
    """A token only on a database that has never had one: revoked and expired rows stay, so
    revoking every token locks the API for good. Two processes starting on a fresh
    database take the lock in turn; the second then sees the first's token."""
    await conn.execute(q("lock_tokens"))
    # A statement after the lock: its snapshot includes a token committed meanwhile.
    cur = await conn.execute(q("any_token"))
    row = await cur.fetchone()
    if row is not None and row[0]:
        return None
    return await create(conn, name, token_hash, scopes, None)


async def by_hash(conn: Conn, token_hash: str) -> tuple[Token, str] | None:
    if NUL in token_hash:
        return None
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("token_by_hash"), {"token_hash": token_hash})
    row = await cur.fetchone()
    return None if row is None else (token_from_row(row), row["token_hash"])


async def list_all(conn: Conn) -> list[Token]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("list_tokens"))
    return [token_from_row(row) for row in await cur.fetchall()]


async def count_live(conn: Conn) -> int:
    cur = await conn.execute(q("count_live_tokens"), {"now": now_ts()})
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def revoke(conn: Conn, name: str) -> bool:
    if NUL in name:
        return False
    cur = await conn.execute(q("revoke_token"), {"name": name, "now": now_ts()})
    return await cur.fetchone() is not None


async def touch(conn: Conn, token_id: int) -> None:
    await conn.execute(q("touch_token"), {"token_id": token_id, "now": now_ts()})


class TokensMixin(Database):
    """Bearer tokens: hashes, scopes, expiry, revocation."""

    async def create_token(
        self, name: str, token_hash: str, scopes: Sequence[str], expires_at: str | None
    ) -> Token:
        return await self._tx(create, name, token_hash, scopes, expires_at)

    async def create_first_token(
        self, name: str, token_hash: str, scopes: Sequence[str]
    ) -> Token | None:
        return await self._tx(create_first, name, token_hash, scopes)

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        return await self._read_statement(by_hash, token_hash)

    async def list_tokens(self) -> list[Token]:
        return await self._read_statement(list_all)

    async def count_live_tokens(self) -> int:
        return await self._read_statement(count_live)

    async def revoke_token(self, name: str) -> bool:
        return await self._tx(revoke, name)

    async def touch_token(self, token_id: int) -> None:
        await self._write_statement(touch, token_id)

"""The portable form (store/portable.py) of a PostgreSQL store: counts, export and import
for `queue-service copy`.

Export reads keyset pages in each table's insertion order (jobs by seq, attempts by id).
Import streams a batch with COPY into a temporary table, then inserts it into the table in
the order given (so jobs get new seq values in the source's order), skipping rows the table
already holds, in one transaction: the counts behind totals follow through the jobs
triggers, as for any insert. Jobs imported as failed record no alert event (they are
history, not news): the import sets `queue_service.importing` for its transaction, and the
alert trigger stands aside. PostgreSQL text cannot hold NUL, which SQLite's may: free text
(errors, stderr tails) gets U+FFFD in its place, and a key holding one stops the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from queue_service.store.errors import StoreError
from queue_service.store.portable import (
    PORTABLE_TABLES,
    CopyError,
    PortableTable,
    Row,
    cursor_values,
    export_page,
    portable_table,
)
from queue_service.store.postgresql.connection import Conn, Database
from queue_service.store.postgresql.rows import NUL, free_text

#: Where a batch waits between COPY and the insert; dropped when its transaction ends.
_STAGING = sql.Identifier("portable_import")

#: The free-text columns of each table: a NUL in them (SQLite text may hold one, PostgreSQL's
#: cannot) becomes U+FFFD, as the store does with every free text it is given. Any other
#: value holding a NUL (a key, a name, an id) is refused: changing it would change what it
#: names.
_FREE_TEXT = {
    "jobs": frozenset({"last_error"}),
    "job_attempts": frozenset({"error", "stderr_tail"}),
    "sync_state": frozenset({"last_error"}),
}


def _columns(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


async def _counts(conn: Conn, budget_ms: int) -> dict[str, int]:
    # Whole tables are counted (once at each end of a copy): the write budget, not a
    # request's, or a large store could not be copied at all.
    await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(budget_ms))
    query = sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(table.name))
            for table in PORTABLE_TABLES
        )
    )
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return {table.name: int(n) for table, n in zip(PORTABLE_TABLES, row, strict=True)}


async def _export(conn: Conn, name: str, after: Any, limit: int) -> tuple[list[Row], Any]:
    table = portable_table(name)
    key = _columns(table.order)
    where: sql.Composable = sql.SQL("")
    params: tuple[Any, ...] = ()
    if after is not None:
        params = cursor_values(table, after)
        marks = sql.SQL(", ").join(sql.Placeholder() for _ in params)
        where = sql.SQL("WHERE ({}) > ({})").format(key, marks)
    query = sql.SQL("SELECT {}, {} FROM {} {} ORDER BY {} LIMIT %s").format(
        _columns(table.columns), key, sql.Identifier(name), where, key
    )
    cur = await conn.execute(query, (*params, limit))
    return export_page(table, await cur.fetchall(), limit)


def _insert_sql(table: PortableTable) -> sql.Composed:
    """The staged batch into `table`, in the order given, without the rows it holds."""
    columns = _columns(table.columns)
    target = sql.Identifier(table.name)
    if table.name == "job_attempts":
        # No unique key to conflict on: an attempt is skipped when its identity (job_id,
        # attempt, started_at: none of them NULL) is there. One index probe per staged row
        # (LATERAL ... LIMIT 1), whatever the planner thinks of the unanalyzed staging table:
        # an anti-join could sort or scan the whole table for every batch.
        match = sql.SQL(" AND ").join(
            sql.SQL("a.{0} = s.{0}").format(sql.Identifier(column)) for column in table.identity
        )
        return sql.SQL(
            "INSERT INTO {target} ({columns}) SELECT {columns} FROM {staging} AS s "
            "LEFT JOIN LATERAL (SELECT true AS held FROM {target} AS a WHERE {match} LIMIT 1) "
            "AS h ON true WHERE h.held IS NULL ORDER BY s.ord"
        ).format(target=target, columns=columns, staging=_STAGING, match=match)
    # Token ids are kept (jobs name their token by id); other identity columns (seq) are
    # not portable, so the table gives them anew.
    overriding = sql.SQL("OVERRIDING SYSTEM VALUE " if table.name == "tokens" else "")
    return sql.SQL(
        "INSERT INTO {target} ({columns}) {overriding}SELECT {columns} FROM {staging} "
        "ORDER BY ord ON CONFLICT DO NOTHING"
    ).format(target=target, columns=columns, overriding=overriding, staging=_STAGING)


def _storable(table: PortableTable, rows: Sequence[Row]) -> Sequence[Row]:
    """`rows` as PostgreSQL text can hold them (see _FREE_TEXT); CopyError names a row whose
    key holds a NUL."""
    free = _FREE_TEXT.get(table.name, frozenset())
    kept: list[Row] = []
    for row in rows:
        if any(type(value) is str and NUL in value for value in row):
            fixed = []
            for column, value in zip(table.columns, row, strict=True):
                if type(value) is str and NUL in value:
                    if column not in free:
                        identity = ", ".join(
                            f"{c} {row[table.columns.index(c)]!r}" for c in table.identity
                        )
                        raise CopyError(
                            f"{table.name} ({identity}): its {column} holds a NUL character, "
                            "which PostgreSQL text cannot store"
                        )
                    value = free_text(value)
                fixed.append(value)
            row = tuple(fixed)
        kept.append(row)
    return kept


async def _import(conn: Conn, name: str, rows: Sequence[Row]) -> int:
    table = portable_table(name)
    if not rows:
        return 0
    # No alert events for the jobs imported (see 0001_initial.sql), and no JIT compilation:
    # the large tables' cost estimates would otherwise buy it for every batch.
    await conn.execute(
        "SELECT set_config('queue_service.importing', 'on', true), set_config('jit', 'off', true)"
    )
    await conn.execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS "
            "SELECT 0::bigint AS ord, {} FROM {} WITH NO DATA"
        ).format(_STAGING, _columns(table.columns), sql.Identifier(name))
    )
    copy_sql = sql.SQL("COPY {} (ord, {}) FROM STDIN").format(_STAGING, _columns(table.columns))
    async with conn.cursor() as cur:
        async with cur.copy(copy_sql) as copy:
            for ord_, row in enumerate(rows):
                await copy.write_row((ord_, *row))
        await cur.execute(_insert_sql(table))
        inserted = cur.rowcount
    if name == "tokens":
        # New tokens are numbered after the copied ones.
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('tokens', 'token_id'), max(token_id)) "
            "FROM tokens HAVING max(token_id) IS NOT NULL"
        )
    return inserted


class PortableMixin(Database):
    """The portable form: what `queue-service copy` reads and writes."""

    async def portable_counts(self) -> dict[str, int]:
        return await self._read(_counts, int(self.write_timeout_s * 1000))

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 1000
    ) -> tuple[list[tuple[Any, ...]], Any]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        portable_table(table)  # KeyError for an unknown table, before any SQL
        return await self._read_statement(_export, table, after, limit)

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        batch = list(rows)
        try:
            return await self._tx(_import, table, batch)
        except StoreError as exc:
            if not isinstance(exc.__cause__, psycopg.DataError):
                raise
        # psycopg refused a value (a NUL, which PostgreSQL text cannot hold): the batch
        # again, as it can be stored. Checked only then, as looking for a NUL in every value
        # of every batch would cost a large copy seconds.
        return await self._tx(_import, table, _storable(portable_table(table), batch))

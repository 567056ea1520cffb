"""A whole store as portable rows, and `copy_store`: one backend's store into another's.

The portable form is the same in every backend: one named table per concern, its columns in a
fixed order, values as plain text, integers or NULL. Timestamps are the fixed-width UTC text
of `timeutil.format_ts` and JSON columns hold JSON text, exactly as the SQLite store keeps
them; a backend with richer column types converts on the way in and out.

What is copied: jobs (with their ids, statuses, payloads, results and timestamps), their
attempts, tokens (hashes only: a secret is never stored anywhere), plugin state, schedule
state and fired slots, and Databricks sync state. What is not: the count rollups, which every
backend keeps from the jobs themselves; alert events, cursors and deliveries (a copied job
that failed is history, not news: importing it records no alert event, and alerts on the target
start from what happens there); and internal sequence numbers, which the target gives
anew in the source's order (so "newest first" and keyset paging keep the same order). Token
ids are kept: a job's `submitted_by_token` names its token by id (own-job reads).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queue_service.store.protocol import Store

__all__ = [
    "PORTABLE_TABLES",
    "CopyError",
    "CopyReport",
    "PortableTable",
    "TableCopy",
    "copy_store",
    "cursor_values",
    "export_page",
    "portable_table",
]

#: A portable row: the table's columns in order.
Row = tuple[Any, ...]


@dataclass(frozen=True)
class PortableTable:
    """One table of the portable form.

    `columns` are exported and imported in this order. `identity` names the columns that
    identify a row across stores: a row whose identity the target already holds is skipped,
    so an interrupted copy can be re-run with `merge`. `order` is the key rows are exported
    by (keyset pages): the store's insertion order where the table has one (jobs by seq,
    attempts by id), so a copy keeps the source's order; a key of one column makes a scalar
    cursor.
    """

    name: str
    columns: tuple[str, ...]
    identity: tuple[str, ...]
    order: tuple[str, ...]


_JOB_COLUMNS = (
    "job_id",
    "plugin",
    "command",
    "status",
    "source",
    "payload",
    "result",
    "events",
    "logs",
    "last_error",
    "attempt",
    "max_attempts",
    "submitted_by",
    "submitted_by_token",
    "external_id",
    "external_url",
    "dedupe_key",
    "schedule_id",
    "created_at",
    "started_at",
    "completed_at",
    "run_after",
    "lease_expires_at",
    "lease_owner",
    "cancel_requested",
)

#: Every portable table, in copy order (jobs before the attempts that refer to them).
PORTABLE_TABLES: tuple[PortableTable, ...] = (
    PortableTable("jobs", _JOB_COLUMNS, ("job_id",), ("seq",)),
    PortableTable(
        "job_attempts",
        (
            "job_id",
            "attempt",
            "status",
            "started_at",
            "completed_at",
            "exit_code",
            "error",
            "stderr_tail",
        ),
        ("job_id", "attempt", "started_at"),
        ("id",),
    ),
    PortableTable(
        "tokens",
        (
            "token_id",
            "name",
            "token_hash",
            "scopes",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ),
        ("token_hash",),
        ("token_id",),
    ),
    PortableTable("plugin_state", ("plugin", "state", "updated_at"), ("plugin",), ("plugin",)),
    PortableTable(
        "schedule_state",
        ("schedule_key", "next_run_at", "last_fired_at", "last_job_id", "updated_at"),
        ("schedule_key",),
        ("schedule_key",),
    ),
    PortableTable(
        "schedule_fires",
        ("schedule_key", "slot", "job_id", "fired_at"),
        ("schedule_key", "slot"),
        ("schedule_key", "slot"),
    ),
    PortableTable(
        "sync_state",
        (
            "workspace",
            "host",
            "watermark_ms",
            "last_success_at",
            "last_error",
            "last_error_at",
            "runs_ingested",
            "healthy",
            "extra",
        ),
        ("workspace",),
        ("workspace",),
    ),
)

_BY_NAME = {table.name: table for table in PORTABLE_TABLES}


def portable_table(name: str) -> PortableTable:
    """The portable table called `name`; KeyError names the unknown table."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no portable table {name!r}") from None


def export_page(
    table: PortableTable, fetched: Sequence[Sequence[Any]], limit: int
) -> tuple[list[Row], Any]:
    """A store's `export_rows` answer from the rows its query fetched: each the table's
    columns followed by its `order` key, at most `limit`. The cursor is the last row's key
    (a scalar for a one-column key), or None when the page was not full: the last one."""
    width = len(table.columns)
    rows = [tuple(row[:width]) for row in fetched]
    if len(fetched) < limit:
        return rows, None
    last = tuple(fetched[-1][width:])
    return rows, (last if len(table.order) > 1 else last[0])


def cursor_values(table: PortableTable, after: Any) -> tuple[Any, ...]:
    """The `order` key values of an `export_rows` cursor."""
    return tuple(after) if len(table.order) > 1 else (after,)


class CopyError(Exception):
    """A copy that must not go on, or whose result does not add up; the message says why."""


@dataclass
class TableCopy:
    """What a copy did to one table."""

    table: str
    source_rows: int = 0
    target_rows_before: int = 0
    copied: int = 0
    skipped: int = 0
    target_rows_after: int = 0


@dataclass
class CopyReport:
    tables: list[TableCopy] = field(default_factory=list)

    @property
    def copied(self) -> int:
        return sum(table.copied for table in self.tables)


async def _pages(source: Store, table: str, batch: int) -> AsyncGenerator[list[Row], None]:
    """The pages of `table` in `source`, each read while the caller writes the one before:
    the two stores work at the same time."""
    pending = asyncio.ensure_future(source.export_rows(table, limit=batch))
    try:
        while True:
            rows, after = await pending
            if not rows:
                return
            if after is not None:
                pending = asyncio.ensure_future(source.export_rows(table, after=after, limit=batch))
            yield rows
            if after is None:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


async def copy_store(
    source: Store,
    target: Store,
    *,
    merge: bool = False,
    batch: int = 1000,
    progress: Callable[[TableCopy], None] | None = None,
) -> CopyReport:
    """Copy every portable table of `source` into `target`, then check the counts.

    Refuses a target that holds any row unless `merge`: then rows whose identity the target
    already has are skipped. Each batch is one transaction in the target, so a copy cut short
    leaves whole batches behind, and re-running it with `merge` completes it.

    After the copy, each table's target count must equal its count before plus the rows
    copied, and (whether merging or not) every source row must have been copied or skipped
    as present: otherwise CopyError, which usually means something wrote to either store
    during the copy. Stop the services on both sides first.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    source_counts = await source.portable_counts()
    target_counts = await target.portable_counts()
    held = {name: n for name, n in target_counts.items() if n}
    if held and not merge:
        listed = ", ".join(f"{name} {n}" for name, n in held.items())
        raise CopyError(
            f"the target is not empty ({listed}); copy into an empty store, "
            "or pass --merge to skip the rows it already holds"
        )
    report = CopyReport()
    for table in PORTABLE_TABLES:
        done = TableCopy(
            table.name,
            source_rows=source_counts[table.name],
            target_rows_before=target_counts[table.name],
        )
        report.tables.append(done)
        async with contextlib.aclosing(_pages(source, table.name, batch)) as pages:
            async for rows in pages:
                inserted = await target.import_rows(table.name, rows)
                done.copied += inserted
                done.skipped += len(rows) - inserted
                if progress is not None:
                    progress(done)
    final_source = await source.portable_counts()
    final_target = await target.portable_counts()
    problems: list[str] = []
    for done in report.tables:
        done.target_rows_after = final_target[done.table]
        if final_source[done.table] != done.source_rows:
            problems.append(
                f"{done.table}: the source changed during the copy "
                f"({done.source_rows} rows, then {final_source[done.table]})"
            )
        if done.copied + done.skipped != done.source_rows:
            problems.append(
                f"{done.table}: {done.source_rows} rows in the source, but "
                f"{done.copied + done.skipped} read"
            )
        if done.skipped and not done.target_rows_before:
            problems.append(
                f"{done.table}: {done.skipped} rows were refused by the empty target "
                "(a uniqueness conflict within the source)"
            )
        if done.target_rows_after != done.target_rows_before + done.copied:
            problems.append(
                f"{done.table}: the target held {done.target_rows_before}, {done.copied} "
                f"were copied, but it now holds {done.target_rows_after}"
            )
    if problems:
        raise CopyError("the counts do not add up: " + "; ".join(problems))
    return report

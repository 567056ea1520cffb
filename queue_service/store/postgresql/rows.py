"""Rows of the PostgreSQL store: the conversions every backend shares
(queue_service/store/rows.py). Queries that return whole jobs select `*` (or `RETURNING *`)
into `job_rows` (claims, reads of one job) or psycopg's `dict_row`, which the shared
conversions read by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from queue_service.store.rows import (
    decode_json,
    encode_json,
    job_from_row,
    job_maker,
    summary_from_row,
    sync_state_from_row,
    token_from_row,
)
from queue_service.store.types import Job

if TYPE_CHECKING:
    from psycopg._cursor_base import BaseCursor

__all__ = [
    "NUL",
    "decode_json",
    "encode_json",
    "free_text",
    "job_from_row",
    "job_rows",
    "refuse_nul",
    "summary_from_row",
    "sync_state_from_row",
    "token_from_row",
]

#: The one character PostgreSQL text cannot hold (SQLite's can).
NUL = "\x00"


def free_text(value: str | None) -> str | None:
    """Free text (an error message, a reason) as PostgreSQL can store it: each NUL becomes
    U+FFFD, every other character is kept."""
    return None if value is None else value.replace(NUL, "\ufffd")


def refuse_nul(**values: str | None) -> None:
    """Raise ValueError naming the first of `values` (identifiers, keys) holding a NUL:
    PostgreSQL cannot store it, and changing a key would change what it names."""
    for name, value in values.items():
        if value is not None and NUL in value:
            raise ValueError(f"{name} cannot contain NUL characters (PostgreSQL text)")


def job_rows(cursor: BaseCursor[Any, Any]) -> Callable[[Sequence[Any]], Job]:
    """psycopg row factory for statements that return whole jobs (`*`): Jobs, made
    without a dict per row (a claim returns up to a worker's free slots of them)."""
    return job_maker([column.name for column in cursor.description or ()])

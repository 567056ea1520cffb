"""Rows of the PostgreSQL store: the conversions every backend shares
(queue_service/store/rows.py). Queries that return whole jobs select `*` (or `RETURNING *`)
into psycopg's `dict_row`, which the shared conversions read by name."""

from __future__ import annotations

from queue_service.store.rows import (
    decode_json,
    encode_json,
    job_from_row,
    summary_from_row,
    sync_state_from_row,
    token_from_row,
)

__all__ = [
    "decode_json",
    "encode_json",
    "job_from_row",
    "summary_from_row",
    "sync_state_from_row",
    "token_from_row",
]

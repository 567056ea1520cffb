"""Row conversions of the SQLite store: the shared ones (queue_service/store/rows.py)."""

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

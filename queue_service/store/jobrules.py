"""Rules about jobs that every backend applies the same way, in pure Python: new job ids,
and what cancelling a job that is not queued or running answers."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from queue_service.store.errors import Conflict
from queue_service.store.rows import encode_json
from queue_service.store.types import NewJob


def new_job_id() -> str:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Ids of
    new jobs sort by time, so the job_id index and the attempts' (job_id, attempt) index
    grow at their right edge instead of touching a random page of a large table."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits, 74 used
    value = (
        (millis & (2**48 - 1)) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & (2**62 - 1)
    )
    return str(uuid.UUID(int=value))


def new_job_row(job: NewJob, job_id: str, now: str) -> dict[str, Any]:
    """The stored values of a job being enqueued at `now`, by column (status queued,
    source local and attempt 0 are the insert's own)."""
    return {
        "job_id": job_id,
        "plugin": job.plugin,
        "command": job.command,
        "payload": encode_json(job.payload),
        "max_attempts": job.max_attempts,
        "submitted_by": job.submitted_by,
        "submitted_by_token": job.submitted_by_token,
        "dedupe_key": job.dedupe_key,
        "schedule_id": job.schedule_id,
        "created_at": now,
        "run_after": job.run_after or now,
    }


def cancel_refused(job_id: str, status: str, source: str) -> Conflict:
    """Why a job that could be neither canceled (queued) nor flagged (running) was not:
    it mirrors another system's run, or it already finished."""
    if source != "local" and status in ("queued", "running"):
        return Conflict(
            f"job {job_id} mirrors a {source} run; cancel the run there "
            "(the next sync records the cancellation)"
        )
    return Conflict(f"job {job_id} already finished as {status}; it cannot be canceled")

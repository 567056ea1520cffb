"""The columns of a mirrored run and of a workspace's sync state, as every backend writes
them (the Databricks sync's upserts)."""

from __future__ import annotations

import json
from typing import Any

from queue_service.store.rows import encode_json
from queue_service.store.types import ExternalJob, SyncState


def external_job_params(job: ExternalJob) -> dict[str, Any]:
    """The run's columns by name; `new_status` is the status of a job inserted now,
    `status` the one an update sets (None: keep the stored one, a state we do not know)."""
    new_status = job.status if job.status is not None else job.status_if_new
    return {
        "job_id": job.job_id,
        "plugin": job.plugin,
        "command": job.command,
        "new_status": new_status.value,
        "status": job.status.value if job.status is not None else None,
        "source": job.source.value,
        "result": encode_json(job.result),
        "last_error": job.last_error,
        "attempt": job.attempt,
        "external_id": job.external_id,
        "external_url": job.external_url,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
    }


def sync_state_params(state: SyncState) -> dict[str, Any]:
    return {
        "workspace": state.workspace,
        "host": state.host,
        "watermark_ms": state.watermark_ms,
        "last_success_at": state.last_success_at,
        "last_error": state.last_error,
        "last_error_at": state.last_error_at,
        "runs_ingested": state.runs_ingested,
        "healthy": int(state.healthy),
        "extra": json.dumps(state.extra),
    }

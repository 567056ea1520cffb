"""What an operator looks at first: counts, the oldest waiting job, running jobs, schedules
and the Databricks sync, read from the store (and the config) by any process.

`queue-service status` prints it (queue_service/terminal.py renders it); `GET /schedules`
shares `schedule_infos`. Every read is bounded: counts come from the store's rollups, the
oldest queued job is one index seek, and running jobs are one short page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from queue_service import models
from queue_service.config import ServiceConfig
from queue_service.databricks.status import SyncStatus, read_status
from queue_service.statuses import STATUSES, Status
from queue_service.store import JobFilter, JobSummary, Store
from queue_service.timeutil import format_ts, parse_rfc3339, utcnow

__all__ = ["RUNNING_SHOWN", "Overview", "gather_overview", "schedule_infos"]

#: How many running jobs an overview lists (newest first); the total is always exact.
RUNNING_SHOWN = 10


async def schedule_infos(store: Store, config: ServiceConfig) -> list[dict[str, Any]]:
    """Every configured schedule with its timetable, its persisted state (next run, last
    firing) and the status of its last job: the items of `GET /schedules`."""
    states = await store.get_schedule_states()
    items = []
    for key, plugin, spec in config.schedules():
        state = states.get(key)
        last_status = None
        if state is not None and state.last_job_id:
            last = await store.get_job(state.last_job_id)
            last_status = last.status if last else None
        items.append(
            {
                "schedule_id": spec.id,
                "plugin": plugin,
                "command": spec.command,
                "every": spec.every,
                "cron": spec.cron,
                "timezone": spec.timezone,
                "if_running": spec.if_running,
                "catch_up": spec.catch_up,
                "next_run_at": state.next_run_at if state else None,
                "last_fired_at": state.last_fired_at if state else None,
                "last_job_id": state.last_job_id if state else None,
                "last_job_status": last_status,
            }
        )
    return items


class OldestQueued(BaseModel):
    job: models.JobSummary
    age_seconds: float = Field(description="How long the job has been queued, at `at`.")


class RunningJobs(BaseModel):
    total: int = Field(description="Every running job (exact).")
    jobs: list[models.JobSummary] = Field(description=f"The newest {RUNNING_SHOWN}.")


class Overview(BaseModel):
    """The service at a glance, as `queue-service status --json` prints it."""

    at: str = Field(description="When the overview was read (UTC).")
    queue_depth: int = Field(description="Jobs queued or running.")
    counts_by_status: dict[Status, int] = Field(description="Every status, zeros included.")
    counts_by_plugin: dict[str, dict[Status, int]] = Field(
        description="Per plugin, the statuses it has jobs in."
    )
    oldest_queued: OldestQueued | None
    running: RunningJobs
    schedules: list[models.ScheduleInfo] | None = Field(
        description="The configured schedules; null without a config file."
    )
    sync: SyncStatus


def _summary(job: JobSummary) -> models.JobSummary:
    return models.JobSummary.model_validate(job, from_attributes=True)


async def gather_overview(
    store: Store, config: ServiceConfig | None, *, now: datetime | None = None
) -> Overview:
    """Read the overview from `store`; schedules and Databricks workspaces come from
    `config` (None: no config file, so schedules are unknown and every stored workspace
    is shown)."""
    moment = now or utcnow()
    counts = await store.count_jobs_by_status(JobFilter())
    oldest = await store.oldest_queued_job()
    running = await store.list_jobs(JobFilter(statuses=(Status.RUNNING,)), limit=RUNNING_SHOWN)
    return Overview(
        at=format_ts(moment),
        queue_depth=await store.queue_depth(),
        counts_by_status={Status(s): counts.get(Status(s), 0) for s in STATUSES},
        counts_by_plugin={
            plugin: {Status(s): counts[Status(s)] for s in STATUSES if Status(s) in counts}
            for plugin, counts in sorted((await store.count_jobs_by_plugin()).items())
        },
        oldest_queued=None
        if oldest is None
        else OldestQueued(
            job=_summary(oldest),
            age_seconds=round(
                max(0.0, (moment - parse_rfc3339(oldest.created_at)).total_seconds()), 3
            ),
        ),
        running=RunningJobs(total=running.total, jobs=[_summary(j) for j in running.jobs]),
        schedules=None
        if config is None
        else [models.ScheduleInfo(**item) for item in await schedule_infos(store, config)],
        sync=await read_status(store, config.databricks if config else None),
    )

"""Terminal views, drawn with rich: the live job table of `queue-service jobs --watch` and the
one-screen summary of `queue-service status`.

Both read the store directly, as `queue-service jobs` does, so they work without a running
server. Colour and live redrawing only happen on a terminal; piped, `status` prints the same
tables as plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from queue_service.databricks.status import SyncStatus
from queue_service.models import ScheduleInfo
from queue_service.overview import Overview
from queue_service.statuses import STATUSES, Status
from queue_service.store import JobFilter, JobPage, JobSummary, Store, StoreError
from queue_service.timeutil import parse_rfc3339, utcnow

__all__ = ["JOB_COLUMNS", "job_cells", "status_view", "watch_jobs"]

#: The columns of a job listing, in the plain table of `jobs` and in `jobs --watch`.
JOB_COLUMNS = ("JOB_ID", "PLUGIN", "COMMAND", "STATUS", "SOURCE", "CREATED", "ATTEMPT")

STATUS_STYLES = {
    Status.QUEUED: "cyan",
    Status.RUNNING: "yellow",
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
    Status.TIMED_OUT: "magenta",
    Status.CANCELED: "bright_black",
    Status.DEAD: "bold red",
}
WORKSPACE_STYLES = {"ok": "green", "pending": "cyan", "backing_off": "yellow", "unhealthy": "red"}
#: Lines of a watch frame besides the job rows: title, counts, the table's header and
#: borders, the footer, and a spare for an error line.
_WATCH_CHROME = 8


def job_cells(job: JobSummary) -> list[str]:
    """One job as the cells of a listing row, under JOB_COLUMNS."""
    return [
        job.job_id,
        job.plugin,
        job.command[:40],
        job.status,
        job.source,
        job.created_at[:19],
        str(job.attempt),
    ]


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m 05s, 2h 04m, 3d 07h."""
    whole = int(max(0.0, seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _since(timestamp: str | None, now: datetime) -> str:
    if timestamp is None:
        return "-"
    return duration((now - parse_rfc3339(timestamp)).total_seconds())


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(Status(status), ""))


def _table(*headers: str) -> Table:
    """A table of one line per row: cells too wide for the terminal end in an ellipsis."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in headers:
        # Job ids are what an operator copies: never cut them short.
        wide = 36 if header == "JOB_ID" else None
        table.add_column(header, no_wrap=True, overflow="ellipsis", min_width=wide)
    return table


def _titled(title: str, table: Table) -> Group:
    return Group(Text(title, style="bold"), table)


def _counts_line(counts: dict[Status, int], queue_depth: int) -> Text:
    line = Text()
    for status in STATUSES:
        n = counts.get(Status(status), 0)
        line.append(f"{status} ", style=STATUS_STYLES[Status(status)] if n else "bright_black")
        line.append(f"{n}  ", style="bold" if n else "bright_black")
    line.append(f"queue depth {queue_depth}", style="bold")
    return line


# -- jobs --watch ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    page: JobPage
    counts: dict[Status, int]
    queue_depth: int
    at: datetime


def _describe(filters: JobFilter) -> str:
    parts = [
        f"plugin={filters.plugin}" if filters.plugin else "",
        f"command={filters.command}" if filters.command else "",
        f"status={','.join(filters.statuses)}" if filters.statuses else "",
        f"source={','.join(filters.sources)}" if filters.sources else "",
    ]
    return " ".join(p for p in parts if p) or "all jobs"


def _watch_frame(
    filters: JobFilter, interval: float, snapshot: _Snapshot | None, error: str | None
) -> RenderableType:
    title = Text.assemble(
        ("queue-service jobs --watch", "bold"),
        f"  {_describe(filters)}  every {interval:g}s  Ctrl-C quits",
    )
    parts: list[RenderableType] = [title]
    if snapshot is not None:
        title.append(f"  {snapshot.at.strftime('%H:%M:%S')} UTC", style="bright_black")
        # Counts by status of the filter's plugin, command and source; every status shown.
        parts.append(_counts_line(snapshot.counts, snapshot.queue_depth))
        table = _table(*JOB_COLUMNS)
        for job in snapshot.page.jobs:
            cells: list[str | Text] = list(job_cells(job))
            cells[3] = _status_text(job.status)
            table.add_row(*cells)
        parts.append(table)
        parts.append(Text(f"{len(snapshot.page.jobs)} of {snapshot.page.total} matching jobs"))
    if error is not None:
        parts.append(Text(f"refresh failed (retrying): {error}", style="red"))
    return Group(*parts)


async def _snapshot(store: Store, filters: JobFilter, limit: int) -> _Snapshot:
    counted = JobFilter(plugin=filters.plugin, command=filters.command, sources=filters.sources)
    return _Snapshot(
        page=await store.list_jobs(filters, limit=limit),
        counts=await store.count_jobs_by_status(counted),
        queue_depth=await store.queue_depth(),
        at=utcnow(),
    )


async def watch_jobs(
    store: Store, filters: JobFilter, *, limit: int, interval: float, console: Console
) -> int:
    """Redraw the newest jobs matching `filters` (at most `limit`, fewer when the terminal
    is shorter), the counts by status and the queue depth every `interval` seconds, until
    SIGINT (Ctrl-C) or SIGTERM. Returns 0: stopping is how a watch ends. A failed refresh
    (a locked or vanished database) is shown and retried; it does not end the watch."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The signal only sets the event, so a read in progress finishes and the terminal is
    # restored by Live's exit, with no KeyboardInterrupt raised mid-frame.
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    snapshot: _Snapshot | None = None
    try:
        with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
            while not stop.is_set():
                error = None
                rows = max(1, min(limit, console.size.height - _WATCH_CHROME))
                try:
                    snapshot = await _snapshot(store, filters, rows)
                except StoreError as exc:
                    error = str(exc)
                live.update(_watch_frame(filters, interval, snapshot, error), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return 0


# -- status ----------------------------------------------------------------


def _ago(timestamp: str | None, now: datetime, never: str = "never") -> str:
    return f"{_since(timestamp, now)} ago" if timestamp else never


def _plugins_table(overview: Overview) -> RenderableType:
    """Counts per plugin, in the columns of the statuses that have jobs at all."""
    if not overview.counts_by_plugin:
        return Text("No jobs.")
    shown = [Status(s) for s in STATUSES if overview.counts_by_status.get(Status(s))]
    table = _table("PLUGIN", *shown, "total")
    for column in table.columns[1:]:
        column.justify = "right"
    for plugin, counts in overview.counts_by_plugin.items():
        cells = [str(counts.get(s, 0) or "") for s in shown]
        table.add_row(plugin, *cells, str(sum(counts.values())))
    return table


def _running_table(overview: Overview, now: datetime) -> RenderableType:
    running = overview.running
    if not running.total:
        return Text("Running: none")
    title = f"Running: {running.total}"
    if running.total > len(running.jobs):
        title += f" (the newest {len(running.jobs)})"
    table = _table("JOB_ID", "PLUGIN", "COMMAND", "FOR", "ATTEMPT")
    for job in running.jobs:
        table.add_row(
            job.job_id, job.plugin, job.command, _since(job.started_at, now), str(job.attempt)
        )
    return _titled(title, table)


def _next_run(schedule: ScheduleInfo, now: datetime) -> Text:
    if schedule.next_run_at is None:
        return Text("not planned yet", style="bright_black")
    when = parse_rfc3339(schedule.next_run_at)
    if when > now:
        return Text(f"in {duration((when - now).total_seconds())}")
    # A running scheduler fires a due slot within a second: a lasting "due" means no
    # scheduler runs against this database.
    return Text(f"due {duration((now - when).total_seconds())} ago", style="yellow")


def _schedules_table(schedules: Sequence[ScheduleInfo] | None, now: datetime) -> RenderableType:
    if schedules is None:
        return Text("Schedules: unknown without a config file (--config)")
    if not schedules:
        return Text("Schedules: none configured")
    table = _table("SCHEDULE", "TIMETABLE", "NEXT RUN", "LAST FIRED", "LAST JOB")
    for s in schedules:
        timetable = f"every {s.every}" if s.every else s.cron or ""
        if s.timezone != "UTC":
            timetable += f" {s.timezone}"
        table.add_row(
            f"{s.plugin}:{s.schedule_id}",
            timetable,
            _next_run(s, now),
            _ago(s.last_fired_at, now),
            _status_text(s.last_job_status) if s.last_job_status else Text("-"),
        )
    return _titled("Schedules", table)


def _sync_table(sync: SyncStatus, now: datetime) -> RenderableType:
    if not sync.workspaces:
        return Text("Databricks sync: not configured")
    state = "enabled" if sync.enabled else "not enabled in the config"
    health = "healthy" if sync.healthy else "UNHEALTHY"
    table = _table("WORKSPACE", "STATE", "LAST SUCCESS", "RUNS", "LAST ERROR")
    for w in sync.workspaces:
        error = f"{_ago(w.last_error_at, now, '')}: {w.last_error}" if w.last_error else "-"
        table.add_row(
            w.workspace,
            Text(w.state, style=WORKSPACE_STYLES.get(w.state, "")),
            _ago(w.last_success_at, now),
            str(w.runs_ingested),
            error,
        )
    return _titled(f"Databricks sync: {state}, {health}", table)


def status_view(overview: Overview) -> RenderableType:
    """The one-screen summary of `queue-service status`."""
    now = parse_rfc3339(overview.at)
    oldest = overview.oldest_queued
    waiting = (
        Text(
            f"Oldest queued: {oldest.job.job_id} ({oldest.job.plugin} {oldest.job.command}), "
            f"waiting {duration(oldest.age_seconds)}"
        )
        if oldest is not None
        else Text("Oldest queued: nothing is queued")
    )
    return Group(
        Text(f"queue-service status at {overview.at[:19]} UTC", style="bold"),
        _counts_line(overview.counts_by_status, overview.queue_depth),
        _plugins_table(overview),
        Text(""),
        waiting,
        Text(""),
        _running_table(overview, now),
        Text(""),
        _schedules_table(overview.schedules, now),
        Text(""),
        _sync_table(overview.sync, now),
    )

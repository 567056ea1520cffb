"""GET /metrics: the service in the Prometheus text format (docs/METRICS.md lists every metric).

Each app has its own registry (never prometheus_client's global one), holding:
- the HTTP request durations, observed by HttpMetricsMiddleware, labelled by route template;
- StoreCollector: job counts, queue depth, the oldest queued job per plugin and the
  Databricks sync, read from the store at scrape time. Those reads are bounded by the
  number of count keys, plugins and workspaces, never by the number of jobs;
- ProcessCollector and WorkerCollector: what this process counted itself: failed
  authentications, and the claim-to-start and duration histograms of the worker it runs
  (`serve`). A worker started apart (`queue-service worker`) keeps its own and has no HTTP
  server: its attempts are not in these histograms (the job counts, read from the store,
  include every process).

The histograms are queue_service.histograms (cheap to scrape); a scrape writes the text
format itself (text_format), which tests/test_metrics.py checks against prometheus_client's
generate_latest on the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queue_service.api.operations import Context, Operation
from queue_service.api.state import ServiceState
from queue_service.api.sync_routes import sync_status
from queue_service.auth import AUTH_FAILURE_REASONS
from queue_service.histograms import (
    Histogram,
    escape_help,
    format_number,
    label_text,
)
from queue_service.statuses import STATUSES, Status
from queue_service.store import JobCount
from queue_service.timeutil import parse_rfc3339, utcnow

#: The route label of a request no route matches (never its raw path: unbounded labels).
UNMATCHED_ROUTE = "unmatched"
#: Methods labelled as themselves; any other method token is labelled "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ACTIVE = (Status.QUEUED, Status.RUNNING)
_JOBS = "queue_service_jobs"
_JOBS_HELP = "Jobs by plugin, command, source and status (exact, from the store's counts)."
_JOBS_LABELS = ("plugin", "command", "source", "status")
#: Upper bounds (seconds) of the HTTP duration buckets: fine below the 10 ms target.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(slots=True)
class StoreSnapshot:
    """What one scrape read from the store."""

    #: When the store was read: ages are measured from it.
    read_at: datetime = field(default_factory=utcnow)
    counts: list[JobCount] = field(default_factory=list)
    oldest_queued: dict[str, str] = field(default_factory=dict)
    sync: list[dict[str, Any]] = field(default_factory=list)


class StoreCollector:
    """Families read from the store. `refresh()` (async) reads; `collect()` (what the
    registry calls, synchronously) turns the last reading into families, and `text()`
    into the text format."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.snapshot = StoreSnapshot()

    async def refresh(self) -> None:
        store = self.state.store
        read_at = utcnow()
        counts = await store.job_counts()
        oldest = await store.oldest_queued_by_plugin()
        sync: list[dict[str, Any]] = []
        databricks = self.state.config.databricks
        if databricks is not None and databricks.enabled:
            sync = [w.model_dump() for w in (await sync_status(self.state)).workspaces]
        self.snapshot = StoreSnapshot(read_at, counts, oldest, sync)

    def _jobs(self) -> tuple[dict[tuple[str, str, str], dict[str, int]], int]:
        """The counts by (plugin, command, source), then by status; and the queue depth."""
        found: dict[tuple[str, str, str], dict[str, int]] = {}
        depth = 0
        for row in self.snapshot.counts:
            found.setdefault((row.plugin, row.command, row.source.value), {})[row.status] = row.n
            if row.status in _ACTIVE:
                depth += row.n
        return found, depth

    def collect(self) -> Iterable[Metric]:
        found, depth = self._jobs()
        jobs = GaugeMetricFamily(_JOBS, _JOBS_HELP, labels=_JOBS_LABELS)
        # Every status of a (plugin, command, source) that has jobs, 0 included: a series
        # that vanishes when it reaches 0 would read as "no data" rather than as 0.
        for (plugin, command, source), by_status in found.items():
            for status in STATUSES:
                jobs.add_metric([plugin, command, source, status], by_status.get(status, 0))
        yield jobs
        yield from self._others(depth)

    def text(self) -> str:
        """What collect() gives, in the text format: the job counts, the largest family,
        written directly (one line per series, no Sample objects)."""
        found, depth = self._jobs()
        out = [f"# HELP {_JOBS} {_JOBS_HELP}\n# TYPE {_JOBS} gauge\n"]
        for (plugin, command, source), by_status in found.items():
            labels = label_text(_JOBS_LABELS[:3], (plugin, command, source))
            for status in STATUSES:
                out.append(f'{_JOBS}{{{labels},status="{status}"}} {by_status.get(status, 0)}\n')
        out.append(text_format(self._others(depth)))
        return "".join(out)

    def _others(self, depth: int) -> Iterable[Metric]:
        snapshot = self.snapshot
        yield GaugeMetricFamily(
            "queue_service_queue_depth",
            "Jobs queued or running, of either source (as queue_depth in GET /healthz).",
            value=depth,
        )
        now = snapshot.read_at
        oldest = GaugeMetricFamily(
            "queue_service_oldest_queued_age_seconds",
            "Per plugin with queued local jobs: seconds since the longest-waiting one became "
            "claimable (its run_after); 0 when every queued job waits for a later run_after.",
            labels=["plugin"],
        )
        for plugin, run_after in sorted(snapshot.oldest_queued.items()):
            waited = (now - parse_rfc3339(run_after)).total_seconds()
            oldest.add_metric([plugin], max(0.0, waited))
        yield oldest
        yield from _sync_families(snapshot.sync, now.timestamp())


def _sync_families(workspaces: list[dict[str, Any]], now: float) -> Iterable[Metric]:
    lag = GaugeMetricFamily(
        "queue_service_databricks_sync_lag_seconds",
        "Seconds since the workspace's last successful sync (absent until the first one).",
        labels=["workspace"],
    )
    failures = GaugeMetricFamily(
        "queue_service_databricks_sync_consecutive_failures",
        "Sync attempts of the workspace that failed in a row (0 once one succeeds).",
        labels=["workspace"],
    )
    healthy = GaugeMetricFamily(
        "queue_service_databricks_sync_healthy",
        "1 unless Databricks rejected the workspace's credentials or configuration.",
        labels=["workspace"],
    )
    last_error = GaugeMetricFamily(
        "queue_service_databricks_sync_last_error_timestamp_seconds",
        "Unix time of the workspace's last sync error (absent when it never failed).",
        labels=["workspace"],
    )
    ingested = CounterMetricFamily(
        "queue_service_databricks_sync_runs_ingested",
        "Run records the sync wrote for the workspace since its first sync.",
        labels=["workspace"],
    )
    for workspace in workspaces:
        name = [workspace["workspace"]]
        if workspace["last_success_at"] is not None:
            success = parse_rfc3339(workspace["last_success_at"]).timestamp()
            lag.add_metric(name, max(0.0, now - success))
        if workspace["last_error_at"] is not None:
            last_error.add_metric(name, parse_rfc3339(workspace["last_error_at"]).timestamp())
        failures.add_metric(name, workspace["consecutive_failures"])
        healthy.add_metric(name, 1 if workspace["healthy"] else 0)
        ingested.add_metric(name, workspace["runs_ingested"])
    yield from (lag, failures, healthy, last_error, ingested)


class ProcessCollector:
    """What this process counted itself: failed authentications (and its version)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        failures = CounterMetricFamily(
            "queue_service_auth_failures",
            "Requests refused for their credentials since this process started, by reason.",
            labels=["reason"],
        )
        counted = self.state.tokens.failures
        for reason in AUTH_FAILURE_REASONS:
            failures.add_metric([reason], counted.get(reason, 0))
        yield failures
        info = GaugeMetricFamily(
            "queue_service_info", "Always 1; the version as a label.", labels=["version"]
        )
        info.add_metric([self.state.version], 1)
        yield info


class WorkerCollector:
    """The histograms of the worker running in this process, if one does."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def histograms(self) -> tuple[Histogram, ...]:
        worker = self.state.worker
        return () if worker is None else worker.timings.histograms

    def collect(self) -> Iterable[Metric]:
        for histogram in self.histograms():
            yield from histogram.collect()


class ServiceMetrics:
    """An app's registry and collectors."""

    def __init__(self, state: ServiceState) -> None:
        self.http_duration = Histogram(
            "queue_service_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response, by route template.",
            ["method", "route", "status"],
            HTTP_BUCKETS,
        )
        self.store_collector = StoreCollector(state)
        self.process_collector = ProcessCollector(state)
        self.worker_collector = WorkerCollector(state)
        #: Every collector, for prometheus_client's own encoders.
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (
            self.http_duration,
            self.store_collector,
            self.process_collector,
            self.worker_collector,
        ):
            self.registry.register(collector)

    async def render(self) -> bytes:
        """The exposition body (what generate_latest(self.registry) says, faster), with
        the store read now."""
        await self.store_collector.refresh()
        # Synchronous from here: no other scrape can replace the snapshot meanwhile.
        histograms = (self.http_duration, *self.worker_collector.histograms())
        return "".join(
            [
                self.store_collector.text(),
                text_format(self.process_collector.collect()),
                *(histogram.text() for histogram in histograms),
            ]
        ).encode()


#: The Prometheus text format, version 0.0.4: what every Prometheus server accepts.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}


def text_format(families: Iterable[Metric]) -> str:
    """`families` in the Prometheus text format 0.0.4, as prometheus_client's
    generate_latest writes them, less the optional `_created` samples.

    generate_latest checks and escapes every label name of every line (about 25 µs a line
    in prometheus-client 0.26: 15 ms for the ~600 job series of the 1M-job fixture). Names
    here are this module's constants, valid by construction; only label values, which come
    from the store, need escaping. tests/test_metrics.py checks that both agree.
    """
    out: list[str] = []
    for family in families:
        kind = _TEXT_TYPES[family.type]
        name = f"{family.name}_total" if kind == "counter" else family.name
        out.append(f"# HELP {name} {escape_help(family.documentation)}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                pairs = label_text(list(sample.labels), list(sample.labels.values()))
                out.append(f"{sample.name}{{{pairs}}} {format_number(sample.value)}\n")
            else:
                out.append(f"{sample.name} {format_number(sample.value)}\n")
    return "".join(out)


class HttpMetricsMiddleware:
    """Times every HTTP request into `metrics.http_duration`, labelled with the template
    of the top-level route that matched (`/job/{job_id}`), UNMATCHED_ROUTE when none did."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.histogram = metrics.http_duration
        self._templates: dict[int, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path, root_path = scope["path"], scope.get("root_path", "")
        status = 500  # unless a response starts: an exception escapes as a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            route = self._route(scope, path, root_path)
            self.histogram.observe((method, route, str(status)), time.perf_counter() - started)

    def _route(self, scope: Scope, path: str, root_path: str) -> str:
        routes = scope["app"].routes
        if self._templates is None:
            self._templates = {id(route): route.path for route in routes}
        # Starlette's router records the route it chose; a mounted app's router may have
        # replaced it with its own, and middleware answers (413, 503) run before routing:
        # then match the top-level routes against the request as it arrived.
        template = self._templates.get(id(scope.get("route")))
        if template is not None:
            return template
        probe = {"type": "http", "path": path, "root_path": root_path, "method": scope["method"]}
        for route in routes:
            match, _ = route.matches(probe)
            if match is not Match.NONE:
                return self._templates.get(id(route), UNMATCHED_ROUTE)
        return UNMATCHED_ROUTE


async def get_metrics(request: Request, ctx: Context) -> Response:
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(await metrics.render(), media_type=CONTENT_TYPE)


OPERATIONS = (
    Operation(
        method="GET",
        path="/metrics",
        operation_id="get_metrics",
        summary="Prometheus metrics",
        description=(
            "Job counts, queue depth, the oldest queued job, worker timings, HTTP durations, "
            "failed authentications and the Databricks sync, in the Prometheus text format "
            "0.0.4. docs/METRICS.md lists every metric."
        ),
        handler=get_metrics,
        scope="metrics:ro",
        responses={200: (None, "The metrics, as text/plain (Prometheus exposition format).")},
        tags=("service",),
    ),
)

"""GET /metrics on the benchmark database: what one Prometheus scrape costs in the server.

The app is called in-process (no socket) with a real `metrics:ro` token, on a copy of the
N-job fixture of build_db.py, after the HTTP histogram has series for every route and
several statuses, and the worker histograms have series for every (plugin, command) of the
fixture with two outcomes (what a long-running `serve` accumulates). Reported: the whole
request (auth, store reads, encoding), the store reads alone, the encoding alone, and
prometheus_client's own generate_latest on the same registry for comparison.
Target (issue 11): a scrape at 1M jobs costs under 10 ms.

    python bench/bench_metrics.py [--quick] [--jobs N] [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import copy_db, latency_summary, print_table, wait_for_quiet, write_results
from bench_list import AsgiClient
from build_db import DEFAULT_JOBS, QUICK_JOBS, ensure_db
from prometheus_client.exposition import generate_latest

from queue_service.api import ServiceState, create_app
from queue_service.api.metrics import ServiceMetrics
from queue_service.plugins import Registry
from queue_service.statuses import AttemptStatus
from queue_service.store import SQLiteStore
from queue_service.worker import Worker

TARGET_MS = 10.0
#: Requests made before measuring, so the HTTP histogram has the series a live server has.
WARM_REQUESTS = (
    ("/healthz", ""),
    ("/jobs", "limit=1"),
    ("/jobs", "status=nope"),
    ("/jobs", "unknown=1"),
    ("/job/nope", ""),
    ("/job/nope/cancel", ""),
    ("/plugins", ""),
    ("/schedules", ""),
    ("/sync", ""),
    ("/openapi.json", ""),
    ("/no/such/route", ""),
)


async def _no_read() -> None:
    return None


async def timed(call: Callable[[], Awaitable[Any]], samples: int) -> list[float]:
    seconds = []
    for _ in range(samples):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return seconds


async def measure(db: Path, samples: int) -> dict[str, Any]:
    store = SQLiteStore(db)
    await store.open()
    try:
        state = ServiceState.for_store(store)
        state.worker = Worker(store, Registry(()), state.config)
        secret, _ = await state.tokens.create("bench-metrics", ["metrics:ro"])
        admin, _ = await state.tokens.create("bench-admin", ["*"])
        app = create_app(state)
        client, admin_client = AsgiClient(app, secret), AsgiClient(app, admin)
        for path, query in WARM_REQUESTS:
            await admin_client.get(path, query)
            await AsgiClient(app, "qs_" + "A" * 43).get(path, query)  # 401 series
        timings = state.worker.timings
        for row in await store.job_counts():
            timings.claim_to_start.observe((row.plugin,), 0.004)
            for outcome in (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED):
                timings.duration.observe((row.plugin, row.command, outcome.value), 1.5)
        metrics: ServiceMetrics = app.state.metrics

        status, body = await client.get("/metrics", "")
        assert status == 200, body[:300]
        for _ in range(20):  # warm the caches and the code paths
            await client.get("/metrics", "")

        async def encode_ours() -> bytes:
            # render() less its store reads: the snapshot stays the last one read.
            refresh = metrics.store_collector.refresh
            metrics.store_collector.refresh = _no_read  # type: ignore[method-assign]
            try:
                return await metrics.render()
            finally:
                metrics.store_collector.refresh = refresh  # type: ignore[method-assign]

        async def encode_library() -> bytes:
            return generate_latest(metrics.registry)

        scrape = await timed(lambda: client.get("/metrics", ""), samples)
        reads = await timed(metrics.store_collector.refresh, samples)
        ours = await timed(encode_ours, samples)
        library = await timed(encode_library, max(20, samples // 10))
        lines = [line for line in body.decode().splitlines() if not line.startswith("#")]
        return {
            "count_rows": len(await store.job_counts()),
            "series": len(lines),
            "bytes": len(body),
            "scrape": latency_summary(scrape),
            "store_reads": latency_summary(reads),
            "encode": latency_summary(ours),
            "encode_generate_latest": latency_summary(library),
        }
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS:,} jobs")
    parser.add_argument("--jobs", type=int, help=f"database size (default {DEFAULT_JOBS:,})")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--wait", type=float, default=180.0)
    args = parser.parse_args(argv)
    jobs = args.jobs or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    source, meta = ensure_db(jobs)
    load = wait_for_quiet("bench_metrics", args.wait)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        db = Path(tmp) / "queue.db"
        copy_db(source, db)  # the scrape's tokens must not land in the cached fixture
        result = asyncio.run(measure(db, args.samples))
    rows = [
        [name, *(result[key][p] for p in ("p50_ms", "p95_ms", "p99_ms"))]
        for name, key in (
            ("GET /metrics (auth, reads, encoding)", "scrape"),
            ("store reads", "store_reads"),
            ("encoding (ours)", "encode"),
            ("encoding (prometheus_client generate_latest)", "encode_generate_latest"),
        )
    ]
    print_table(
        ["in-process", "p50 ms", "p95 ms", "p99 ms"],
        rows,
        f"{jobs:,} jobs; {result['count_rows']} count rows; {result['series']} series, "
        f"{result['bytes']:,} bytes; target p99 < {TARGET_MS} ms",
    )
    met = result["scrape"]["p99_ms"] < TARGET_MS
    print(f"scrape p99 {result['scrape']['p99_ms']} ms: {'met' if met else 'MISSED'}")
    write_results(
        "bench_metrics",
        {**load, "jobs": jobs, "fixture": meta.get("file", source.name), **result, "met": met},
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

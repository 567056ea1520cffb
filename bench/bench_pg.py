"""The queue core on PostgreSQL: queue-service's store against procrastinate, same server, same run.

No-op jobs, end to end: N jobs are enqueued in batches, then W worker processes drain them.
Both sides get a fresh database of their own on the same PostgreSQL server, dropped afterwards.

- queue-service: each worker process opens the store from the URL and loops
  claim_jobs(limit=B) -> finish_attempt for each claimed job (concurrently, as a worker with B
  free slots would), the way `queue-service worker` drives the store;
- procrastinate: an async no-op task; jobs deferred with batch_defer_async in batches of B;
  W processes each run `run_worker_async(wait=False, concurrency=C)` until the queue is empty.

Throughput is N / (enqueue time + drain time); enqueue and drain rates are reported apart.
Issue 10's target: >= 5,000 jobs/s through the store with 4 worker processes, and >= 2x
procrastinate.

    python bench/bench_pg.py [--jobs 20000] [--workers 4] [--batch 100] [--concurrency 16]
        [--dsn postgresql://127.0.0.1:5432/test] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from _common import print_table, write_results

TARGET_JOBS_PER_S = 5_000
TARGET_RATIO = 2.0
PLUGIN = "bench-noop"


# -- databases ------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@contextmanager
def scratch_database(dsn: str, label: str) -> Iterator[str]:
    """A new database on the server `dsn` names, dropped afterwards."""
    import psycopg

    name = f"qs_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_processes(target: Any, args: tuple[Any, ...], count: int) -> float:
    """Start `count` processes of target(*args, start_at), all released at one moment;
    returns the seconds from that moment until the last one exits."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(count + 1)
    procs = [context.Process(target=target, args=(*args, ready)) for _ in range(count)]
    for proc in procs:
        proc.start()
    ready.wait()
    start = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - start
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes failed with exit codes {failed}")
    return elapsed


# -- queue-service --------------------------------------------------------------------


async def _ours_enqueue(url: str, total: int, batch: int) -> float:
    from queue_service.store import NewJob, open_store

    store = await open_store(url)
    try:
        start = time.perf_counter()
        for first in range(0, total, batch):
            count = min(batch, total - first)
            await store.enqueue_many(
                [NewJob(PLUGIN, "noop", {"i": first + i}) for i in range(count)]
            )
        return time.perf_counter() - start
    finally:
        await store.close()


async def _ours_drain(url: str, batch: int, ready: Any) -> None:
    from queue_service.statuses import AttemptStatus, Status
    from queue_service.store import AttemptEnd, open_store

    done = AttemptEnd(status=Status.SUCCEEDED, attempt_status=AttemptStatus.SUCCEEDED, exit_code=0)
    owner = f"bench-{os.getpid()}"
    store = await open_store(url, migrate=False)
    try:
        await asyncio.to_thread(ready.wait)
        while True:
            jobs = await store.claim_jobs(PLUGIN, limit=batch, owner=owner, lease_seconds=60)
            if not jobs:
                break
            await asyncio.gather(
                *(
                    store.finish_attempt(
                        job.job_id, plugin=PLUGIN, attempt=job.attempt, owner=owner, end=done
                    )
                    for job in jobs
                )
            )
    finally:
        await store.close()


def ours_worker(url: str, batch: int, ready: Any) -> None:
    asyncio.run(_ours_drain(url, batch, ready))


async def _ours_count(url: str) -> dict[str, int]:
    from queue_service.statuses import Status
    from queue_service.store import JobFilter, open_store

    store = await open_store(url, migrate=False)
    try:
        return {
            status.value: (await store.list_jobs(JobFilter(statuses=(status,)), limit=1)).total
            for status in (Status.SUCCEEDED, Status.QUEUED, Status.RUNNING)
        }
    finally:
        await store.close()


def ours(dsn: str, total: int, workers: int, batch: int) -> dict[str, Any]:
    with scratch_database(dsn, "qs") as url:
        enqueue_s = asyncio.run(_ours_enqueue(url, total, batch))
        drain_s = run_processes(ours_worker, (url, batch), workers)
        counts = asyncio.run(_ours_count(url))
    if counts["succeeded"] != total:
        raise RuntimeError(f"queue-service drained {counts} of {total} jobs")
    return summary(total, enqueue_s, drain_s)


# -- procrastinate --------------------------------------------------------------------


def procrastinate_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i: int) -> None:
        return None

    return app


async def _procrastinate_enqueue(url: str, total: int, batch: int) -> float:
    app = procrastinate_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks["noop"]
        start = time.perf_counter()
        for first in range(0, total, batch):
            count = min(batch, total - first)
            await task.batch_defer_async(*({"i": first + i} for i in range(count)))
        return time.perf_counter() - start


async def _procrastinate_drain(url: str, concurrency: int, ready: Any) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        await asyncio.to_thread(ready.wait)
        await app.run_worker_async(
            wait=False,
            concurrency=concurrency,
            install_signal_handlers=False,
            delete_jobs="never",
        )


def procrastinate_worker(url: str, concurrency: int, ready: Any) -> None:
    import logging

    logging.disable(logging.INFO)
    asyncio.run(_procrastinate_drain(url, concurrency, ready))


def procrastinate_done(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def procrastinate_run(dsn: str, total: int, workers: int, batch: int, conc: int) -> dict[str, Any]:
    with scratch_database(dsn, "procrastinate") as url:
        enqueue_s = asyncio.run(_procrastinate_enqueue(url, total, batch))
        drain_s = run_processes(procrastinate_worker, (url, conc), workers)
        succeeded = procrastinate_done(url)
    if succeeded != total:
        raise RuntimeError(f"procrastinate drained {succeeded} of {total} jobs")
    return summary(total, enqueue_s, drain_s)


# -- the run --------------------------------------------------------------------------


def summary(total: int, enqueue_s: float, drain_s: float) -> dict[str, Any]:
    return {
        "jobs": total,
        "enqueue_s": round(enqueue_s, 3),
        "drain_s": round(drain_s, 3),
        "enqueue_per_s": round(total / enqueue_s),
        "drain_per_s": round(total / drain_s),
        "jobs_per_s": round(total / (enqueue_s + drain_s)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("QS_BENCH_PG", "postgresql://127.0.0.1:5432/test")
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16, help="procrastinate's per worker")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs per side")
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.repeat = 2_000, 1

    def best(run: Any, *run_args: Any) -> dict[str, Any]:
        results = [run(*run_args) for _ in range(args.repeat)]
        return max(results, key=lambda r: r["jobs_per_s"])

    ours_result = best(ours, args.dsn, args.jobs, args.workers, args.batch)
    peer = best(procrastinate_run, args.dsn, args.jobs, args.workers, args.batch, args.concurrency)
    ratio = ours_result["jobs_per_s"] / peer["jobs_per_s"]
    print_table(
        ["no-op jobs on PostgreSQL", "enqueue/s", "drain/s", "end to end jobs/s"],
        [
            [f"queue-service store, batch {args.batch}", ours_result["enqueue_per_s"],
             ours_result["drain_per_s"], ours_result["jobs_per_s"]],
            [f"procrastinate, concurrency {args.concurrency}", peer["enqueue_per_s"],
             peer["drain_per_s"], peer["jobs_per_s"]],
        ],
        title=f"{args.jobs:,} jobs, {args.workers} worker processes, best of {args.repeat}: "
        f"{ratio:.2f}x procrastinate",
    )  # fmt: skip
    met = ours_result["jobs_per_s"] >= TARGET_JOBS_PER_S and ratio >= TARGET_RATIO
    print(
        f"target >= {TARGET_JOBS_PER_S:,} jobs/s and >= {TARGET_RATIO}x procrastinate: "
        f"{'met' if met else 'not met'}"
    )
    write_results(
        "pg_queue",
        {
            "settings": vars(args) | {"dsn": urlsplit(args.dsn).hostname},
            "queue_service": ours_result,
            "procrastinate": peer,
            "ratio": round(ratio, 2),
            "met": met,
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 8's comparison: each of queue-service's figures beside its reference, all measured
in one run on this machine, in one table of figures and ratios.

1. queue core: no-op jobs enqueue -> claim -> complete through the store (bench_queue's
   `through_store`, best batch) against the raw sqlite3 claim+complete ceiling (bench_queue's
   `raw_cycles`), huey (SqliteHuey: enqueue, dequeue, execute) and persist-queue
   (SQLiteAckQueue: put, get, ack), the same number of jobs each, every one on a fresh
   database in WAL mode with synchronous=NORMAL;
2. `POST /plugin/echo/poll` over HTTP, 16 keep-alive clients, against `queue-service serve`
   on a fresh database; jobs carry a far `run_after`, so the server's worker leaves them
   queued. After the server stops, the database must hold every job it answered 202 for;
3. plugin jobs: the echo plugin through the worker with 4 slots, against spawning the
   same entrypoint with the same request from 4 threads (the spawn ceiling);
4. listing over HTTP (bench_list's functions): `GET /job/{id}`, plugin polling and the
   50-job page, each against the bare Starlette app in the same run; on the 1M-job fixture
   (--quick: the 50k one);
5. Databricks first sync, end to end from the local fake (bench_ingest's `end_to_end`).

Writes bench/results/compare.json (--quick: compare_quick.json), then the plots
(bench/plot.py).

    python bench/compare.py [--quick] [--only core,post,plugin,listing,ingest]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import bench_ingest
import bench_list
import bench_queue
import plot
from _common import (
    QUEUE_SERVICE,
    REPO,
    copy_db,
    data_dir,
    free_port,
    print_table,
    scenario,
    server,
    server_env,
    wait_for_quiet,
    write_results,
)
from build_db import DEFAULT_JOBS, QUICK_JOBS, ensure_db

from queue_service.bootstrap import load_registry, read_config
from queue_service.plugins.runner import build_request, plugin_environment
from queue_service.statuses import Status
from queue_service.store import JobFilter, NewJob, Store, open_store
from queue_service.timeutil import format_ts, utcnow
from queue_service.worker import Worker

PARTS = ("core", "post", "plugin", "listing", "ingest")
ECHO = "echo"
#: Far enough ahead that the serving process's worker never claims the POSTed jobs.
#: Far enough ahead that the server's worker never claims the benchmark's jobs, within the
#: service's max_run_after_days (365).
NEVER = format_ts(utcnow() + timedelta(days=300))

TARGETS = {
    "core_jobs_per_s": 10_000,
    "core_x_huey": 5.0,
    "core_x_ceiling": 0.5,
    "post_jobs_per_s": 2_000,
    "plugin_x_spawn": 0.9,
    "job_x_bare": 0.6,
    "polling_x_bare": 0.5,
    "page_x_bare": 0.3,
    "ingest_runs_per_s": 5_000,
}


def synchronous_normal(conn: Any) -> str:
    """Give a peer's connection the durability the store uses; return what it reports."""
    conn.execute("PRAGMA synchronous = NORMAL")
    return str(conn.execute("PRAGMA synchronous").fetchone()[0])


# -- 1. queue core -------------------------------------------------------------------


def huey_jobs(path: Path, total: int, batch: int) -> dict[str, Any]:
    """huey's SqliteHuey in its normal (not immediate) mode: `batch` no-op tasks enqueued,
    then dequeued and executed one by one, as its consumer's workers do."""
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=str(path), immediate=False)
    executed = 0

    @huey.task()
    def noop() -> None:
        nonlocal executed
        executed += 1

    pragma = synchronous_normal(huey.storage.conn)
    started = time.perf_counter()
    done = 0
    while done < total:
        size = min(batch, total - done)
        for _ in range(size):
            noop()
        for _ in range(size):
            huey.execute(huey.dequeue())
        done += size
    elapsed = time.perf_counter() - started
    left = huey.pending_count()
    huey.storage.close()
    if executed != total or left:
        raise RuntimeError(f"huey executed {executed} of {total} tasks; {left} still pending")
    return {"jobs_per_s": total / elapsed, "synchronous": pragma}


def persist_queue_jobs(path: Path, total: int, batch: int) -> dict[str, Any]:
    """persist-queue's SQLiteAckQueue: `batch` puts, then get + ack for each."""
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(path), auto_commit=True)
    pragma = synchronous_normal(queue._putter)
    if queue._getter is not queue._putter:
        synchronous_normal(queue._getter)
    started = time.perf_counter()
    done = 0
    while done < total:
        size = min(batch, total - done)
        for _ in range(size):
            queue.put({})
        for _ in range(size):
            queue.ack(queue.get(block=False))
        done += size
    elapsed = time.perf_counter() - started
    acked = queue.acked_count()
    queue.close()
    if acked != total:
        raise RuntimeError(f"persist-queue acked {acked} of {total} items")
    return {"jobs_per_s": total / elapsed, "synchronous": pragma}


def queue_core(tmp: Path, total: int, batches: list[int], repeat: int) -> dict[str, Any]:
    counter = iter(range(100_000))

    def fresh(suffix: str = ".db") -> Path:
        return tmp / f"core-{next(counter)}{suffix}"

    def ours(batch: int) -> dict[str, float]:
        path = asyncio.run(bench_queue.migrated(fresh()))
        return asyncio.run(bench_queue.through_store(path, total, batch, True))

    def ceiling() -> dict[str, float]:
        path = fresh()
        bench_queue.raw_inserts(path, total)
        return {"jobs_per_s": bench_queue.raw_cycles(path, total)}

    def peer(run: Callable[[Path, int, int], dict[str, Any]], batch: int) -> Callable[[], Any]:
        def once() -> dict[str, Any]:
            folder = fresh("")
            folder.mkdir()
            return run(folder / "queue.db" if run is huey_jobs else folder, total, batch)

        return once

    store = {b: bench_queue.best_of(repeat, ours, b) for b in batches}
    best = max(store, key=lambda b: store[b]["jobs_per_s"])
    out: dict[str, Any] = {
        "jobs": total,
        "best_of": repeat,
        "store_by_batch": store,
        "best_batch": best,
        "store": store[best],
        "ceiling": bench_queue.best_of(repeat, ceiling),
        # Each peer operation is its own transaction, so the batch barely matters to them;
        # they run at the store's best batch.
        "huey": bench_queue.best_of(repeat, peer(huey_jobs, best)),
        "persist_queue": bench_queue.best_of(repeat, peer(persist_queue_jobs, best)),
    }
    print_table(
        ["queue core, no-op jobs end to end", "jobs/s", "CPU us/job"],
        [
            *[
                [f"queue-service store, batch {b}", round(r["jobs_per_s"]),
                 round(r["cpu_us_per_job"], 1)]
                for b, r in store.items()
            ],
            ["raw sqlite3 claim+complete (ceiling)", round(out["ceiling"]["jobs_per_s"]), "-"],
            ["huey SqliteHuey", round(out["huey"]["jobs_per_s"]), "-"],
            ["persist-queue SQLiteAckQueue", round(out["persist_queue"]["jobs_per_s"]), "-"],
        ],
        title=f"queue core, {total:,} jobs per run, best of {repeat}",
    )  # fmt: skip
    return out


# -- 2. POST /plugin/echo/poll over HTTP -----------------------------------------------


def echo_config(tmp: Path, workers: int = 4) -> Path:
    """A config that loads the repository's plugins (echo among them)."""
    config = tmp / f"echo-{workers}.toml"
    plugins = json.dumps(str(REPO / "plugins"))
    config.write_text(f"[service]\nplugin_dirs = [{plugins}]\nworkers = {workers}\n")
    return config


async def count_jobs(db: Path, plugin: str, statuses: tuple[Status, ...] = ()) -> int:
    """The store's exact total of `plugin`'s jobs (in `statuses`, when given)."""
    store = await open_store(str(db))
    try:
        return await total_of(store, plugin, statuses)
    finally:
        await store.close()


async def total_of(store: Store, plugin: str, statuses: tuple[Status, ...] = ()) -> int:
    page = await store.list_jobs(JobFilter(plugin=plugin, statuses=statuses), limit=1)
    return page.total


def http_enqueue(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    db = tmp / "enqueue.db"
    token = bench_list.create_token(db, "plugin:ro")
    body = json.dumps({"payload": {"bench": True}, "run_after": NEVER}).encode()
    port = free_port()
    command = [
        QUEUE_SERVICE, "serve", "--db", str(db), "--host", "127.0.0.1", "--port", str(port),
        "--config", str(echo_config(tmp)), "--log-level", "info",
    ]  # fmt: skip
    path = f"/plugin/{ECHO}/poll"
    with server(command, port, tmp / "serve-enqueue.log", server_env()) as pid:
        result = scenario(f"POST {path}", pid, port, [path], token, args, tmp, body)
    # The server has stopped (and closed its store): what it answered 202 for must be there.
    accepted = result["answered"].get("202", 0)
    stored = asyncio.run(count_jobs(db, ECHO))
    result.update(
        accepted_with_warmup=accepted,
        stored_after_stop=stored,
        durable=stored == accepted,
        jobs_per_s=result["statuses"].get("202", 0) / result["seconds"],
    )
    print(
        f"  accepted {accepted:,} (warm-up included), {stored:,} in the database after the "
        f"server stopped: {'durable' if stored == accepted else 'MISMATCH'}"
    )
    return result


# -- 3. plugin jobs: worker against the spawn ceiling ------------------------------------


async def through_worker(tmp: Path, db: Path, count: int, slots: int) -> dict[str, Any]:
    config = read_config(str(echo_config(tmp, slots)))
    store = await open_store(str(db))
    try:
        await store.enqueue_many(
            [NewJob(ECHO, "poll", payload={"n": i}, max_attempts=1) for i in range(count)]
        )
        worker = Worker(store, load_registry(config), config)
        stop = asyncio.Event()
        active = (Status.QUEUED, Status.RUNNING)
        started = time.perf_counter()
        running = asyncio.create_task(worker.run(stop))
        deadline = started + max(60.0, count)  # bounded: at least 1 job/s, or give up
        # The worker signals nothing when the queue runs dry: watch the store.
        while time.perf_counter() < deadline:
            if not await total_of(store, ECHO, active):
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        await running
        succeeded = await total_of(store, ECHO, (Status.SUCCEEDED,))
    finally:
        await store.close()
    if succeeded != count:
        raise RuntimeError(f"the worker finished {succeeded} of {count} echo jobs")
    return {"jobs": count, "seconds": round(elapsed, 3), "jobs_per_s": count / elapsed}


def spawn_ceiling(tmp: Path, count: int, threads: int) -> dict[str, Any]:
    """The echo entrypoint spawned directly, `threads` at a time, with the request the
    worker sends (same builder, environment and folder)."""
    config = read_config(str(echo_config(tmp, threads)))
    plugin = load_registry(config).get(ECHO)
    if plugin is None or not plugin.valid:
        raise RuntimeError(f"the echo plugin is not usable: {plugin and plugin.error}")
    env = plugin_environment()
    deadline_at = "2999-01-01T00:00:00.000000Z"

    def run(i: int) -> bool:
        request = build_request(
            "poll", plugin_name=ECHO, job_id=f"bench-{i}", payload={"n": i},
            config=plugin.config, state={}, deadline_at=deadline_at,
        )  # fmt: skip
        done = subprocess.run(
            [str(plugin.entrypoint)],
            input=json.dumps(request).encode() + b"\n",
            capture_output=True,
            cwd=plugin.folder,
            env=env,
            timeout=60,
        )
        return bool(json.loads(done.stdout).get("status") == "ok")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ok = sum(pool.map(run, range(count)))
    elapsed = time.perf_counter() - started
    if ok != count:
        raise RuntimeError(f"{count - ok} of {count} direct echo runs did not answer ok")
    return {"jobs": count, "seconds": round(elapsed, 3), "jobs_per_s": count / elapsed}


def plugin_jobs(tmp: Path, count: int, slots: int) -> dict[str, Any]:
    """Ceiling, worker, ceiling: the ratio uses the mean of the two ceiling runs."""
    before = spawn_ceiling(tmp, count, slots)
    db = asyncio.run(bench_queue.migrated(tmp / "plugin.db"))
    worker = asyncio.run(through_worker(tmp, db, count, slots))
    after = spawn_ceiling(tmp, count, slots)
    ceiling = (before["jobs_per_s"] + after["jobs_per_s"]) / 2
    print_table(
        ["echo plugin, no-op payload", "jobs", "seconds", "jobs/s"],
        [
            [f"spawn {slots} threads (before)", count, before["seconds"], before["jobs_per_s"]],
            [f"worker, {slots} slots", count, worker["seconds"], worker["jobs_per_s"]],
            [f"spawn {slots} threads (after)", count, after["seconds"], after["jobs_per_s"]],
        ],
        title="plugin jobs: the worker against the spawn ceiling",
    )
    env_path = plugin_environment().get("PATH")
    return {
        "slots": slots,
        # The entrypoint's `#!/usr/bin/env python3` resolves through PATH (a pyenv shim
        # costs a shell start per job), the same for both sides.
        "python3": shutil.which("python3", path=env_path),
        "worker": worker,
        "spawn_before": before,
        "spawn_after": after,
        "spawn_jobs_per_s": ceiling,
    }


# -- 4. listing over HTTP, 5. Databricks ingest -------------------------------------------


def listing(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    source, meta = ensure_db(QUICK_JOBS if args.quick else DEFAULT_JOBS)
    db = tmp / "list.db"
    copy_db(source, db)
    token = bench_list.create_token(db)
    first_page, job_paths = asyncio.run(bench_list.http_fixture(db, token, meta))
    runs = bench_list.listing_runs(meta, job_paths)
    http = bench_list.http_benchmark(db, token, first_page, runs, args)
    summary = bench_list.report_http(http)
    # Both servers run on uvicorn; its fast stack is used only where these import.
    stack = {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop")}
    return {"jobs": meta["jobs"], "installed": stack, **http, "summary": summary}


def ingest(tmp: Path, runs: int) -> dict[str, Any]:
    bench_ingest.sdk_environment(tmp)
    db = asyncio.run(bench_ingest.migrated(tmp / "ingest.db"))
    e2e = asyncio.run(bench_ingest.end_to_end(db, runs))
    first = e2e["first sync"]
    print(f"\nDatabricks first sync: {first['runs']:,} runs, {first['runs_per_s']:,.0f} runs/s")
    return e2e


# -- the table -------------------------------------------------------------------------


def ratio_of(results: dict[str, Any], name: str) -> tuple[float, float, float]:
    """(product req/s, bare req/s, ratio) of a listing scenario."""
    summary = results["listing"]["summary"]
    (label,) = [k for k in summary["ratios"] if k.startswith(f"{name} [serve")]
    rps = next(s["rps"] for s in results["listing"]["scenarios"] if s["name"] == label)
    return rps, summary["bare_rps"], summary["ratios"][label]


def yes(met: bool) -> str:
    return "yes" if met else "NO"


def summarize(results: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    """Table rows and the targets: measured, target, met."""
    rows: list[list[Any]] = []
    targets: dict[str, Any] = {}

    def add(
        key: str,
        label: str,
        ours: float,
        reference: str,
        measured: float,
        unit: str,
        *,
        holds: bool = True,
    ) -> None:
        target = TARGETS[key]
        met = measured >= target and holds
        targets[key] = {"target": target, "measured": round(measured, 3), "met": met}
        shown = f"{measured:.2f}x" if unit == "x" else f"{measured:,.0f}"
        rows.append([label, round(ours), reference, shown, f">= {target:,g}{unit}", yes(met)])

    if "core" in results:
        core = results["core"]
        ours = core["store"]["jobs_per_s"]
        label = f"queue core, no-op jobs (store, batch {core['best_batch']})"
        add("core_jobs_per_s", label, ours, "-", ours, " jobs/s")
        for key, peer, name in (
            ("core_x_ceiling", "ceiling", "raw sqlite3 claim+complete"),
            ("core_x_huey", "huey", "huey SqliteHuey"),
        ):
            rate = core[peer]["jobs_per_s"]
            add(key, "  against", ours, f"{name} {rate:,.0f}", ours / rate, "x")
        rate = core["persist_queue"]["jobs_per_s"]
        targets["core_x_persist_queue"] = {"measured": round(ours / rate, 3)}
        rows.append(
            [
                "  against",
                round(ours),
                f"persist-queue {rate:,.0f}",
                f"{ours / rate:.2f}x",
                "-",
                "-",
            ]
        )
    if "post" in results:
        post = results["post"]
        durable = "durable" if post["durable"] else "NOT DURABLE"
        label = f"POST /plugin/echo/poll, {post['connections']} clients, {durable}"
        rate = post["jobs_per_s"]
        add("post_jobs_per_s", label, rate, "-", rate, " jobs/s", holds=post["durable"])
    if "plugin" in results:
        plug = results["plugin"]
        ours, spawn = plug["worker"]["jobs_per_s"], plug["spawn_jobs_per_s"]
        label = f"echo plugin, worker {plug['slots']} slots"
        add("plugin_x_spawn", label, ours, f"spawn ceiling {spawn:,.0f}", ours / spawn, "x")
    if "listing" in results:
        jobs = results["listing"]["jobs"]
        for key, name in (
            ("job_x_bare", "GET /job/{id}"),
            ("polling_x_bare", "plugin polling (plugin+command, limit=1)"),
            ("page_x_bare", bench_list.NEWEST_PAGE),
        ):
            rps, bare, ratio = ratio_of(results, name)
            add(key, f"{name}, {jobs:,} jobs", rps, f"bare Starlette {bare:,.0f}", ratio, "x")
    if "ingest" in results:
        rate = results["ingest"]["first sync"]["runs_per_s"]
        add("ingest_runs_per_s", "Databricks first sync", rate, "-", rate, " runs/s")
    return rows, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--jobs", type=int, help="queue-core jobs per run (default 20,000)")
    parser.add_argument("--plugin-jobs", type=int, help="echo jobs per run (default 1,000)")
    parser.add_argument("--runs", type=int, help="Databricks runs (default 50,000)")
    parser.add_argument("--seconds", type=float, help="seconds per HTTP run (default 10)")
    parser.add_argument("--warmup", type=float, help="HTTP warm-up seconds (default 2)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument(
        "--wait", type=float, default=180, help="max seconds to wait for idle CPUs (default 180)"
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {PARTS}")
    quick = args.quick
    total = args.jobs or (2_000 if quick else 20_000)
    args.seconds = args.seconds or (2.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)

    quiet = wait_for_quiet("compare", limit_s=0 if quick else args.wait)
    tmp = Path(tempfile.mkdtemp(prefix="compare-", dir=data_dir()))
    results: dict[str, Any] = {"parts": parts, "connections": args.connections, **quiet}
    try:
        if "core" in parts:
            batches = [50, 100] if quick else [10, 50, 100, 500]
            results["core"] = queue_core(tmp, total, batches, 1 if quick else 3)
        if "post" in parts:
            print(f"\nHTTP enqueue: {args.connections} clients, {args.seconds:g} s")
            results["post"] = http_enqueue(tmp, args)
        if "plugin" in parts:
            count = args.plugin_jobs or (40 if quick else 1_000)
            results["plugin"] = plugin_jobs(tmp, count, slots=4)
        if "listing" in parts:
            print(f"\nHTTP listing against bare Starlette: {args.seconds:g} s per run")
            results["listing"] = listing(tmp, args)
        if "ingest" in parts:
            results["ingest"] = ingest(tmp, args.runs or (3_000 if quick else 50_000))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows, targets = summarize(results)
    results["targets"] = targets
    print_table(
        ["scenario (issue 8)", "queue-service /s", "reference, same run /s", "figure", "target",
         "met"],
        rows,
        title="queue-service against its references, one run",
    )  # fmt: skip
    write_results("compare", results, quick=quick)
    plot.main(["--quick"] if quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())

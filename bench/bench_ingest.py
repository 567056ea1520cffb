"""Databricks ingest: runs/s into the store, and end to end from a local Jobs API 2.2 server.

1. store only: runs in the Jobs API JSON shape are mapped with the product's map_run (timed
   on its own) and written with SQLiteStore.record_sync_page, one page per call, for page
   sizes 25 (the API's maximum page), 100 and 1000 (the sync writes up to 500 runs per call):
   new runs (inserts), the same runs again (unchanged), and the same runs with a new state
   (updates);
2. end to end: DatabricksSync.sync_once() (databricks-sdk over HTTP, mapping, store) against
   tests/fakes/databricks_server.py running in its own process (bench/_fake_databricks.py)
   with N finished runs; then a second, incremental sync.

Target: >= 5,000 runs/s from a local server.

    python bench/bench_ingest.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    PYTHON,
    data_dir,
    print_table,
    proc_cpu_seconds,
    wait_for_quiet,
    write_results,
)

from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig
from queue_service.databricks.mapping import map_run
from queue_service.databricks.sync import DatabricksSync
from queue_service.store import ExternalJob, SQLiteStore, SyncState

TARGET_RUNS_PER_S = 5_000
HOST = "https://adb-1234567890123456.7.azuredatabricks.net"
TOKEN_ENV = "BENCH_DATABRICKS_TOKEN"


def raw_runs(count: int, state: str = "TERMINATED", result: str | None = "SUCCESS") -> list[Any]:
    """Runs as runs/list returns them (the fake server's shape), newest first."""
    newest = int(time.time() * 1000) - 60_000
    runs = []
    for i in range(count):
        run_id = 900_000_000 + count - i
        start = newest - i * 1_000
        run: dict[str, Any] = {
            "job_id": 100 + i % 12,
            "run_id": run_id,
            "original_attempt_run_id": run_id,
            "number_in_job": run_id,
            "creator_user_name": "someone@example.com",
            "run_name": f"bench-job-{i % 12:02d}",
            "run_page_url": f"{HOST}/?o=1#job/{100 + i % 12}/run/{run_id}",
            "run_type": "JOB_RUN",
            "trigger": "PERIODIC",
            "attempt_number": 0,
            "start_time": start,
            "setup_duration": 0,
            "execution_duration": 0,
            "cleanup_duration": 0,
            "state": {"life_cycle_state": state, "state_message": ""},
            "status": {"state": state},
        }
        if result is not None:
            run["end_time"] = start + 500
            run["run_duration"] = 500
            run["state"]["result_state"] = result
            run["status"]["termination_details"] = {
                "code": result,
                "type": "SUCCESS",
                "message": "",
            }
        runs.append(run)
    return runs


def mapped(runs: list[Any]) -> tuple[list[ExternalJob], float]:
    started = time.perf_counter()
    jobs = [
        map_run(run, workspace="bench", host=HOST, job_name=f"bench-job-{run['job_id'] - 100:02d}")
        for run in runs
    ]
    return jobs, time.perf_counter() - started


async def store_only(path: Path, runs: int, page: int) -> dict[str, Any]:
    """Insert, re-write unchanged, then update `runs` runs through record_sync_page."""
    running, map_running = mapped(raw_runs(runs, "RUNNING", None))
    finished, map_finished = mapped(raw_runs(runs))
    store = SQLiteStore(path)
    await store.open()
    out: dict[str, Any] = {
        "page": page,
        "map_us_per_run": (map_running + map_finished) / 2 / runs * 1e6,
    }
    try:
        state = SyncState(workspace="bench", host=HOST)
        for phase, jobs in (("insert", running), ("unchanged", running), ("update", finished)):
            counts = [0, 0, 0]
            started = time.perf_counter()
            for offset in range(0, runs, page):
                state.runs_ingested += len(jobs[offset : offset + page])
                c = await store.record_sync_page(state, jobs[offset : offset + page])
                counts[0] += c.inserted
                counts[1] += c.updated
                counts[2] += c.unchanged
            elapsed = time.perf_counter() - started
            expected = {"insert": 0, "update": 1, "unchanged": 2}[phase]
            if counts[expected] != runs:
                raise RuntimeError(f"{phase}: expected {runs} {phase}, got {counts}")
            out[phase] = runs / elapsed
    finally:
        await store.close()
    return out


def start_fake(runs: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = subprocess.Popen(
        [PYTHON, str(BENCH / "_fake_databricks.py"), "--runs", str(runs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the fake Databricks server did not start")
    return proc, json.loads(line)


def stop_fake(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sdk_environment(tmp: Path) -> None:
    """Keep the SDK from resolving credentials or profiles of this machine."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            del os.environ[name]
    os.environ["DATABRICKS_CONFIG_FILE"] = str(tmp / "no-databrickscfg")
    # The fake has no /.well-known/databricks-config; the SDK logs that at WARNING.
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)


async def end_to_end(path: Path, runs: int) -> dict[str, Any]:
    proc, fake = start_fake(runs)
    try:
        os.environ[TOKEN_ENV] = fake["token"]
        config = DatabricksConfig(
            workspaces=[WorkspaceConfig(name="bench", host=fake["url"], token_env=TOKEN_ENV)],
            lookback_hours=48,
            retry_timeout_seconds=30,
            http_timeout_seconds=30,
        )
        store = SQLiteStore(path)
        await store.open()
        out: dict[str, Any] = {"runs_on_server": fake["runs"]}
        try:
            for phase in ("first sync", "incremental sync"):
                sync = DatabricksSync(config, store)
                fake_cpu = proc_cpu_seconds(proc.pid)
                cpu = time.process_time()
                started = time.perf_counter()
                summary = await sync.sync_once()
                elapsed = time.perf_counter() - started
                (result,) = summary.workspaces
                if not result.ok:
                    raise RuntimeError(f"{phase} failed: {result.error}")
                out[phase] = {
                    "runs": result.runs,
                    "pages": result.pages,
                    "inserted": result.inserted,
                    "updated": result.updated,
                    "unchanged": result.unchanged,
                    "seconds": round(elapsed, 3),
                    "runs_per_s": result.runs / elapsed,
                    "sync_process_cpu": round((time.process_time() - cpu) / elapsed, 2),
                    "fake_server_cpu": round((proc_cpu_seconds(proc.pid) - fake_cpu) / elapsed, 2),
                }
        finally:
            await store.close()
    finally:
        stop_fake(proc)
    if out["first sync"]["inserted"] != fake["runs"]:
        raise RuntimeError(
            f"first sync stored {out['first sync']['inserted']} of {fake['runs']} runs"
        )
    return out


async def migrated(path: Path) -> Path:
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 50,000)")
    parser.add_argument(
        "--wait", type=float, default=180, help="max seconds to wait for idle CPUs (default 180)"
    )
    args = parser.parse_args(argv)
    runs = args.runs or (3_000 if args.quick else 50_000)
    quiet = wait_for_quiet("bench_ingest", limit_s=0 if args.quick else args.wait)
    tmp = Path(tempfile.mkdtemp(prefix="ingest-", dir=data_dir()))
    results: dict[str, Any] = {"runs": runs, **quiet}
    try:
        sdk_environment(tmp)
        rows = []
        results["store_only"] = []
        for number, page in enumerate((25, 100, 1000)):
            r = asyncio.run(
                store_only(asyncio.run(migrated(tmp / f"store-{number}.db")), runs, page)
            )
            results["store_only"].append(r)
            rows.append(
                [
                    f"record_sync_page, page {page}",
                    r["insert"],
                    r["unchanged"],
                    r["update"],
                    round(r["map_us_per_run"], 1),
                ]
            )
        headers = ["store only (mapped runs)", "new runs/s", "unchanged runs/s", "updated runs/s"]
        print_table([*headers, "map_run us/run"], rows, title=f"Databricks ingest, {runs:,} runs")
        e2e = asyncio.run(end_to_end(asyncio.run(migrated(tmp / "e2e.db")), runs))
        results["end_to_end"] = e2e
        columns = ("runs", "pages", "inserted", "updated", "seconds", "runs_per_s")
        print_table(
            ["end to end (sdk -> fake)", "runs", "pages", "new", "updated", "seconds", "runs/s",
             "sync CPU", "fake CPU"],
            [
                [phase, *(r[c] for c in columns), r["sync_process_cpu"], r["fake_server_cpu"]]
                for phase, r in e2e.items()
                if isinstance(r, dict)
            ],
            title=f"target: >= {TARGET_RUNS_PER_S:,} runs/s from a local server",
        )  # fmt: skip
        rate = e2e["first sync"]["runs_per_s"]
        met = rate >= TARGET_RUNS_PER_S
        results["targets"] = {
            "end_to_end_runs_per_s": {
                "target": TARGET_RUNS_PER_S,
                "measured": round(rate),
                "met": met,
            }
        }
        print(f"\nend to end: {rate:,.0f} runs/s (target {TARGET_RUNS_PER_S:,})")
        write_results("bench_ingest", results, quick=args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Contention: processes that enqueue and work on one database at once (an SQLite file, or a
PostgreSQL schema), while a `serve` process on the same database answers the API.

`python -m tests.reliability.contention contend ...` runs one contender process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from queue_service.statuses import AttemptStatus, Status
from queue_service.store import JobFilter, NewJob, StoreError, create_store
from queue_service.store.types import AttemptEnd
from tests.conftest import free_port
from tests.live_server import seed_database
from tests.processes import (
    Processes,
    healthy,
    wait_until,
    write_config,
)
from tests.reliability._db import (
    Db,
    Log,
    count_mismatches,
    integrity_check,
    is_postgresql,
    quiet,
    read_only,
    status_counts,
)

#: Jobs of the contenders: a plugin that exists, so that a `serve` worker may take some too.
CONTEND_PLUGIN = "instant"
DONE = AttemptEnd(status=Status.SUCCEEDED, attempt_status=AttemptStatus.SUCCEEDED, exit_code=0)


async def contend(db: Db, jobs: int, seed: int, out: Path, contenders: int) -> dict[str, Any]:
    """One contender: enqueue `jobs` jobs (single enqueues and batches), and claim, heartbeat
    and finish jobs of anyone, until every contender has enqueued everything and nothing is
    left. Every store error is recorded, never retried: the test asserts there are none."""
    rng = random.Random(seed)
    owner = f"contender:{os.getpid()}:{seed}"
    store = create_store(str(db))
    await store.open()
    errors: list[str] = []
    claimed: list[tuple[str, int]] = []
    enqueued: list[str] = []
    stale = 0
    remaining = jobs
    done_marker = out.with_suffix(".enqueued")

    async def attempt(action: Any) -> Any:
        try:
            return await action
        except StoreError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return None

    try:
        while True:
            if remaining:
                n = min(remaining, rng.randint(1, 40))
                batch = [NewJob(CONTEND_PLUGIN, "poll", {"n": i}) for i in range(n)]
                if rng.random() < 0.5:
                    results = await attempt(store.enqueue_many(batch))
                else:
                    results = []
                    for job in batch[: rng.randint(1, 5)]:
                        one = await attempt(store.enqueue(job))
                        if one is not None:
                            results.append(one)
                for result in results or []:
                    enqueued.append(result.job_id)
                remaining = jobs - len(enqueued)
                if not remaining:
                    done_marker.write_text("done")
            got = await attempt(
                store.claim_jobs(
                    CONTEND_PLUGIN, limit=rng.randint(1, 40), owner=owner, lease_seconds=600
                )
            )
            got = got or []
            claimed += [(job.job_id, job.attempt) for job in got]
            if got and rng.random() < 0.3:
                await attempt(
                    store.heartbeat(
                        [(j.job_id, j.attempt) for j in got], owner=owner, lease_seconds=600
                    )
                )
            finished = await asyncio.gather(
                *(
                    attempt(
                        store.finish_attempt(
                            j.job_id, plugin=j.plugin, attempt=j.attempt, owner=owner, end=DONE
                        )
                    )
                    for j in got
                )
            )
            stale += sum(1 for ok in finished if not ok)
            if rng.random() < 0.05:
                await attempt(store.recover_expired_leases())
            if got or remaining:
                continue
            everyone = len(list(out.parent.glob("*.enqueued"))) >= contenders
            left = await attempt(
                store.list_jobs(
                    JobFilter(plugin=CONTEND_PLUGIN, statuses=(Status.QUEUED, Status.RUNNING)),
                    limit=1,
                )
            )
            if everyone and left is not None and left.total == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await store.close()
    return {
        "pid": os.getpid(),
        "enqueued": enqueued,
        "claimed": claimed,
        "errors": errors,
        "stale_finishes": stale,
    }


@dataclass
class ContentionReport:
    processes: int = 0
    #: "SQLite" or "PostgreSQL".
    backend: str = "SQLite"
    jobs: int = 0
    claims: int = 0
    double_claims: int = 0
    api_requests: int = 0
    api_failures: int = 0
    http_jobs: int = 0
    store_errors: int = 0
    seconds: float = 0.0
    integrity: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.processes} processes + serve on one {self.backend} database, {self.jobs} jobs in "
            f"{self.seconds:.0f} s ({self.jobs / max(self.seconds, 1e-9):.0f} jobs/s): "
            f"{self.double_claims} double claims, {self.store_errors} store errors, "
            f"{self.api_failures} failed of {self.api_requests} API requests, "
            f"integrity_check {self.integrity}"
        )


def run_contention(
    tmp: Path,
    *,
    processes: int = 4,
    jobs_per_process: int = 5000,
    http_jobs: int = 60,
    time_limit: float = 240.0,
    db: Db | None = None,
    log: Log = quiet,
) -> ContentionReport:
    """`processes` contenders enqueue and work on one database (`db`: a PostgreSQL URL of an
    empty schema; by default an SQLite file in `tmp`) while a `serve` process on the same
    database runs a real worker (it takes some of the contenders' jobs too) and answers API
    readers and HTTP enqueues of ledger jobs."""
    db = tmp / "contention.db" if db is None else db
    report = ContentionReport(
        processes=processes, backend="PostgreSQL" if is_postgresql(db) else "SQLite"
    )
    ledger = tmp / "ledger.txt"
    seeded = asyncio.run(seed_database(db))
    headers = {"Authorization": f"Bearer {seeded.tokens['*']}"}
    config = write_config(tmp, "workers = 2\nlease_seconds = 60\n")
    outs = tmp / "contenders"
    outs.mkdir()
    procs = Processes(tmp)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    failures: list[str] = []
    http_ids: list[str] = []
    stop = threading.Event()
    started = time.monotonic()
    try:
        serve = procs.start(
            "serve", "serve", "--db", str(db), "--port", str(port), "--config", str(config)
        )
        wait_until(lambda: healthy(port), "serve to answer", 30, procs)
        contenders = []
        for n in range(processes):
            contenders.append(
                procs.start_command(
                    f"contender-{n}",
                    [
                        *(sys.executable, "-m", "tests.reliability.contention", "contend"),
                        *("--db", str(db), "--jobs", str(jobs_per_process)),
                        *("--seed", str(n), "--out", str(outs / f"{n}.json")),
                        *("--contenders", str(processes)),
                    ],
                )
            )

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            paths = [
                "/jobs?plugin=instant&status=queued&limit=20",
                "/jobs?plugin=instant&status=ok&limit=100",
                "/jobs?status=running",
                "/jobs?plugin=instant&command=poll&limit=1",
                "/healthz",
            ]
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                while not stop.is_set():
                    path = rng.choice(paths)
                    if http_ids and rng.random() < 0.3:
                        path = f"/job/{rng.choice(http_ids)}"
                    response = http.get(path)
                    with lock:
                        statuses[response.status_code] += 1
                    if response.status_code != 200:
                        failures.append(f"GET {path}: {response.status_code} {response.text}")

        def enqueuer() -> None:
            payload = {"payload": {"ledger": str(ledger)}}
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                for _ in range(http_jobs):
                    if stop.is_set():
                        return
                    response = http.post("/plugin/ledger/poll", json=payload)
                    with lock:
                        statuses[response.status_code] += 1
                    if response.status_code == 202:
                        http_ids.append(response.json()["job_id"])
                    else:
                        failures.append(f"POST: {response.status_code} {response.text}")
                    time.sleep(0.05)

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        threads.append(threading.Thread(target=enqueuer))
        for thread in threads:
            thread.start()
        try:
            for proc in contenders:
                left = max(1.0, time_limit - (time.monotonic() - started))
                proc.wait(timeout=left)
            wait_until(
                lambda: (
                    len(ledger.read_text().splitlines()) >= len(http_ids)
                    if ledger.exists() and len(http_ids) == http_jobs
                    else False
                ),
                "the HTTP-enqueued ledger jobs to run",
                60,
                procs,
            )
            wait_until(
                lambda: all(
                    status_counts(db, plugin)["queued"] + status_counts(db, plugin)["running"] == 0
                    for plugin in (CONTEND_PLUGIN, "ledger")
                ),
                "the queue to drain",
                60,
                procs,
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            for proc in contenders:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        serve.send_signal(signal.SIGTERM)
        if serve.wait(timeout=30) != 0:
            report.problems.append(f"serve exited with {serve.returncode}")
        server_log = procs.log_of(serve)
    finally:
        procs.stop_all()
    report.seconds = time.monotonic() - started
    report.api_requests = sum(statuses.values())
    report.api_failures = len(failures)
    report.problems += failures[:5]
    report.http_jobs = len(http_ids)
    _judge_contention(db, outs, processes, ledger, http_ids, server_log, report)
    return report


def _judge_contention(
    db: Db,
    outs: Path,
    processes: int,
    ledger: Path,
    http_ids: list[str],
    server_log: str,
    report: ContentionReport,
) -> None:
    problems = report.problems
    results = [json.loads((outs / f"{n}.json").read_text()) for n in range(processes)]
    enqueued = [job_id for r in results for job_id in r["enqueued"]]
    claims = Counter(job_id for r in results for job_id, _ in r["claimed"])
    report.claims = sum(claims.values())
    report.double_claims = sum(n - 1 for n in claims.values() if n > 1)
    errors = [e for r in results for e in r["errors"]]
    report.store_errors = len(errors)
    problems += errors[:5]
    for r in results:
        if r["stale_finishes"]:
            problems.append(f"contender {r['pid']}: {r['stale_finishes']} finishes lost a lease")
    with read_only(db) as conn:
        rows = {
            row[0]: (row[1], row[2], row[3])
            for row in conn.execute(
                "SELECT job_id, status, attempt, last_error FROM jobs WHERE plugin IN (?, ?)",
                (CONTEND_PLUGIN, "ledger"),
            )
        }
        attempt_rows = Counter(
            row[0]
            for row in conn.execute(
                "SELECT job_id FROM job_attempts WHERE job_id IN "
                "(SELECT job_id FROM jobs WHERE plugin IN (?, ?))",
                (CONTEND_PLUGIN, "ledger"),
            )
        )
    report.jobs = len(enqueued) + len(http_ids)
    if len(set(enqueued)) != len(enqueued):
        problems.append("a job id was handed out twice")
    for job_id in [*enqueued, *http_ids]:
        row = rows.get(job_id)
        if row is None:
            problems.append(f"job {job_id} vanished")
            continue
        status, attempt, last_error = row
        if status != "succeeded" or attempt != 1 or attempt_rows[job_id] != 1:
            problems.append(
                f"job {job_id}: {status}, attempt {attempt}, {attempt_rows[job_id]} attempt "
                f"rows (claimed once each and succeeded is expected); last_error {last_error!r}"
            )
        if last_error and ("locked" in last_error or "busy" in last_error):
            problems.append(f"job {job_id}: {last_error}")
    ran = Counter(ledger.read_text().split()) if ledger.exists() else Counter()
    for job_id in http_ids:
        if ran[job_id] != 1:
            problems.append(f"HTTP job {job_id} ran {ran[job_id]} times")
    for word in ("database is locked", "database is busy", "Traceback"):
        if word in server_log:
            problems.append(f"the server log says {word!r}")
    report.integrity = integrity_check(db)
    mismatches = count_mismatches(db)
    if mismatches:
        problems.append(f"job_counts disagree with jobs: {mismatches[:3]}")


# --- command line (contender processes) ------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.contention")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("contend", help="one contender process (see run_contention)")
    one.add_argument("--db", required=True, help="an SQLite file or a PostgreSQL URL")
    one.add_argument("--jobs", type=int, required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--contenders", type=int, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(contend(args.db, args.jobs, args.seed, args.out, args.contenders))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

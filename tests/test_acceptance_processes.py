"""Acceptance: real `queue-service worker` and `serve` OS processes sharing one database: an
SQLite file, and a PostgreSQL schema (every test runs on both backends).

- a worker SIGKILLed mid-job, and another worker process recovering the job;
- three worker processes running 300 jobs, each exactly once (a ledger file proves it);
- SIGTERM returning running jobs to queued without spending an attempt;
- two `serve` processes firing each schedule slot once.

Every wait is bounded and names what it waited for; every process is stopped in `finally`.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queue_service.statuses import Status
from queue_service.store import Job, JobFilter, NewJob
from queue_service.timeutil import parse_rfc3339
from tests.conftest import free_port
from tests.processes import (
    REPO,
    Processes,
    alive,
    enqueue_many,
    healthy,
    kill_quietly,
    read_pid,
    wait_until,
    with_store,
    worker,
    write_config,
)

pytestmark = pytest.mark.slow

#: What `--db` names: an SQLite file or a PostgreSQL URL.
Db = Path | str


@pytest.fixture
def db(db_url: str) -> Db:
    """The database the test's processes share: a new SQLite file, or a fresh PostgreSQL
    schema (conftest's db_url: each test runs once per backend)."""
    return db_url


# --- the database, read through the store ------------------------------------------------------


def get_job(db: Db, job_id: str) -> Job:
    job = with_store(db, lambda s: s.get_job(job_id))
    assert job is not None, f"job {job_id} is gone"
    return job


def job_if(db: Db, job_id: str, status: Status) -> Job | None:
    """The job when it has `status`, else None (for wait_until)."""
    job = get_job(db, job_id)
    return job if job.status is status else None


def attempts_of(db: Db, job_id: str) -> list[dict[str, Any]]:
    return with_store(db, lambda s: s.get_attempts(job_id))


def count(db: Db, status: Status, plugin: str) -> int:
    filters = JobFilter(plugin=plugin, statuses=(status,))
    page = with_store(db, lambda s: s.list_jobs(filters, limit=1))
    return int(page.total)


def cli_enqueue(db: Db, config: Path, plugin: str, payload: dict[str, Any]) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queue_service",
            "enqueue",
            plugin,
            "poll",
            "--payload",
            json.dumps(payload),
            "--db",
            str(db),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- crash recovery across processes ------------------------------------------------------------


def test_a_sigkilled_workers_job_is_recovered_by_another_worker_process(
    db: Db, tmp_path: Path, processes: Processes
) -> None:
    config = write_config(
        tmp_path, "workers = 2\nlease_seconds = 2\n\n[plugins.sleepy]\nmax_attempts = 3\n"
    )
    pid_file = tmp_path / "plugin.pid"
    first = worker(processes, "worker-a", db, config)
    job_id = cli_enqueue(db, config, "sleepy", {"seconds": 2, "pid_file": str(pid_file)})
    plugin_pids: list[int] = []
    try:
        plugin_pids.append(
            wait_until(lambda: read_pid(pid_file), "worker A to start the job", 20, processes)
        )
        running = get_job(db, job_id)
        assert (running.status, running.attempt) == (Status.RUNNING, 1), running

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        pid_file.unlink()

        second = worker(processes, "worker-b", db, config)
        plugin_pids.append(
            wait_until(lambda: read_pid(pid_file), "worker B to run the job again", 20, processes)
        )
        done = wait_until(
            lambda: job_if(db, job_id, Status.SUCCEEDED),
            "the recovered job to succeed",
            20,
            processes,
        )
        assert done.attempt == 2 and done.result == {"slept": 2}
        attempts = attempts_of(db, job_id)
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "lost"), (2, "succeeded")]
        assert "lease expired" in attempts[0]["error"]
        assert "lost its lease" in processes.log_of(second)
    finally:
        kill_quietly(plugin_pids)


# --- three workers, one database ---------------------------------------------------------------


def test_three_worker_processes_run_each_of_300_jobs_exactly_once(
    db: Db, tmp_path: Path, processes: Processes
) -> None:
    ledger = tmp_path / "ledger.txt"
    # A generous lease: this test is about claims, not recovery; a loaded machine must not
    # turn a slow heartbeat into a legitimate second run.
    config = write_config(tmp_path, "workers = 4\nlease_seconds = 30\n")
    with_store(db, lambda s: s.schema_version())  # create the file before the workers race
    workers = [worker(processes, f"worker-{n}", db, config) for n in range(3)]
    for proc in workers:
        wait_until(
            lambda: "queue-service worker on" in processes.log_of(proc),
            "every worker to start",
            20,
            processes,
        )

    # Every job waits at a gate until 12 of them run at once. A worker holds at most 4 (its
    # `workers`), so all three processes are then claiming, whatever the timing.
    gate = tmp_path / "gate"
    payload = {"ledger": str(ledger), "with_worker_pid": True, "gate": str(gate)}
    ids = enqueue_many(db, [NewJob("ledger", "poll", payload) for _ in range(300)])
    assert len(set(ids)) == 300
    wait_until(
        lambda: count(db, Status.RUNNING, "ledger") == 12,
        "12 ledger jobs running at the gate, 4 in each worker",
        30,
        processes,
    )
    gate.touch()

    wait_until(
        lambda: count(db, Status.SUCCEEDED, "ledger") == 300 or None,
        "300 ledger jobs to succeed",
        60,
        processes,
    )
    lines = ledger.read_text().splitlines()
    assert len(lines) == 300, f"{len(lines)} runs for 300 jobs"
    ran = [line.split()[0] for line in lines]
    assert set(ran) == set(ids) and len(set(ran)) == 300
    by_worker = Counter(int(line.split()[1]) for line in lines)
    assert set(by_worker) == {p.pid for p in workers}, by_worker
    for status in (Status.QUEUED, Status.RUNNING, Status.FAILED, Status.DEAD):
        assert count(db, status, "ledger") == 0
    page = with_store(db, lambda s: s.list_jobs(JobFilter(plugin="ledger"), limit=300))
    assert {j.attempt for j in page.jobs} == {1}, "no job needed a second attempt"


# --- graceful shutdown ---------------------------------------------------------------------------


def test_sigterm_returns_running_jobs_to_queued_without_spending_an_attempt(
    db: Db, tmp_path: Path, processes: Processes
) -> None:
    config = write_config(
        tmp_path, "workers = 2\nlease_seconds = 2\nshutdown_grace_seconds = 0.5\n"
    )
    pid_files = [tmp_path / "one.pid", tmp_path / "two.pid"]
    ids = enqueue_many(
        db, [NewJob("sleepy", "poll", {"seconds": 60, "pid_file": str(p)}) for p in pid_files]
    )
    proc = worker(processes, "worker", db, config)
    pids: list[int] = []
    try:
        for path in pid_files:
            pids.append(wait_until(lambda: read_pid(path), "both jobs to start", 20, processes))
        assert all(get_job(db, job_id).status is Status.RUNNING for job_id in ids)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, processes.log_of(proc)
        assert time.monotonic() - started < 15, "shutdown took longer than grace + kill grace"

        for job_id in ids:
            job = get_job(db, job_id)
            assert job.status is Status.QUEUED, job
            assert job.attempt == 0, "the interrupted attempt must not be spent"
            assert job.started_at is None and job.lease_expires_at is None
            # On record as interrupted, not counted.
            assert [(a["attempt"], a["status"]) for a in attempts_of(db, job_id)] == [
                (1, "interrupted")
            ]
        wait_until(lambda: not any(alive(pid) for pid in pids), "the plugins to be stopped", 5)
    finally:
        kill_quietly(pids)


# --- schedules with two serve processes ----------------------------------------------------------


FIRES = "SELECT slot, job_id FROM schedule_fires WHERE schedule_key = {} ORDER BY slot"
SCHEDULED_JOBS = "SELECT job_id FROM jobs WHERE schedule_id = {}"


def read_fires(db: Db, schedule_key: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """The (slot, job_id) rows of schedule_fires and the ids of the schedule's jobs."""
    if str(db).startswith("postgresql://"):
        with psycopg.connect(str(db)) as pg:
            fires = pg.execute(FIRES.format("%s"), (schedule_key,)).fetchall()
            jobs = pg.execute(SCHEDULED_JOBS.format("%s"), (schedule_key,)).fetchall()
    else:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            fires = conn.execute(FIRES.format("?"), (schedule_key,)).fetchall()
            jobs = conn.execute(SCHEDULED_JOBS.format("?"), (schedule_key,)).fetchall()
        finally:
            conn.close()
    return fires, [row[0] for row in jobs]


def test_two_serve_processes_fire_each_schedule_slot_once(
    db: Db, tmp_path: Path, processes: Processes
) -> None:
    config = write_config(
        tmp_path,
        "lease_seconds = 2\nshutdown_grace_seconds = 1\n\n[plugins.ok]\n"
        'schedules = [{ id = "tick", command = "poll", every = "2s", if_running = "queue" }]\n',
    )
    servers = []
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        # One after the other: the first start creates the admin token.
        proc = processes.start(
            f"serve-{n}", "serve", "--db", str(db), "--port", str(port), "--config", str(config)
        )
        servers.append(proc)
        wait_until(lambda: healthy(port), f"serve {n} to answer", 20, processes)

    wait_until(
        lambda: len(read_fires(db, "ok:tick")[0]) >= 3 or None,
        "three slots of the 2 s schedule to fire",
        20,
        processes,
    )
    assert all(healthy(port) for port in ports), "both servers kept serving"
    for proc in servers:
        proc.send_signal(signal.SIGTERM)
    for proc in servers:
        assert proc.wait(timeout=20) == 0, processes.log_of(proc)

    fires, job_ids = read_fires(db, "ok:tick")
    assert len(fires) >= 3, fires
    slots = [parse_rfc3339(slot) for slot, _ in fires]
    assert all(b - a == timedelta(seconds=2) for a, b in itertools.pairwise(slots)), (
        f"a slot was skipped or doubled: {[s for s, _ in fires]}"
    )
    fired_jobs = [job_id for _, job_id in fires if job_id is not None]
    assert len(fired_jobs) == len(fires), f"a slot fired without a job: {fires}"
    assert sorted(job_ids) == sorted(fired_jobs), "exactly one job per fired slot"
    logged = sum(processes.log_of(p).count("schedule ok:tick fired slot") for p in servers)
    assert logged == len(fires), "each slot was enqueued by exactly one of the two processes"

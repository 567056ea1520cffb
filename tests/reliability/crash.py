"""Crash recovery: `queue-service worker` processes SIGKILLed mid-job, and `serve` SIGKILLed
during HTTP enqueues."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from queue_service.statuses import TERMINAL, Status
from queue_service.store import NewJob
from queue_service.timeutil import format_ts, utcnow
from tests.conftest import free_port
from tests.live_server import seed_database
from tests.processes import (
    Processes,
    enqueue_many,
    healthy,
    wait_until,
    worker,
    write_config,
)
from tests.reliability._db import (
    Db,
    Log,
    held_leases,
    integrity_check,
    owner_pid,
    quiet,
    read_only,
    status_counts,
)


@dataclass
class CrashReport:
    """What a crash scenario did, and every broken promise it found (`problems`)."""

    kills: int = 0
    #: Kills that hit a worker while it held at least one running job.
    mid_job_kills: int = 0
    jobs: int = 0
    #: Attempts the killed workers held at the moment of their death.
    attempts_held_at_kills: int = 0
    #: Attempts the store recorded as `lost` (their lease expired and was recovered).
    lost_attempts: int = 0
    #: Executions beyond the first one, per the ledger.
    re_executions: int = 0
    #: Enqueued jobs missing from the database or not terminal at the end.
    lost_jobs: int = 0
    stuck_jobs: int = 0
    dead_jobs: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kills} SIGKILLs ({self.mid_job_kills} mid-job) over {self.jobs} jobs: "
            f"{self.lost_jobs} lost, {self.stuck_jobs} stuck, {self.dead_jobs} dead, "
            f"{self.lost_attempts} attempts lost to kills (held at kill: "
            f"{self.attempts_held_at_kills}), {self.re_executions} re-executions, "
            f"{len(self.problems)} problems, in {self.seconds:.0f} s"
        )


def _ledger_lines(ledger: Path) -> list[tuple[str, int]]:
    if not ledger.exists():
        return []
    lines = []
    for line in ledger.read_text().splitlines():
        job_id, ppid = line.split()
        lines.append((job_id, int(ppid)))
    return lines


def run_crash_scenario(
    tmp: Path,
    *,
    kills: int,
    workers: int = 3,
    slots: int = 4,
    job_seconds: float = 0.1,
    lease_seconds: float = 4.0,
    time_limit: float = 240.0,
    seed: int = 1,
    db: Db | None = None,
    log: Log = quiet,
) -> CrashReport:
    """Run ledger jobs on `workers` worker processes and SIGKILL one that holds running jobs,
    `kills` times (each replaced at once), then let the survivors finish everything.

    Attribution is exact: right after each kill (the victim is reaped, so its rows are
    frozen) the attempts its lease owner still holds are recorded. At the end every job
    must have succeeded; its attempts must be 1..attempt, all `lost` but the last; the
    set of lost attempts must equal the set held at kills; and each job's extra ledger
    lines must be at most its lost attempts, and at most one of them written under a
    worker that was never killed (the ledger records the plugin's parent pid; a plugin
    that outlived its killed worker, where setpriv is missing, reports init).

    `db` is a PostgreSQL URL (of an empty schema), or by default an SQLite file in `tmp`.
    """
    rng = random.Random(seed)
    report = CrashReport()
    db = tmp / "crash.db" if db is None else db
    ledger = tmp / "ledger.txt"
    config = write_config(
        tmp,
        f"workers = {slots}\nlease_seconds = {lease_seconds}\nshutdown_grace_seconds = 2\n\n"
        "[plugins.ledger]\nmax_attempts = 30\nbackoff_seconds = 0\n",
    )
    payload = {"ledger": str(ledger), "with_worker_pid": True, "sleep": job_seconds}
    ids: list[str] = []

    def top_up(n: int) -> None:
        ids.extend(enqueue_many(db, [NewJob("ledger", "poll", payload, 30) for _ in range(n)]))

    procs = Processes(tmp)
    live: dict[int, subprocess.Popen[bytes]] = {}
    names = itertools.count()

    spawned: set[int] = set()

    def spawn() -> None:
        proc = worker(procs, f"worker-{next(names)}", db, config)
        live[proc.pid] = proc
        spawned.add(proc.pid)

    held_at_kill: dict[tuple[str, int], int] = {}
    killed: set[int] = set()
    started = time.monotonic()
    top_up(4 * workers * slots)
    try:
        for _ in range(workers):
            spawn()
        while report.mid_job_kills < kills:
            if time.monotonic() - started > time_limit:
                report.problems.append(
                    f"only {report.mid_job_kills} mid-job kills in {time_limit:.0f} s"
                )
                break
            if status_counts(db, "ledger")["queued"] < 2 * workers * slots:
                top_up(2 * workers * slots)
            holders = {owner_pid(owner) for owner in held_leases(db)}
            candidates = sorted(pid for pid in live if pid in holders)
            if not candidates:
                time.sleep(0.02)
                continue
            victim = rng.choice(candidates)
            # Land anywhere in a job: before, during or after the plugin wrote its line.
            time.sleep(rng.uniform(0, job_seconds * 1.5))
            os.kill(victim, signal.SIGKILL)
            live.pop(victim).wait(timeout=30)
            killed.add(victim)
            report.kills += 1
            held = [
                pair
                for owner, pairs in held_leases(db).items()
                if owner_pid(owner) == victim
                for pair in pairs
            ]
            for pair in held:
                held_at_kill[pair] = victim
            if held:
                report.mid_job_kills += 1
            log(f"kill {report.kills}: worker {victim} held {len(held)} attempt(s)")
            spawn()
            # Let the others finish some jobs in between: kills are frequent, not constant.
            time.sleep(rng.uniform(0.3, 1.0))

        def all_terminal() -> bool:
            counts = status_counts(db, "ledger")
            return counts["queued"] + counts["running"] == 0

        # Recovery needs the lease to expire plus one recovery round.
        wait_until(all_terminal, "every job to end", max(60.0, 10 * lease_seconds), procs)
        # Plugins orphaned by a kill may still be finishing their line.
        size = -1
        while size != (size := ledger.stat().st_size):
            time.sleep(max(0.5, 2 * job_seconds))
    finally:
        procs.stop_all()
    report.seconds = time.monotonic() - started
    report.jobs = len(ids)
    report.attempts_held_at_kills = len(held_at_kill)
    _judge_crash(db, ids, held_at_kill, spawned - killed, ledger, report)
    return report


def _judge_crash(
    db: Db,
    ids: list[str],
    held_at_kill: dict[tuple[str, int], int],
    never_killed: set[int],
    ledger: Path,
    report: CrashReport,
) -> None:
    problems = report.problems
    with read_only(db) as conn:
        jobs = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT job_id, status, attempt FROM jobs")
        }
        attempts: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for job_id, number, status in conn.execute(
            "SELECT job_id, attempt, status FROM job_attempts ORDER BY job_id, attempt"
        ):
            attempts[job_id].append((number, status))
    lost_attempts: set[tuple[str, int]] = set()
    for job_id in ids:
        if job_id not in jobs:
            report.lost_jobs += 1
            problems.append(f"job {job_id} vanished")
            continue
        status, attempt = jobs[job_id]
        if status not in {s.value for s in TERMINAL}:
            report.stuck_jobs += 1
            problems.append(f"job {job_id} is still {status}")
            continue
        if status == Status.DEAD.value:
            report.dead_jobs += 1
        if status != Status.SUCCEEDED.value:
            problems.append(f"job {job_id} ended {status}")
        rows = attempts[job_id]
        if [n for n, _ in rows] != list(range(1, attempt + 1)):
            problems.append(f"job {job_id}: attempt={attempt} but attempt rows {rows}")
        if [s for _, s in rows[:-1]] != ["lost"] * (len(rows) - 1) or (
            rows and rows[-1][1] != "succeeded"
        ):
            problems.append(f"job {job_id}: attempts {rows} are not lost...lost, succeeded")
        lost_attempts |= {(job_id, n) for n, s in rows if s == "lost"}
    report.lost_attempts = len(lost_attempts)
    for pair in sorted(lost_attempts - set(held_at_kill)):
        problems.append(f"attempt {pair} was lost without a kill (lease lost by a live worker?)")
    for pair in sorted(set(held_at_kill) - lost_attempts):
        problems.append(f"attempt {pair} held by killed worker {held_at_kill[pair]} not lost")

    lines = _ledger_lines(ledger)
    runs = Counter(job_id for job_id, _ in lines)
    survivors_runs = Counter(job_id for job_id, ppid in lines if ppid in never_killed)
    lost_per_job = Counter(job_id for job_id, _ in lost_attempts)
    for job_id in ids:
        if runs[job_id] == 0:
            problems.append(f"job {job_id} never ran (no ledger line)")
        extra = runs[job_id] - 1
        if extra > 0:
            report.re_executions += extra
            if extra > lost_per_job[job_id]:
                problems.append(
                    f"job {job_id} ran {runs[job_id]} times with {lost_per_job[job_id]} lost "
                    "attempt(s): a re-execution no kill explains"
                )
        # Runs in a worker that was never killed: only the one that succeeded can be one.
        # A run in a worker killed later, or orphaned by the kill (its parent is then
        # init), is the kill's doing.
        if survivors_runs[job_id] > 1:
            problems.append(f"job {job_id} ran {survivors_runs[job_id]} times in live workers")
    unknown = set(runs) - set(ids)
    if unknown:
        problems.append(f"ledger lines for jobs never enqueued: {sorted(unknown)[:3]}")


# --- acknowledged writes survive a SIGKILL of the server -----------------------------------------


@dataclass
class DurabilityReport:
    synchronous: str = "NORMAL"
    kills: int = 0
    acknowledged: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kills} SIGKILLs of serve (synchronous={self.synchronous}) during enqueues: "
            f"{self.acknowledged} enqueues "
            f"acknowledged (202), {self.missing} missing after restart"
        )


def run_server_kills(
    tmp: Path,
    *,
    kills: int,
    synchronous: str = "NORMAL",
    seed: int = 2,
    db: Db | None = None,
    log: Log = quiet,
) -> DurabilityReport:
    """SIGKILL a `serve` process while clients enqueue over HTTP, `kills` times; every
    enqueue answered 202 must be in the database afterwards, still queued.

    `db` is a PostgreSQL URL (of an empty schema; `synchronous` is then the server's
    business and the setting is ignored), or by default an SQLite file in `tmp`."""
    rng = random.Random(seed)
    report = DurabilityReport(synchronous=synchronous)
    db = tmp / "durable.db" if db is None else db
    seeded = asyncio.run(seed_database(db))
    headers = {"Authorization": f"Bearer {seeded.tokens['*']}"}
    # Jobs due far in the future: the server's worker leaves them queued.
    config = write_config(tmp, f'synchronous = "{synchronous}"\nworkers = 1\n')
    # (Within service.max_run_after_days, 365.)
    body = {"payload": {}, "run_after": format_ts(utcnow() + timedelta(days=300))}
    acknowledged: list[str] = []
    procs = Processes(tmp)
    try:
        for round_ in range(kills):
            port = free_port()
            proc = procs.start(
                f"serve-{round_}",
                *("serve", "--db", str(db), "--port", str(port), "--config", str(config)),
            )
            wait_until(lambda: healthy(port), "serve to answer", 30, procs)
            stop = threading.Event()

            def client(url: str = f"http://127.0.0.1:{port}/plugin/ok/poll") -> None:
                with httpx.Client(timeout=10) as http:
                    while not stop.is_set():
                        try:
                            response = http.post(url, json=body, headers=headers)
                        except httpx.TransportError:
                            return
                        if response.status_code == 202:
                            acknowledged.append(response.json()["job_id"])
                        else:
                            report.problems.append(f"enqueue answered {response.status_code}")

            threads = [threading.Thread(target=client) for _ in range(3)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 1.0))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            report.kills += 1
            log(f"serve kill {report.kills}: {len(acknowledged)} acknowledged so far")
    finally:
        procs.stop_all()
    report.acknowledged = len(acknowledged)
    with read_only(db) as conn:
        queued = {row[0] for row in conn.execute("SELECT job_id FROM jobs WHERE status = 'queued'")}
    missing = [job_id for job_id in acknowledged if job_id not in queued]
    report.missing = len(missing)
    if missing:
        report.problems.append(f"{len(missing)} acknowledged jobs missing: {missing[:3]}")
    if integrity_check(db) != ["ok"]:
        report.problems.append(f"integrity_check: {integrity_check(db)[:3]}")
    return report

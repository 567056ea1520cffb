"""Issue 10's multi-host simulation, on one machine and one PostgreSQL database.

- Three `queue-service worker` processes and two `queue-service serve` processes (which run a
  worker and a scheduler too) share one database. N ledger jobs (QS_MULTIHOST_JOBS, default
  600 to keep CI short; the closing figures use 20000) are enqueued over HTTP through both servers while a
  worker is SIGKILLed holding jobs. Every job succeeds; the ledger, written by the plugin
  itself with the pid of the process that ran it, shows each job ran once, except that a job
  the killed worker held may also show its interrupted run; each such job has exactly one
  `lost` attempt and the others have exactly one attempt. Every worker took part. A 1 s
  schedule, run by the scheduler of all five processes, fires one job per slot.
- Two `queue-service sync databricks --once` processes, started together against the fake
  Jobs API 2.2 server with 300 runs, ingest each run once.

The figures (jobs/s, recovery time, fires per process) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import free_port
from tests.fakes.databricks_server import FakeDatabricks, Fault, now_ms
from tests.processes import (
    ENV,
    REPO,
    Processes,
    healthy,
    stop,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

JOBS = int(os.environ.get("QS_MULTIHOST_JOBS", "600"))
#: Short, so that the killed worker's jobs come back within seconds; long enough that a live
#: worker on a loaded 2-core machine renews its lease (every LEASE/3 s) in time.
LEASE = 4
#: The enqueueing clients' concurrency, spread over the two servers.
CLIENTS = 16


# --- the shared database, read behind the service's back ----------------------------------------


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def owner_pid(owner: str) -> int:
    """The process id in a lease owner `host:pid:random` (worker.new_owner_id)."""
    return int(owner.rsplit(":", 2)[-2])


def held_by(url: str, pid: int) -> dict[str, str]:
    """{job_id: command} of the running jobs whose lease process `pid` holds."""
    rows = query(
        url,
        "SELECT job_id, command, lease_owner FROM jobs "
        "WHERE status = 'running' AND lease_owner IS NOT NULL",
    )
    return {job_id: command for job_id, command, owner in rows if owner_pid(owner) == pid}


def runs_the_kill_does_not_explain(
    lines: list[tuple[str, int]], held: Collection[str], victim: int
) -> dict[str, tuple[int, int]]:
    """{job_id: (runs in the survivors, runs in the victim)} of the jobs that ran more than
    once, except a job the victim held when it was killed: its run there may have written
    its line before the kill, and the survivors ran it again once."""
    survivors = Counter(job_id for job_id, pid in lines if pid != victim)
    in_victim = Counter(job_id for job_id, pid in lines if pid == victim)
    return {
        job_id: (survivors[job_id], in_victim[job_id])
        for job_id in survivors | in_victim
        if survivors[job_id] + in_victim[job_id] > 1
        and not (job_id in held and survivors[job_id] == in_victim[job_id] == 1)
    }


def status_counts(url: str, plugin: str, command: str) -> Counter[str]:
    rows = query(
        url,
        "SELECT status, count(*) FROM jobs WHERE plugin = %s AND command = %s GROUP BY status",
        plugin,
        command,
    )
    return Counter({status: int(n) for status, n in rows})


def attempts_by_job(url: str, job_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    attempts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for job_id, number, status in query(
        url,
        "SELECT job_id, attempt, status FROM job_attempts WHERE job_id = ANY(%s) "
        "ORDER BY job_id, id",
        list(job_ids),
    ):
        attempts[job_id].append((number, status))
    return attempts


def ledger_lines(path: Path) -> list[tuple[str, int]]:
    """(job_id, pid of the process that ran it) per line the ledger plugin wrote."""
    if not path.exists():
        return []
    return [
        (job_id, int(pid))
        for job_id, pid in (ln.split() for ln in path.read_text().split("\n") if ln)
    ]


# --- the processes -------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """`queue-service ARGS…` to completion; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "queue_service", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env or ENV,
    )
    assert done.returncode == 0, f"queue-service {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def wait_started(processes: Processes, proc: subprocess.Popen[bytes], what: str) -> None:
    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{processes.log_of(proc)}")
        return "queue-service worker on" in processes.log_of(proc)

    wait_until(started, f"{what} to start", 60, processes)


async def enqueue_over_http(
    bases: Sequence[str], token: str, count: int, payload: dict[str, Any]
) -> tuple[list[str], float]:
    """POST /plugin/ledger/poll `count` times, `CLIENTS` at a time, alternating servers:
    the job ids in the order of the requests, and the seconds it took. Fails on any answer
    but 202."""
    started = time.monotonic()
    ids: list[str] = [""] * count
    numbers = iter(range(count))
    headers = {"Authorization": f"Bearer {token}"}

    async def client(http: httpx.AsyncClient) -> None:
        for n in numbers:
            response = await http.post(
                f"{bases[n % len(bases)]}/plugin/ledger/poll", json={"payload": payload}
            )
            assert response.status_code == 202, response.text
            ids[n] = response.json()["job_id"]

    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return ids, time.monotonic() - started


def api_total(base: str, token: str, **params: str) -> int:
    response = httpx.get(
        f"{base}/jobs",
        params={**params, "limit": "1"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


# --- 3 workers + 2 APIs, N jobs, a SIGKILL, a 1 s schedule ---------------------------------------


def test_three_workers_and_two_apis_on_one_database_run_every_job_once(
    postgresql_url: str, tmp_path: Path, processes: Processes
) -> None:
    url = postgresql_url
    ledger = tmp_path / "ledger.txt"
    ticks = tmp_path / "ticks.txt"
    tick_payload = f'{{ ledger = "{ticks}", with_worker_pid = true }}'
    config = write_config(
        tmp_path,
        f"workers = 4\nlease_seconds = {LEASE}\nshutdown_grace_seconds = 5\n\n"
        "[plugins.ledger]\nbackoff_seconds = 0\n"
        f'schedules = [{{ id = "tick", command = "append", every = "1s", if_running = "queue", '
        f"payload = {tick_payload} }}]\n",
    )
    cli("migrate", "--db", url)  # once, before any host starts
    token = cli("token", "create", "--name", "multihost", "--scope", "*", "--db", url).strip()

    ports = [free_port(), free_port()]
    apis = [
        processes.start(
            f"serve-{n}", "serve", "--db", url, "--port", str(port), "--config", str(config)
        )
        for n, port in enumerate(ports)
    ]
    workers = [
        processes.start(f"worker-{n}", "worker", "--db", url, "--config", str(config))
        for n in range(3)
    ]
    for n, (proc, port) in enumerate(zip(apis, ports, strict=True)):

        def answers(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {proc.returncode}:\n{processes.log_of(proc)}"
                )
            return healthy(port)

        wait_until(answers, f"serve {n} to answer /healthz", 60, processes)
    for n, proc in enumerate(workers):
        wait_started(processes, proc, f"worker {n}")
    bases = [f"http://127.0.0.1:{port}" for port in ports]

    # --- the load, and a SIGKILL in the middle of it
    payload = {"ledger": str(ledger), "with_worker_pid": True}
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        enqueuing = pool.submit(asyncio.run, enqueue_over_http(bases, token, JOBS, payload))
        victim = workers[0]

        def victim_stopped_holding_jobs() -> dict[str, str] | None:
            """SIGSTOP the victim once a quarter of the jobs are done and it has run some;
            keep it stopped (its rows frozen) when it holds the lease of a job of the load,
            else let it go on."""
            if status_counts(url, "ledger", "poll")["succeeded"] < JOBS // 4:
                return None
            if victim.pid not in {pid for _, pid in ledger_lines(ledger)}:
                return None
            victim.send_signal(signal.SIGSTOP)
            held = held_by(url, victim.pid)
            if "poll" not in held.values():
                victim.send_signal(signal.SIGCONT)
                return None
            return held

        held = wait_until(
            victim_stopped_holding_jobs,
            "the victim worker to hold jobs mid-load",
            120 + JOBS / 20,
            processes,
        )
        victim.send_signal(signal.SIGKILL)  # its plugins die with it (setpriv --pdeathsig)
        killed_at = time.monotonic()
        victim.wait(timeout=30)
        held_ids = sorted(held)  # jobs of the load, and maybe a scheduled one

        def held_jobs(status: str) -> bool:
            rows = query(
                url,
                "SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s) AND status = %s",
                held_ids,
                status,
            )
            return int(rows[0][0]) == len(held_ids)

        wait_until(lambda: held_jobs("lost"), "the killed worker's jobs to be recovered", 60)
        recovered_in = time.monotonic() - killed_at
        wait_until(lambda: held_jobs("succeeded"), "the recovered jobs to succeed", 120)
        rerun_in = time.monotonic() - killed_at
        ids, enqueued_in = enqueuing.result()
    assert len(set(ids)) == JOBS

    wait_until(
        lambda: status_counts(url, "ledger", "poll")["succeeded"] == JOBS,
        f"all {JOBS} jobs to succeed",
        120 + JOBS / 10,
        processes,
    )
    finished_in = time.monotonic() - started

    # Exact totals, as both APIs answer them.
    for base in bases:
        assert api_total(base, token, plugin="ledger", command="poll", status="succeeded") == JOBS
        assert api_total(base, token, plugin="ledger", command="poll") == JOBS

    for proc in [*apis, *workers[1:]]:
        assert stop(proc, 60) == 0, processes.log_of(proc)

    # --- 0 lost, 0 double claims
    counts = status_counts(url, "ledger", "poll")
    assert counts == Counter({"succeeded": JOBS}), counts
    attempts = attempts_by_job(url, ids)
    for job_id in ids:
        expected = [(1, "lost"), (2, "succeeded")] if job_id in held else [(1, "succeeded")]
        assert attempts[job_id] == expected, f"job {job_id}: attempts {attempts[job_id]}"
    lost = query(url, "SELECT job_id FROM job_attempts WHERE status = 'lost' ORDER BY job_id")
    assert [job_id for (job_id,) in lost] == held_ids, "a lost attempt that no kill explains"

    lines = ledger_lines(ledger)
    assert {job_id for job_id, _ in lines} == set(ids), "a job never ran, or an unknown id ran"
    assert runs_the_kill_does_not_explain(lines, held, victim.pid) == {}

    # --- every process took part
    ran_in = Counter(pid for _, pid in lines)
    names = {
        **{proc.pid: f"worker-{n}" for n, proc in enumerate(workers)},
        **{proc.pid: f"serve-{n}" for n, proc in enumerate(apis)},
    }
    for proc in workers:
        assert ran_in[proc.pid] > 0, f"worker {proc.pid} ran nothing: {ran_in}"

    # --- the 1 s schedule: one job per slot, whichever process fired it
    fires = query(
        url,
        "SELECT slot, job_id FROM schedule_fires WHERE schedule_key = 'ledger:tick' ORDER BY slot",
    )
    scheduled = [
        row[0] for row in query(url, "SELECT job_id FROM jobs WHERE schedule_id = 'ledger:tick'")
    ]
    slots = [slot for slot, _ in fires]
    assert len(fires) >= 3, f"the 1 s schedule fired {len(fires)} times"
    assert len(set(slots)) == len(slots), "a slot fired twice"
    assert all(job_id is not None for _, job_id in fires), fires
    assert sorted(scheduled) == sorted(job_id for _, job_id in fires), "one job per fired slot"
    fired_by = {
        names[proc.pid]: len(re.findall(r"schedule ledger:tick fired slot", processes.log_of(proc)))
        for proc in [*workers, *apis]
    }
    assert sum(fired_by.values()) == len(fires), f"fires logged {fired_by} vs {len(fires)} slots"
    tick_lines = ledger_lines(ticks)
    assert {job_id for job_id, _ in tick_lines} <= set(scheduled)
    assert runs_the_kill_does_not_explain(tick_lines, held, victim.pid) == {}

    print(
        f"\nmultihost: {JOBS} jobs over HTTP through 2 serve processes in {enqueued_in:.1f} s "
        f"({JOBS / enqueued_in:.0f}/s enqueued); all succeeded after {finished_in:.1f} s "
        f"({JOBS / finished_in:.0f} jobs/s end to end, 3 worker + 2 serve processes x 4 slots)\n"
        f"  SIGKILLed worker held {len(held_ids)} job(s): lost attempts recorded "
        f"{recovered_in:.1f} s after the kill, all succeeded elsewhere {rerun_in:.1f} s after "
        f"(lease {LEASE} s)\n"
        f"  runs per process: { {names[pid]: n for pid, n in sorted(ran_in.items())} }\n"
        f"  1 s schedule: {len(fires)} slots fired, one job each; fired by {fired_by}"
    )


# --- the Databricks sync in two processes ---------------------------------------------------------

RUNS = 300
HOUR_MS = 3_600_000
LIST = "/api/2.2/jobs/runs/list"
SUMMARY = re.compile(
    r"^prod: ok, (?P<runs>\d+) runs in (?P<pages>\d+) pages \((?P<new>\d+) new, "
    r"(?P<updated>\d+) updated, (?P<unchanged>\d+) unchanged\)",
    re.M,
)
SKIPPED = "prod: skipped, another process is syncing it"


def synced_runs(url: str) -> list[str]:
    """The external ids (run ids) of the mirrored jobs, one per row."""
    return [
        row[0] for row in query(url, "SELECT external_id FROM jobs WHERE source = 'databricks'")
    ]


def test_two_sync_processes_ingest_each_databricks_run_once(
    postgresql_url: str, tmp_path: Path, processes: Processes
) -> None:
    url = postgresql_url
    cli("migrate", "--db", url)
    # Only what the config names: nothing from this machine's Databricks set-up.
    env = {k: v for k, v in ENV.items() if not k.startswith(("DATABRICKS_", "ARM_", "AZURE_"))}
    env["DATABRICKS_CONFIG_FILE"] = str(tmp_path / "no-databrickscfg")
    config = tmp_path / "sync.toml"
    names = itertools.count()

    def sync_once() -> tuple[subprocess.Popen[bytes], Path]:
        """`sync databricks --once` in a process of its own; its stdout's file."""
        name = f"sync-{next(names)}"
        args = ("sync", "databricks", "--once", "--db", url, "--config", str(config))
        return processes.start(name, *args, env=env, separate_stdout=True), tmp_path / f"{name}.out"

    with FakeDatabricks() as fake:
        env["QS_MULTIHOST_DATABRICKS_TOKEN"] = fake.token
        config.write_text(
            "[databricks]\nlookback_hours = 24\noverlap_seconds = 0\n"
            "retry_timeout_seconds = 5\nhttp_timeout_seconds = 120\n"
            f'[[databricks.workspaces]]\nname = "prod"\nhost = "{fake.url}"\n'
            'token_env = "QS_MULTIHOST_DATABRICKS_TOKEN"\n'
        )
        # Finished an hour ago and before, one a second.
        old = fake.add_finished_runs(RUNS, newest_start=now_ms() - HOUR_MS, step_ms=1000)

        # 1. Two processes at once. The pages hang until one process has given up: whichever
        # took the workspace's lock is still syncing then, so the other one met it.
        fake.inject(Fault.slow(300), times=None, path=LIST)
        (first, first_out), (second, second_out) = sync_once(), sync_once()
        done = wait_until(
            lambda: next((p for p in (first, second) if p.poll() is not None), None),
            "one of the two sync processes to finish",
            60,
            processes,
        )
        assert done.returncode == 0, processes.tails()
        fake.clear_faults()
        for proc in (first, second):
            assert proc.wait(timeout=120) == 0, processes.tails()
        outputs = sorted([first_out.read_text().strip(), second_out.read_text().strip()])
        assert outputs[1] == SKIPPED, outputs
        (synced,) = [m.groupdict() for m in SUMMARY.finditer(outputs[0])]
        assert (synced["runs"], synced["new"]) == (str(RUNS), str(RUNS)), synced
        assert sorted(synced_runs(url)) == sorted(str(run_id) for run_id in old)

        # 2. A process SIGKILLed in the middle of a pass (after it committed a batch): the
        # next one is not locked out, resumes, and stores the rest, each run once.
        new = fake.add_finished_runs(RUNS, newest_start=now_ms() - HOUR_MS // 2, step_ms=1000)
        fake.inject(Fault.slow(0.5), times=None, path=LIST)
        doomed, _ = sync_once()
        wait_until(
            lambda: len(synced_runs(url)) > RUNS, "the doomed sync to commit a batch", 60, processes
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        stored_by_doomed = len(synced_runs(url)) - RUNS
        assert 0 < stored_by_doomed < RUNS, "the kill did not land mid-pass"
        fake.clear_faults()
        resumed, resumed_out = sync_once()
        assert resumed.wait(timeout=120) == 0, processes.tails()
        (after, *more) = [m.groupdict() for m in SUMMARY.finditer(resumed_out.read_text())]
        assert not more
        newest_start = fake.run(new[0])["start_time"]

    runs = synced_runs(url)
    assert len(runs) == len(set(runs)) == 2 * RUNS, "a run stored twice, or missing"
    assert set(runs) == {str(run_id) for run_id in old + new}
    assert int(after["new"]) == RUNS - stored_by_doomed, after
    ((watermark,),) = query(url, "SELECT watermark_ms FROM sync_state WHERE workspace = 'prod'")
    assert watermark == newest_start
    print(
        f"\nmultihost sync: two processes at once: one synced {synced['runs']} runs "
        f"({synced['new']} new), the other skipped; a pass SIGKILLed after storing "
        f"{stored_by_doomed} of {RUNS} new runs, the next one stored the other {after['new']} "
        f"({after['runs']} runs read)"
    )

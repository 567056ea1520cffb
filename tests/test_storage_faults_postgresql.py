"""PostgreSQL outages, with a real `serve` and a real `worker` where the service is the point:

- the server kills every connection of the database again and again (pg_terminate_backend)
  while clients enqueue over HTTP: the processes reconnect by themselves, every acknowledged
  enqueue is kept and runs to `succeeded`, nothing else fails than the requests refused
  with the canonical 503;
- the database refuses connections for a while (ALLOW_CONNECTIONS false, then every
  connection terminated): /healthz answers the canonical 503 while it lasts and 200 after,
  requests answer 503 within the pool's wait rather than hang or fail with a 500;
- the store on its own: a request during an outage fails after one wait for a connection,
  and the first one after it succeeds.

Each test makes a database of its own on the test server (QS_TEST_PG) and drops it: killing
the connections of the session's shared database would break the other tests' fixtures.
The server itself is never restarted (it is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from queue_service.auth import TokenService
from queue_service.statuses import Status
from queue_service.store import JobFilter, NewJob, Store, StoreUnavailable
from queue_service.store.postgresql import PostgreSQLStore
from tests.conftest import PostgreSQLDatabase, assert_error, free_port
from tests.processes import Processes, stop, wait_healthy, wait_until, with_store, write_config

pytestmark = pytest.mark.slow

#: How long a request may take during an outage: the pool waits 5 s for a connection, so
#: anything near this bound is a hang (the pool used to retry its wait eight times).
OUTAGE_ANSWER_S = 20.0


class OutageDatabase:
    """A database of the test's own on the test server, and the switches of an outage."""

    def __init__(self, server: str) -> None:
        self.name = f"qs_faults_{secrets.token_hex(4)}"
        self.admin = psycopg.connect(server, autocommit=True)
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(server)._replace(path=f"/{self.name}", query=""))

    def terminate(self) -> int:
        """Kill every connection to the database (ours is to another one); how many."""
        rows = self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        ).fetchall()
        return sum(1 for (killed,) in rows if killed)

    def refuse_connections(self) -> None:
        """Start an outage: no new connection is accepted, the open ones are killed."""
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.terminate()

    def allow_connections(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.allow_connections()
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


@pytest.fixture
def outage_db(postgresql_database: PostgreSQLDatabase) -> Iterator[OutageDatabase]:
    database = OutageDatabase(postgresql_database.server)
    try:
        yield database
    finally:
        database.drop()


# --- the store alone --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_store_fails_fast_in_an_outage_and_answers_at_once_after_it(
    outage_db: OutageDatabase,
) -> None:
    store = PostgreSQLStore(outage_db.url)
    await store.open()
    try:
        job_id = (await store.enqueue(NewJob("p", "poll"))).job_id
        outage_db.refuse_connections()
        try:
            # 20 s: long enough that a background reconnection doubling its pause (1, 2, 4,
            # 8, 16 s) would next try well after the pool's 5 s wait of the first request
            # after the outage, which then failed too.
            for _ in range(4):
                with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                    await asyncio.wait_for(store.get_job(job_id), OUTAGE_ANSWER_S)
        finally:
            outage_db.allow_connections()
        job = await asyncio.wait_for(store.get_job(job_id), OUTAGE_ANSWER_S)
        assert job is not None and job.status is Status.QUEUED
        await store.enqueue(NewJob("p", "poll"))
        assert (await store.list_jobs(JobFilter(plugin="p"))).total == 2
    finally:
        await store.close()


# --- serve and worker under killed connections -----------------------------------------------


@dataclass
class Load:
    """Clients enqueueing over HTTP until stopped, with every answer accounted for."""

    base: str
    token: str
    ledger: Path
    acknowledged: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    #: Answers that are neither 202 nor the canonical 503, and client errors (timeouts).
    problems: list[str] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        body = {"payload": {"ledger": str(self.ledger)}}
        with httpx.Client(base_url=self.base, headers=headers, timeout=OUTAGE_ANSWER_S) as http:
            while not self.stopped.is_set():
                try:
                    response = http.post("/plugin/ledger/poll", json=body)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    self.answers[response.status_code] += 1
                    if response.status_code == 202:
                        self.acknowledged.append(response.json()["job_id"])
                    elif not _canonical_503(response):
                        self.problems.append(f"{response.status_code} {response.text[:300]}")
                if response.status_code == 503:
                    time.sleep(0.05)  # as a client honouring Retry-After would, briefly

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _canonical_503(response: httpx.Response) -> bool:
    try:
        assert_error(response, 503, "unavailable")
    except (AssertionError, ValueError):
        return False
    return bool(response.headers.get("retry-after") == "1")


def test_killed_connections_and_an_outage_lose_no_acknowledged_job(
    outage_db: OutageDatabase, processes: Processes, tmp_path: Path
) -> None:
    db = outage_db.url
    ledger = tmp_path / "ledger.txt"
    # A job's outcome that could not be saved runs again once its lease expires, counting
    # an attempt: a short lease keeps the test short, enough attempts keep every job alive.
    config = write_config(
        tmp_path,
        "workers = 2\nlease_seconds = 3\n\n[plugins.ledger]\nbackoff_seconds = 0\n"
        "max_attempts = 20\n",
    )
    token, _ = with_store(db, lambda s: TokenService(s).create("load", ["*"]))
    port = free_port()
    serve = processes.start(
        "serve", "serve", "--db", db, "--port", str(port), "--config", str(config)
    )
    wait_healthy(serve, port, processes)
    worker = processes.start("worker", "worker", "--db", db, "--config", str(config))
    # Started before the faults: a process that cannot reach its database at start refuses
    # to start (one line, exit 1), which is not what this test is about.
    wait_until(
        lambda: "queue-service worker on" in processes.log_of(worker),
        "the worker to start",
        30,
        processes,
    )
    base = f"http://127.0.0.1:{port}"
    load = Load(base, token, ledger)
    clients = [threading.Thread(target=load.run, daemon=True) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        # 1. Connections killed under load, again and again.
        killed = 0
        for round_ in range(8):
            goal = load.count() + 20
            wait_until(lambda: load.count() >= goal, f"20 enqueues before kill {round_}", 60)
            killed += outage_db.terminate()
        assert killed >= 8, "the processes never held a connection to kill"

        # 2. An outage long enough to watch: /healthz says so, requests answer 503.
        outage_db.refuse_connections()
        try:
            health = httpx.get(f"{base}/healthz", timeout=OUTAGE_ANSWER_S)
            assert_error(health, 503, "unavailable")
            assert health.headers["retry-after"] == "1"
            # Unauthenticated callers learn that the database is away, never where it is.
            said = health.json()["error"]
            assert "cannot be reached" in said, said
            assert outage_db.name not in said and "5432" not in said, said
            during = load.answers[503]
            wait_until(lambda: load.answers[503] > during, "enqueues refused in the outage", 60)
        finally:
            outage_db.allow_connections()
        wait_until(
            lambda: httpx.get(f"{base}/healthz", timeout=OUTAGE_ANSWER_S).status_code == 200,
            "/healthz to answer 200 once the database is back",
            60,
            processes,
        )
        goal = load.count() + 20
        wait_until(lambda: load.count() >= goal, "enqueues to be accepted again", 60, processes)
    finally:
        load.stopped.set()
        for client in clients:
            client.join(OUTAGE_ANSWER_S + 5)

    acknowledged = set(load.acknowledged)
    assert len(acknowledged) == len(load.acknowledged), "an id was acknowledged twice"
    assert load.problems == [], load.problems[:10]
    assert load.answers[503] > 0 and set(load.answers) <= {202, 503}, load.answers

    def unfinished() -> int:
        page = with_store(db, lambda s: s.count_jobs_by_status(JobFilter(plugin="ledger")))
        return sum(n for status, n in page.items() if status is not Status.SUCCEEDED)

    wait_until(lambda: unfinished() == 0, "every ledger job to succeed", 120, processes)
    stored = set(
        with_store(db, lambda s: _all_job_ids(s, "ledger")),
    )
    # Nothing acknowledged is lost. A refused enqueue may still exist: its COMMIT reached
    # the server as the connection died, and the answer could not say it had.
    assert acknowledged <= stored
    assert len(stored - acknowledged) <= load.answers[503]
    ran = Counter(ledger.read_text().split())
    assert set(ran) == stored, "every stored job ran, and nothing else did"

    for proc in (serve, worker):
        assert proc.poll() is None, f"{proc.args!r} died:\n{processes.log_of(proc)[-3000:]}"
        assert stop(proc, 30) == 0, processes.log_of(proc)[-3000:]
        log = processes.log_of(proc)
        assert "Traceback" not in log, log[-5000:]


async def _all_job_ids(store: Store, plugin: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(JobFilter(plugin=plugin), limit=500, cursor=cursor)
        ids += [job.job_id for job in page.jobs]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor

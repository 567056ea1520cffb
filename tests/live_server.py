"""A real `queue-service serve` process on 127.0.0.1, with a seeded database and a token per
scope, for the tests that must see the product as it runs: fuzzing, hostile input over the
wire, auth and log capture, and memory under load. Not a test module itself.

The database is an SQLite file, or a PostgreSQL URL (`db=` of start_server): it is seeded
through the Store protocol, so both backends hold the same jobs and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from queue_service.api import ServiceState
from queue_service.auth import hash_token, new_secret
from queue_service.scopes import SCOPES
from queue_service.statuses import Source, Status
from queue_service.store import ExternalJob, NewJob, create_store
from queue_service.timeutil import now_ts
from tests.conftest import PostgreSQLDatabase, free_port
from tests.processes import Processes, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
#: The sample plugin shipped with the repository: echo (poll and health are read commands,
#: handle is a write command).
PLUGIN_DIR = ROOT / "plugins"


@dataclass
class Seeded:
    """What the database holds before the server starts."""

    #: One token per scope, plus "expired" and "revoked" tokens (scope `*`).
    tokens: dict[str, str] = field(default_factory=dict)
    #: Job ids by status (and "databricks" for a synced run).
    jobs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all_job_ids(self) -> list[str]:
        return [job_id for ids in self.jobs.values() for job_id in ids]


def is_postgresql(db: Path | str) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


async def seed_database(db: Path | str, preset_tokens: dict[str, str] | None = None) -> Seeded:
    """Migrate `db` (an SQLite file or a PostgreSQL URL), create the tokens and jobs in
    every status, and close it.

    `preset_tokens` maps a scope to a secret made beforehand (with auth.new_secret), for
    callers that must know a token before the server exists; only its hash is stored."""
    store = create_store(str(db))
    await store.open()
    try:
        state = ServiceState.for_store(store)
        seeded = Seeded()
        for scope in SCOPES:
            secret = (preset_tokens or {}).get(scope)
            if secret is None:
                secret, _ = await state.tokens.create(f"scope-{scope}", [scope])
            else:
                await store.create_token(f"scope-{scope}", hash_token(secret), [scope], None)
            seeded.tokens[scope] = secret
        # An expired token: stored with an expiry in the past, as if its time ran out.
        seeded.tokens["expired"] = new_secret()
        await store.create_token(
            "expired", hash_token(seeded.tokens["expired"]), ["*"], "2000-01-01T00:00:00.000000Z"
        )
        seeded.tokens["revoked"], _ = await state.tokens.create("revoked", ["*"])
        assert await store.revoke_token("revoked")

        def add(key: str, job_id: str) -> None:
            seeded.jobs.setdefault(key, []).append(job_id)

        # Queued echo jobs due far in the future: the server's worker never claims them, so
        # they stay queued (and cancelable) for the whole test.
        later = "2999-01-01T00:00:00.000000Z"
        payloads: list[object] = [
            {},
            {"text": "héllo ✓ 😀", "n": [1, 2.5, None, True], "deep": {"a": {"b": {"c": []}}}},
            {"big": 10**30, "neg": -1, "empty": ""},
        ]
        for i, payload in enumerate(payloads):
            job = NewJob(
                "echo", "poll", payload, submitted_by="seed", dedupe_key=f"k{i}", run_after=later
            )
            add("queued", (await store.enqueue(job)).job_id)
        endings = {
            Status.SUCCEEDED: {"answer": 42, "list": ["x", {"y": None}]},
            Status.FAILED: None,
            Status.TIMED_OUT: None,
            Status.CANCELED: None,
            Status.DEAD: None,
        }
        for status, result in endings.items():
            job = NewJob("echo", "handle", {"s": str(status)}, run_after=later)
            job_id = (await store.enqueue(job)).job_id
            await store.set_status(job_id, Status.RUNNING)
            error = None if status is Status.SUCCEEDED else f"it ended {status}"
            await store.set_status(job_id, status, result=result, last_error=error)
            add(str(status), job_id)
        running = (await store.enqueue(NewJob("echo", "poll", run_after=later))).job_id
        await store.set_status(running, Status.RUNNING)
        add("running", running)
        now = now_ts()  # recent, so retention does not prune it
        await store.upsert_external_jobs(
            [
                ExternalJob(
                    job_id="databricks-ws-123",
                    plugin="databricks",
                    command="nightly etl ✓",
                    status=Status.SUCCEEDED,
                    status_if_new=Status.SUCCEEDED,
                    external_id="123",
                    external_url="https://example.invalid/#job/1/run/123",
                    created_at=now,
                    started_at=now,
                    completed_at=now,
                    attempt=1,
                    last_error=None,
                    result={"state": "SUCCESS"},
                    source=Source.DATABRICKS,
                )
            ]
        )
        add("databricks", "databricks-ws-123")
    finally:
        await store.close()
    return seeded


@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    base: str
    #: The SQLite file, or the PostgreSQL URL.
    db: Path | str
    log: Path
    seeded: Seeded

    @property
    def pid(self) -> int:
        return self.proc.pid

    def headers(self, scope: str = "*") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.seeded.tokens[scope]}"}

    def rss_kib(self) -> int:
        """The server's resident set size, from /proc (no psutil)."""
        return read_rss_kib(self.pid)

    def stop(self) -> str:
        """SIGTERM, wait for a clean exit, and return everything the server logged."""
        stop(self.proc, 30)
        return self.log.read_text(errors="replace")


def read_rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def live_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """For a module fixture parametrized by backend name (sorted(STORE_BACKENDS)): None on
    "sqlite" (start_server makes the file), or the URL of a fresh schema on the PostgreSQL
    test server, dropped afterwards (skipped, or failed under QS_REQUIRE_POSTGRESQL=1, when
    no server answers)."""
    if request.param == "sqlite":
        yield None
        return
    database: PostgreSQLDatabase = request.getfixturevalue("postgresql_database")
    schema, url = database.new_schema()
    try:
        yield url
    finally:
        database.drop_schema(schema)


def start_server(
    tmp: Path,
    *,
    db: str | None = None,
    log_level: str = "info",
    preset_tokens: dict[str, str] | None = None,
    service_settings: str = "",
) -> LiveServer:
    """Seed a database (the PostgreSQL URL `db`, else an SQLite file under `tmp`), start
    `queue-service serve` on a free port, wait for it. `service_settings`: more TOML lines
    for the [service] table."""
    tmp.mkdir(parents=True, exist_ok=True)
    database: Path | str = db if db is not None else tmp / "live.db"
    seeded = asyncio.run(seed_database(database, preset_tokens))
    config = tmp / "config.toml"
    config.write_text(
        f'[service]\nplugin_dirs = ["{PLUGIN_DIR}"]\nworkers = 1\n{service_settings}\n'
    )
    port = free_port()
    processes = Processes(tmp)
    proc = processes.start(
        "server",
        *("serve", "--db", str(database), "--port", str(port), "--config", str(config)),
        *("--log-level", log_level),
        cwd=tmp,
    )
    server = LiveServer(proc, f"http://127.0.0.1:{port}", database, tmp / "server.log", seeded)
    try:
        wait_healthy(proc, port, processes)
    except BaseException:
        server.stop()
        raise
    return server


#: What a request that touches jobs could change, as queries (the same text on both
#: backends): every row of the job tables, and the exact counts as readers see them, the
#: rollup plus the deltas not folded in yet (a fold moves rows between the two without
#: changing a count). Tokens are left out: a good token's last_used_at is bookkeeping.
SNAPSHOT_QUERIES = {
    "jobs": "SELECT * FROM jobs",
    "job_counts": (
        "SELECT plugin, command, status, source, SUM(n) FROM ("
        " SELECT plugin, command, status, source, n FROM job_counts UNION ALL"
        " SELECT plugin, command, status, source, d FROM job_count_deltas) AS c"
        " GROUP BY plugin, command, status, source HAVING SUM(n) <> 0"
    ),
    "job_attempts": "SELECT * FROM job_attempts",
}


def jobs_snapshot(db: Path | str) -> dict[str, list[tuple[object, ...]]]:
    """SNAPSHOT_QUERIES' rows, in a stable order: to prove requests changed nothing.
    `db`: an SQLite file, or a PostgreSQL URL."""
    if is_postgresql(db):
        with psycopg.connect(str(db)) as conn:
            return {
                name: sorted(conn.execute(sql).fetchall(), key=repr)
                for name, sql in SNAPSHOT_QUERIES.items()
            }
    raw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            name: sorted(raw.execute(sql).fetchall(), key=repr)
            for name, sql in SNAPSHOT_QUERIES.items()
        }
    finally:
        raw.close()


def raw_request(
    server: LiveServer, head: bytes, body: bytes | Iterable[bytes] = b"", *, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client-side normalization or size caps) and read the
    answer until the server closes (send `Connection: close`). The server may answer before
    the upload ends (a 413): the rest of the upload is then dropped."""
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # No half-close: uvicorn reads EOF as the client going away and would not answer.
        try:
            sock.sendall(head)
            for part in [body] if isinstance(body, bytes) else body:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    raw = b"".join(chunks)
    head_part, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    if not lines[0]:
        raise ConnectionError("the server closed the connection without answering")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return status, headers, payload


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out

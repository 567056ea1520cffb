"""Storage faults, with a real `serve` process where the API is the point:

- a database file, or its directory, that cannot be written: the service starts read-only,
  says so in one log line, serves reads, and answers writes 503 with the canonical error;
- a full disk (a tiny tmpfs filled with a ballast file when mounting is permitted, else a
  file-size limit set on the server process): writes answer 503 naming the cause, reads go
  on, nothing acknowledged is lost, nothing refused is half-written, the file stays sound,
  and the service carries on by itself when space returns;
- a file that is not a queue-service database (not SQLite, damaged, or another
  application's SQLite database): every command refuses it at start in one line, without
  a traceback, and leaves it byte for byte as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from queue_service.store import NewJob, SQLiteStore, StoreUnavailable
from queue_service.store.sqlite import translate_error
from tests.conftest import assert_error, free_port
from tests.live_server import Seeded, jobs_snapshot, seed_database
from tests.processes import (
    REPO,
    Processes,
    stop,
    wait_healthy,
    wait_until,
    write_config,
)
from tests.reliability import (
    count_mismatches,
    fill_disk,
    integrity_check,
    read_only,
    tiny_filesystem,
    unwritable,
)

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queue_service", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with one line on stderr, `queue-service: ...` containing `words`."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queue-service: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def start_serve(
    processes: Processes, name: str, db: Path, config: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = processes.start(
        name, "serve", "--db", str(db), "--port", str(port), "--config", str(config)
    )
    wait_healthy(proc, port, processes)
    return proc, f"http://127.0.0.1:{port}"


# --- read-only database -------------------------------------------------------------------------


def read_only_database(tmp_path: Path, what: str) -> tuple[Path, Path, Seeded]:
    """A seeded database, and what to make unwritable: the file or its directory."""
    home = tmp_path / "data"
    home.mkdir()
    db = home / "q.db"
    seeded = asyncio.run(seed_database(db))
    settle(db)
    return db, (db if what == "file" else home), seeded


def settle(db: Path) -> None:
    """Leave the file as a cleanly stopped service does: the last read-write connection to
    close checkpoints the write-ahead log and removes it and the -shm file."""
    conn = sqlite3.connect(db)
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    conn.close()
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_database_serves_reads_and_answers_writes_with_503(
    what: str, processes: Processes, tmp_path: Path
) -> None:
    db, target, seeded = read_only_database(tmp_path, what)
    before = jobs_snapshot(db)
    settle(db)
    config = write_config(tmp_path, "workers = 1\n")
    headers = {"Authorization": f"Bearer {seeded.tokens['*']}"}
    with unwritable(target):
        assert not os.access(target, os.W_OK), f"{target} is still writable"
        proc, base = start_serve(processes, "serve-ro", db, config)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            listing = http.get("/jobs", params={"limit": 100})
            assert listing.status_code == 200, listing.text
            assert listing.json()["total"] == len(seeded.all_job_ids)
            for job_id in seeded.all_job_ids:
                assert http.get(f"/job/{job_id}").status_code == 200
            health = http.get("/healthz")
            assert health.status_code == 200 and health.json()["writable"] is False

            writes = [
                http.post("/plugin/ok/poll", json={"payload": {}}),
                http.post(f"/job/{seeded.jobs['queued'][0]}/cancel"),
            ]
            for response in writes:
                body = assert_error(response, 503, "unavailable")
                assert "read-only" in body["error"] and f"{what} is not writable" in body["error"]
                assert str(tmp_path) not in body["error"], "no server paths in API answers"
                assert response.headers.get("retry-after") == "1"
            # Reads still answer after refused writes.
            queued = http.get("/jobs?status=queued").json()["total"]
            assert queued == len(seeded.jobs["queued"])
        assert proc.poll() is None, "the read-only server must keep running"
        assert stop(proc, 30) == 0
    assert jobs_snapshot(db) == before, "nothing was written"
    log = processes.log_of(proc)
    said = [line for line in log.splitlines() if "read-only" in line]
    assert len(said) == 1, log
    assert str(target) in said[0] and "serving reads only" in said[0]
    assert "Traceback" not in log, log


@pytest.mark.parametrize("what", ["file", "directory"])
def test_the_cli_reads_a_read_only_database_and_refuses_writes_in_one_line(
    what: str, tmp_path: Path
) -> None:
    path, target, seeded = read_only_database(tmp_path, what)
    db = str(path)
    config = str(write_config(tmp_path, ""))
    with unwritable(target):
        listing = run_cli("jobs", "--db", db, "--limit", "100")
        assert listing.returncode == 0, listing.stderr
        for job_id in seeded.jobs["queued"]:
            assert job_id in listing.stdout
        token = run_cli("token", "create", "--name", "x", "--scope", "*", "--db", db)
        assert_refused(token, "read-only")
        assert_refused(
            run_cli("enqueue", "ok", "poll", "--db", db, "--config", config), "read-only"
        )
        assert_refused(run_cli("worker", "--db", db, "--config", config), "a worker needs to write")


def test_a_read_only_database_whose_schema_is_behind_is_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    home = tmp_path / "data"
    home.mkdir()
    db = home / "q.db"
    sqlite3.connect(db).close()  # an empty SQLite file: schema version 0
    with unwritable(db):
        line = assert_refused(run_cli("serve", "--db", str(db), "--port", str(free_port())))
    assert "read-only" in line and "migrated to version" in line and "make it writable" in line


@pytest.mark.anyio
async def test_the_store_opens_read_only_and_refuses_every_write(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    store = SQLiteStore(db)
    await store.open()
    job_id = (await store.enqueue(NewJob("p", "poll"))).job_id
    await store.close()
    with unwritable(db):
        store = SQLiteStore(db)
        await store.open()
        try:
            assert store.read_only is not None and "read-only" in store.read_only
            assert (await store.get_job(job_id)) is not None
            for write in (
                store.enqueue(NewJob("p", "poll")),
                store.cancel_job(job_id),
                store.claim_jobs("p", limit=1, owner="o", lease_seconds=5),
                store.recover_expired_leases(),
            ):
                with pytest.raises(StoreUnavailable, match="read-only"):
                    await write
        finally:
            await store.close()


# --- full disk ------------------------------------------------------------------------------------


class Disk:
    """A small disk to fill and free: a tmpfs with a ballast file (when mounting is
    permitted), or a file-size limit (RLIMIT_FSIZE) set on the server process from outside:
    its writes past the current size of the database then fail as on a full disk."""

    def __init__(self, home: Path, mounted: bool) -> None:
        self.home = home
        self.mounted = mounted
        self.ballast: Path | None = None

    def fill(self, pid: int, db: Path) -> None:
        if self.mounted:
            self.ballast = fill_disk(self.home)
            return
        sizes = [p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()]
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(sizes), hard))

    def free(self, pid: int) -> None:
        if self.mounted:
            assert self.ballast is not None
            self.ballast.unlink()
            return
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))


@pytest.fixture(params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    home = tmp_path / "disk"
    if request.param == "rlimit":
        home.mkdir()
        yield Disk(home, mounted=False)
        return
    with tiny_filesystem(home, "24m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here; the rlimit case still runs")
        yield Disk(home, mounted)


def test_a_full_disk_answers_503_keeps_reads_loses_nothing_and_recovers(
    disk: Disk, processes: Processes, tmp_path: Path
) -> None:
    db = disk.home / "q.db"
    seeded = asyncio.run(seed_database(db))
    ledger = tmp_path / "ledger.txt"  # off the small disk
    config = write_config(
        tmp_path,
        "workers = 2\nlease_seconds = 2\n\n[plugins.ledger]\nbackoff_seconds = 0\n"
        "max_attempts = 10\n",
    )
    proc, base = start_serve(processes, "serve-full", db, config)
    headers = {"Authorization": f"Bearer {seeded.tokens['*']}"}
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:

            def enqueue(sleep: float = 0) -> httpx.Response:
                payload = {"ledger": str(ledger), "sleep": sleep}
                response = http.post("/plugin/ledger/poll", json={"payload": payload})
                if response.status_code == 202:
                    acknowledged.append(response.json()["job_id"])
                return response

            def status(job_id: str) -> str:
                return str(http.get(f"/job/{job_id}").json()["status"])

            for _ in range(3):
                assert enqueue().status_code == 202
            # Two jobs are running when the disk fills; they must finish once it empties.
            for _ in range(2):
                assert enqueue(sleep=1.5).status_code == 202
            wait_until(
                lambda: all(status(j) == "running" for j in acknowledged[-2:]),
                "the long jobs to start",
                20,
            )

            disk.fill(proc.pid, db)
            refused: httpx.Response | None = None
            for _ in range(5000):
                response = enqueue()
                if response.status_code != 202:
                    refused = response
                    break
            assert refused is not None, "the full disk never refused a write"
            body = assert_error(refused, 503, "unavailable")
            cause = ("full",) if disk.mounted else ("full", "size limit")
            assert any(word in body["error"] for word in cause), body
            for _ in range(5):  # still full: still refused, still canonical
                assert_error(enqueue(), 503, "unavailable")
            listing = http.get("/jobs", params={"plugin": "ledger"})
            assert listing.status_code == 200 and listing.json()["total"] == len(acknowledged)
            assert http.get(f"/job/{acknowledged[0]}").status_code == 200
            assert http.get("/healthz").status_code == 200
            # The long jobs' plugins end while the disk is still full: recording their
            # outcome fails, and so do the heartbeats of their leases.
            long_jobs = acknowledged[3:5]
            wait_until(
                lambda: all(j in ledger.read_text() for j in long_jobs),
                "the long jobs' plugins to finish on the full disk",
                20,
            )
            time.sleep(2.5)  # past the 2 s lease
            assert_error(enqueue(), 503, "unavailable")
            assert proc.poll() is None, "the server must survive a full disk"

            disk.free(proc.pid)
            wait_until(lambda: enqueue().status_code == 202, "writes to resume", 20)
            wait_until(
                lambda: all(status(j) == "succeeded" for j in acknowledged),
                "every acknowledged job to succeed",
                60,
            )
        assert stop(proc, 30) == 0, processes.log_of(proc)
        assert integrity_check(db) == ["ok"]
        assert count_mismatches(db) == []
        with read_only(db) as conn:
            stored = {r[0] for r in conn.execute("SELECT job_id FROM jobs WHERE plugin='ledger'")}
        # Nothing acknowledged is lost; nothing refused left a row behind.
        assert stored == set(acknowledged)
        ran = Counter(ledger.read_text().split())
        assert set(ran) == set(acknowledged)
        # Only the jobs that ran while the disk was full may have run twice (their outcome
        # could not be recorded, so their lease expired and they ran again).
        assert {j for j, n in ran.items() if n > 1} <= set(long_jobs)
    finally:
        stop(proc, 30)


@pytest.mark.anyio
async def test_the_store_on_a_full_disk_refuses_writes_reads_on_and_recovers(
    tmp_path: Path,
) -> None:
    home = tmp_path / "disk"
    with tiny_filesystem(home, "8m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here (the server test covers rlimit)")
        store = SQLiteStore(home / "q.db")
        await store.open()
        try:
            kept = [(await store.enqueue(NewJob("p", "poll", {"n": n}))).job_id for n in range(50)]
            ballast = await asyncio.to_thread(fill_disk, home)
            refused: StoreUnavailable | None = None
            for n in range(5000):
                try:
                    kept.append((await store.enqueue(NewJob("p", "poll", {"n": n}))).job_id)
                except StoreUnavailable as exc:
                    refused = exc
                    break
            assert refused is not None, "the full disk never refused a write"
            assert "the disk holding the database is full" in str(refused)
            with pytest.raises(StoreUnavailable, match="full"):
                await store.enqueue_many([NewJob("p", "poll") for _ in range(100)])
            assert all([await store.get_job(job_id) for job_id in kept])
            ballast.unlink()
            kept.append((await store.enqueue(NewJob("p", "poll"))).job_id)
            assert (await store.pragma("integrity_check")) == "ok"
            assert all([await store.get_job(job_id) for job_id in kept])
        finally:
            await store.close()
        assert integrity_check(home / "q.db") == ["ok"]
        assert count_mismatches(home / "q.db") == []


def test_a_full_disk_at_start_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "disk"
    with tiny_filesystem(home, "1m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here")
        ballast = fill_disk(home)
        try:
            done = run_cli(
                "token", "create", "--name", "a", "--scope", "*", "--db", str(home / "q.db")
            )
            assert_refused(done, "full")
        finally:
            ballast.unlink()


# --- files that are not a queue-service database --------------------------------------------------


def _real_database(path: Path) -> None:
    async def build() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.enqueue_many([NewJob("p", "poll", {"pad": "x" * 200}) for _ in range(2000)])
        await store.close()

    asyncio.run(build())


def _truncated(path: Path) -> None:
    _real_database(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _schema_page_zeroed(path: Path) -> None:
    _real_database(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = bytes(4096 - 100)  # page 1 after the header: the schema's b-tree
    path.write_bytes(bytes(data))


def _header_garbled(path: Path) -> None:
    _real_database(path)
    data = bytearray(path.read_bytes())
    data[0:16] = b"SQLite format 2\0"
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(64 * 1024)), "not a queue-service"),
    "text": (lambda p: p.write_text("id,name\n1,ada\n" * 500), "not a queue-service"),
    "truncated database": (_truncated, "not a queue-service"),
    "zeroed schema page": (_schema_page_zeroed, "not a queue-service"),
    "garbled header": (_header_garbled, "not a queue-service"),
    "another application's database": (_foreign, "another application"),
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_serve_refuses_a_file_that_is_not_a_queue_service_database(
    kind: str, tmp_path: Path
) -> None:
    make, words = BAD_FILES[kind]
    db = tmp_path / "given.db"
    make(db)
    before = digest(db)
    started = time.monotonic()
    line = assert_refused(run_cli("serve", "--db", str(db), "--port", str(free_port())), words)
    assert str(db) in line
    assert time.monotonic() - started < 30
    assert digest(db) == before, "a refused file must be left as it was"


@pytest.mark.parametrize("kind", ["random bytes", "another application's database"])
@pytest.mark.parametrize("command", [["worker"], ["jobs"], ["migrate"], ["token", "list"]])
def test_every_command_refuses_a_file_that_is_not_a_queue_service_database(
    kind: str, command: list[str], tmp_path: Path
) -> None:
    make, words = BAD_FILES[kind]
    db = tmp_path / "given.db"
    make(db)
    before = digest(db)
    assert_refused(run_cli(*command, "--db", str(db)), words)
    assert digest(db) == before


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("SQLITE_FULL", "database or disk is full", "disk holding the database is full"),
        ("SQLITE_IOERR_WRITE", "disk I/O error", "size limit or quota"),
        ("SQLITE_READONLY", "attempt to write a readonly database", "read-only"),
        ("SQLITE_BUSY", "database is locked", "busy"),
    ],
)
def test_storage_errors_are_translated_to_messages_an_operator_can_act_on(
    name: str, text: str, words: str
) -> None:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorname = name
    translated = translate_error(error, "/data/q.db")
    assert isinstance(translated, StoreUnavailable)
    assert words in str(translated)


def copy_with_wal_but_no_shm(db: Path, home: Path) -> Path:
    """Commit a row that stays in the WAL, and copy the database and its WAL to `home`
    without the -shm file, as a crash and a restore might leave them."""
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("INSERT INTO plugin_state VALUES ('p', '{}', 'now')")
    home.mkdir()
    for suffix in ("", "-wal"):
        Path(f"{home / db.name}{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    writer.close()
    assert Path(f"{home / db.name}-wal").stat().st_size > 0
    return home


@pytest.mark.anyio
async def test_an_unwritable_directory_with_committed_rows_only_in_the_wal_is_refused(
    tmp_path: Path,
) -> None:
    """Reading such a file without its -shm would need immutable=1, which ignores the WAL:
    stale rows would be served as current. The store refuses instead, naming the fix."""
    source = tmp_path / "source"
    source.mkdir()
    db = source / "q.db"
    store = SQLiteStore(db)
    await store.open()
    await store.close()
    home = copy_with_wal_but_no_shm(db, tmp_path / "data")
    with unwritable(home):
        refused = SQLiteStore(home / "q.db")
        with pytest.raises(
            StoreUnavailable, match="write-ahead log .* make the directory writable"
        ):
            await refused.open()
        await refused.close()

"""Build a realistic N-job database for the benchmarks, fast, and cache it under bench/.data/.

The schema comes from the store itself (SQLiteStore.open() runs the migrations). Rows are
then bulk-loaded with executemany in large transactions: the jobs indexes and triggers are
dropped during the load and re-created from their own stored SQL afterwards, job_counts is
filled with one GROUP BY, and the result is verified: the schema is identical to a freshly
migrated one, job_counts equals COUNT(*) per (plugin, command, status, source), and the
re-created triggers keep job_counts exact on a test update (rolled back).

The mix: 20 plugins with Zipf-skewed volume and 2-5 commands each (most have `poll`),
~8% Databricks runs under plugin `databricks` (commands are job names), created_at spread
over the 30 days before the build, mostly succeeded, with failed, canceled, timed_out and
dead throughout and queued/running only among the newest rows. Local jobs have one
job_attempts row per attempt.

    python bench/build_db.py [--jobs N] [--quick] [--force]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import DATA, data_dir, print_table, write_results

from queue_service.store import SQLiteStore
from queue_service.store.sqlite.jobs import fold_count_deltas
from queue_service.store.sqlite.migrations import available_migrations
from queue_service.timeutil import format_ts

#: Bump when the generated data changes, so cached files are rebuilt.
GENERATOR_VERSION = 1
DEFAULT_JOBS = 1_000_000
QUICK_JOBS = 50_000
SPAN_DAYS = 30
CHUNK = 100_000

PLUGINS = (
    "withings", "github", "gmail", "garmin", "calendar", "strava", "todoist", "weather",
    "notion", "slack", "backup", "rss", "spotify", "plaid", "homeassistant", "jira",
    "dropbox", "photos", "hackernews", "podcasts",
)  # fmt: skip
COMMAND_WORDS = ("sync", "fetch", "report", "cleanup", "export", "handle", "refresh", "notify")
DATABRICKS_JOBS = (
    "nightly-etl", "hourly-ingest", "ml-feature-refresh", "billing-rollup", "dq-checks",
    "sessionize-events", "export-to-s3", "train-ranker", "compact-delta-tables", "adhoc-notebook",
    "daily-kpis", "backfill-orders",
)  # fmt: skip
DATABRICKS_SHARE = 0.08
DATABRICKS_HOST = "https://adb-1234567890123456.7.azuredatabricks.net"

#: Final statuses of finished jobs; queued/running are only given to the newest rows.
LOCAL_FINISHED = {
    "succeeded": 0.88,
    "failed": 0.06,
    "dead": 0.025,
    "canceled": 0.02,
    "timed_out": 0.015,
}
DATABRICKS_FINISHED = {
    "succeeded": 0.88,
    "failed": 0.07,
    "canceled": 0.03,
    "timed_out": 0.01,
    "dead": 0.01,
}
#: The newest TAIL_SHARE of rows is the live part of the queue.
TAIL_SHARE = 0.01
TAIL_ACTIVE = {"queued": 0.25, "running": 0.02}

JOB_COLUMNS = (
    "seq", "job_id", "plugin", "command", "status", "source", "payload", "result", "events",
    "logs", "last_error", "attempt", "max_attempts", "submitted_by", "external_id",
    "external_url", "dedupe_key", "schedule_id", "created_at", "started_at", "completed_at",
    "run_after", "lease_expires_at", "lease_owner", "cancel_requested",
)  # fmt: skip
INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)
ATTEMPT_COLUMNS = (
    "job_id", "attempt", "status", "started_at", "completed_at", "exit_code", "error",
    "stderr_tail",
)  # fmt: skip
INSERT_ATTEMPT = (
    f"INSERT INTO job_attempts ({', '.join(ATTEMPT_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
ERRORS = {
    "failed": "plugin exited with status 1: upstream API answered 502 Bad Gateway",
    "timed_out": "the command ran past its 60 s timeout and was terminated",
    "canceled": "canceled by request",
    "dead": "attempt 4 lost: its lease expired (the worker stopped)",
}


def migrations_hash() -> str:
    digest = hashlib.sha256()
    for migration in available_migrations():
        digest.update(f"{migration.version}:{migration.name}\n{migration.sql}".encode())
    return digest.hexdigest()[:10]


def db_path(jobs: int) -> Path:
    return DATA / f"jobs-{jobs}-g{GENERATOR_VERSION}-m{migrations_hash()}.db"


def meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


class Clock:
    """Fast fixed-width UTC text for epoch microseconds (the same text as timeutil.format_ts)."""

    def __init__(self) -> None:
        self._minutes: dict[int, str] = {}

    def ts(self, micros: int) -> str:
        seconds, us = divmod(micros, 1_000_000)
        minute, sec = divmod(seconds, 60)
        prefix = self._minutes.get(minute)
        if prefix is None:
            moment = datetime.fromtimestamp(minute * 60, UTC)
            prefix = self._minutes[minute] = moment.strftime("%Y-%m-%dT%H:%M:")
        return f"{prefix}{sec:02d}.{us:06d}Z"


class Picker:
    """Weighted choice from a uniform [0, 1) number (bisect on cumulative weights)."""

    def __init__(self, items: Sequence[str], weights: Sequence[float]) -> None:
        total = sum(weights)
        self.items = list(items)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))
        self.cumulative[-1] = 1.0

    def __call__(self, uniform: float) -> str:
        return self.items[bisect.bisect_right(self.cumulative, uniform)]


def zipf(count: int, exponent: float) -> list[float]:
    return [1 / rank**exponent for rank in range(1, count + 1)]


def _plugin_commands() -> dict[str, Picker]:
    """Each plugin's commands, skewed: mostly `poll` first, then 1-4 others."""
    rng = random.Random(7)
    table = {}
    for index, plugin in enumerate(PLUGINS):
        extra = rng.sample(COMMAND_WORDS, rng.randint(1, 4))
        commands = ["poll", *extra] if index % 5 != 4 else [*extra, "health"]
        table[plugin] = Picker(commands, zipf(len(commands), 1.3))
    return table


PICK_PLUGIN = Picker(PLUGINS, zipf(len(PLUGINS), 1.1))
PICK_COMMAND = _plugin_commands()
PICK_DATABRICKS_JOB = Picker(DATABRICKS_JOBS, zipf(len(DATABRICKS_JOBS), 0.9))
PICK_LOCAL_STATUS = Picker(list(LOCAL_FINISHED), list(LOCAL_FINISHED.values()))
PICK_DATABRICKS_STATUS = Picker(list(DATABRICKS_FINISHED), list(DATABRICKS_FINISHED.values()))
_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}

Row = tuple[Any, ...]
Chunk = tuple[int, int, list[int], int]


@dataclass(frozen=True, slots=True)
class Job:
    """What decides a local row; the rest is drawn in local_row."""

    seq: int
    job_id: str
    plugin: str
    command: str
    status: str
    created_us: int


def write_chunk(task: Chunk) -> str:
    """Generate a chunk into its own scratch SQLite file (tables jobs and job_attempts, no
    indexes) and return its path. Runs in a worker process; the main process copies the
    rows with INSERT ... SELECT, which costs far less than pickling them back."""
    seed, first_seq, created, tail_from = task
    rows, attempts = generate_chunk(seed, first_seq, created, tail_from)
    path = DATA / f"chunk-{os.getpid()}-{first_seq}.db"
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"CREATE TABLE jobs ({', '.join(JOB_COLUMNS)})")
        conn.execute(f"CREATE TABLE job_attempts ({', '.join(ATTEMPT_COLUMNS)})")
        conn.execute("BEGIN")
        conn.executemany(INSERT_JOB, rows)
        conn.executemany(INSERT_ATTEMPT, attempts)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return str(path)


def generate_chunk(
    seed: int, first_seq: int, created: list[int], tail_from: int
) -> tuple[list[Row], list[Row]]:
    """Job rows and attempt rows for consecutive seqs from `first_seq`, one per created time."""
    rng = random.Random(seed * 1_000_003 + first_seq)
    uniform = rng.random
    clock = Clock()
    rows: list[Row] = []
    attempts: list[Row] = []
    run_id = 880_000_000 + first_seq * 20
    for seq, created_us in enumerate(created, start=first_seq):
        status = None
        if seq > tail_from:
            roll = uniform()
            if roll < TAIL_ACTIVE["queued"]:
                status = "queued"
            elif roll < TAIL_ACTIVE["queued"] + TAIL_ACTIVE["running"]:
                status = "running"
        h = f"{rng.getrandbits(128):032x}"
        job_id = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
        if uniform() < DATABRICKS_SHARE:
            run_id += 1 + int(uniform() * 19)
            name = PICK_DATABRICKS_JOB(uniform())
            status = status or PICK_DATABRICKS_STATUS(uniform())
            rows.append(databricks_row(rng, clock, seq, job_id, run_id, name, status, created_us))
        else:
            plugin = PICK_PLUGIN(uniform())
            command = PICK_COMMAND[plugin](uniform())
            status = status or PICK_LOCAL_STATUS(uniform())
            job = Job(seq, job_id, plugin, command, status, created_us)
            rows.append(local_row(rng, clock, job, attempts))
    return rows, attempts


def local_row(rng: random.Random, clock: Clock, job: Job, attempts: list[Row]) -> Row:
    """One local job row; appends its job_attempts rows to `attempts`."""
    uniform = rng.random
    status = job.status
    created_at = clock.ts(job.created_us)
    scheduled = uniform() < 0.7
    limit = (10, 50, 100)[int(uniform() * 3)]
    payload = f'{{"since":"{created_at[:19]}Z","limit":{limit},"plugin":"{job.plugin}"}}'
    if status == "queued":
        attempt = 0
    elif status == "running":
        attempt = 1
    elif status == "succeeded":
        attempt = 2 if uniform() < 0.04 else 1
    elif status == "dead":
        attempt = 4
    elif status == "canceled":
        attempt = int(uniform() * 2)
    else:
        attempt = 1 + int(uniform() * 4)
    started_us = job.created_us + 2_000 + int(uniform() * 2_000_000) if attempt else None
    duration = int(rng.lognormvariate(13.5, 1.2))  # ~0.7 s median, a long tail
    finished = status not in ("queued", "running")
    completed_us = (started_us or job.created_us) + duration if finished else None
    result = last_error = logs = None
    if status == "succeeded":
        result = f'{{"ok":true,"items":{int(uniform() * 500)}}}'
        if uniform() < 0.1:
            logs = f'[{{"level":"info","message":"fetched {1 + int(uniform() * 99)} items"}}]'
    else:
        last_error = ERRORS.get(status)
    lease = clock.ts(started_us + 60_000_000) if status == "running" and started_us else None
    for number in range(1, attempt + 1):
        begun = (started_us or job.created_us) + (number - 1) * 30_000_000
        outcome = status if number == attempt else "failed"
        outcome = "lost" if outcome == "dead" else outcome
        ended = None if outcome == "running" else clock.ts(begun + duration)
        error = None if outcome in ("succeeded", "running") else ERRORS.get(outcome, ERRORS["dead"])
        exit_code = {"succeeded": 0, "failed": 1}.get(outcome)
        tail = "Traceback (most recent call last): ...\nRuntimeError: 502" if exit_code else None
        attempts.append(
            (job.job_id, number, outcome, clock.ts(begun), ended, exit_code, error, tail)
        )
    return (
        job.seq,
        job.job_id,
        job.plugin,
        job.command,
        status,
        "local",
        payload,
        result,
        None,
        logs,
        last_error,
        attempt,
        4,
        "scheduler" if scheduled else "token:admin",
        None,
        None,
        None,
        f"every-{(1, 5, 15, 60)[int(uniform() * 4)]}m" if scheduled else None,
        created_at,
        clock.ts(started_us) if started_us else None,
        clock.ts(completed_us) if completed_us else None,
        created_at,
        lease,
        "bench-worker-1" if status == "running" else None,
        0,
    )


def databricks_row(
    rng: random.Random,
    clock: Clock,
    seq: int,
    job_id: str,
    run_id: int,
    name: str,
    status: str,
    created_us: int,
) -> Row:
    created_at = clock.ts(created_us)
    duration = int(rng.lognormvariate(19.5, 1.0))  # ~5 min median
    done = status not in ("queued", "running")
    result_state = {
        "succeeded": "SUCCESS",
        "failed": "FAILED",
        "canceled": "CANCELED",
        "timed_out": "TIMEDOUT",
    }.get(status)
    dbx_job = 1_000 + DATABRICKS_JOBS.index(name)
    result = {
        "workspace": "prod",
        "job_id": dbx_job,
        "run_id": run_id,
        "original_attempt_run_id": run_id,
        "life_cycle_state": "TERMINATED" if done else status.upper(),
        "result_state": result_state,
        "status_state": "TERMINATED" if done else status.upper(),
        "termination_code": "SUCCESS" if status == "succeeded" else None,
        "termination_type": "SUCCESS" if status == "succeeded" else None,
        "trigger": "PERIODIC",
        "run_duration_ms": duration // 1000 if done else None,
    }
    return (
        seq,
        job_id,
        "databricks",
        name,
        status,
        "databricks",
        None,
        json.dumps(result, separators=(",", ":")),
        None,
        None,
        ERRORS.get(status),
        1,
        1,
        None,
        str(run_id),
        f"{DATABRICKS_HOST}/?o=1234567890123456#job/{dbx_job}/run/{run_id}",
        None,
        None,
        created_at,
        created_at,
        clock.ts(created_us + duration) if done else None,
        created_at,
        None,
        None,
        0,
    )


def created_times(jobs: int, seed: int, anchor: datetime) -> list[int]:
    """Sorted creation times (epoch microseconds) spread over SPAN_DAYS before `anchor`."""
    rng = random.Random(seed)
    end_us = int(anchor.timestamp()) * 1_000_000
    span = SPAN_DAYS * 86_400 * 1_000_000
    created = sorted(end_us - 1 - int(rng.random() * span) for _ in range(jobs))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    clock = Clock()
    for micros in (created[0], created[-1]):
        assert clock.ts(micros) == format_ts(epoch + timedelta(microseconds=micros))
    return created


def schema_of(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return sorted(
        conn.execute(
            "SELECT type, name, COALESCE(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )
    )


async def migrate(path: Path) -> None:
    store = SQLiteStore(path)
    try:
        await store.open()
    finally:
        await store.close()


def build(jobs: int, path: Path, seed: int) -> dict[str, Any]:
    """Build the database at `path` (through a temporary file) and return its metadata."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data_dir()
    tmp = path.with_name(path.name + ".building")
    for leftover in [*DATA.glob("chunk-*.db"), *DATA.glob("*.building*")]:
        leftover.unlink()  # from an interrupted build
    asyncio.run(migrate(tmp))
    anchor = datetime.now(UTC).replace(microsecond=0)

    created = created_times(jobs, seed, anchor)
    tail_from = int(jobs * (1 - TAIL_SHARE))
    tasks = [
        (seed, offset + 1, created[offset : offset + CHUNK], tail_from)
        for offset in range(0, jobs, CHUNK)
    ]
    # Generating rows is the slow part: worker processes make chunks while this one inserts.
    pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 2)

    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    conn.execute("PRAGMA temp_store = MEMORY")
    expected_schema = schema_of(conn)
    saved = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'jobs'"
        " AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY rowid"
    ).fetchall()

    mark = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for kind, name, _ in saved:
        conn.execute(f"DROP {kind.upper()} {name}")
    conn.execute("COMMIT")
    attempt_columns = ", ".join(ATTEMPT_COLUMNS)
    conn.execute(f"CREATE TEMP TABLE attempts ({attempt_columns})")
    with pool:
        for chunk in pool.imap(write_chunk, tasks):
            conn.execute("ATTACH DATABASE ? AS chunk", (chunk,))
            conn.execute("BEGIN IMMEDIATE")
            # Columns named on both sides: later migrations' columns (submitted_by_token)
            # stay NULL, as they are for jobs no token submitted.
            job_columns = ", ".join(JOB_COLUMNS)
            conn.execute(
                f"INSERT INTO main.jobs ({job_columns}) SELECT {job_columns} FROM chunk.jobs"
            )
            conn.execute(
                f"INSERT INTO temp.attempts SELECT {attempt_columns} FROM chunk.job_attempts"
            )
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE chunk")
            Path(chunk).unlink()
    # Attempts are keyed by the (random) job_id: insert them in key order.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"INSERT INTO main.job_attempts ({attempt_columns})"
        f" SELECT {attempt_columns} FROM temp.attempts ORDER BY job_id, attempt"
    )
    conn.execute("COMMIT")
    conn.execute("DROP TABLE temp.attempts")
    timings["generate_and_load_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for kind, _, sql in saved:
        if kind == "index":
            conn.execute(sql)
    # The counts and hourly rollups, the product's way: one delta per (key, hour), folded
    # by the store's own fold.
    conn.execute(
        "INSERT INTO job_count_deltas (plugin, command, status, source, hour, d)"
        " SELECT plugin, command, status, source, substr(created_at, 1, 13), COUNT(*)"
        " FROM jobs GROUP BY 1, 2, 3, 4, 5"
    )
    fold_count_deltas(conn)
    for kind, _, sql in saved:
        if kind == "trigger":
            conn.execute(sql)
    conn.execute("COMMIT")
    timings["index_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    verify(conn, expected_schema, jobs)
    timings["verify_s"] = time.perf_counter() - mark
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.replace(path)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    timings["total_s"] = time.perf_counter() - started
    meta = describe(path, jobs, seed, anchor, timings)
    meta_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def verify(
    conn: sqlite3.Connection, expected_schema: list[tuple[str, str, str]], jobs: int
) -> None:
    """Schema as migrated, job_counts exact, triggers live. Raises AssertionError."""
    if schema_of(conn) != expected_schema:
        raise AssertionError("the rebuilt schema differs from the migrated one")
    total = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    if total != jobs:
        raise AssertionError(f"expected {jobs} jobs, found {total}")
    mismatch = conn.execute(
        """
        SELECT COUNT(*) FROM (
            SELECT plugin, command, status, source, n FROM job_counts WHERE n != 0
            EXCEPT
            SELECT plugin, command, status, source, COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4
        ) UNION ALL SELECT COUNT(*) FROM (
            SELECT plugin, command, status, source, COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4
            EXCEPT
            SELECT plugin, command, status, source, n FROM job_counts WHERE n != 0
        )
        """
    ).fetchall()
    if any(row[0] for row in mismatch):
        raise AssertionError(f"job_counts differs from COUNT(*) GROUP BY: {mismatch}")
    orphans = conn.execute("PRAGMA foreign_key_check(job_attempts)").fetchmany(1)
    if orphans:
        raise AssertionError(f"job_attempts rows without a job: {orphans}")
    # The re-created triggers must keep counts exact: move one queued job, then roll back.
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT seq, plugin, command, source FROM jobs WHERE status = 'queued' LIMIT 1"
        ).fetchone()
        if row is not None:
            seq, plugin, command, source = row

            def count(status: str) -> int:
                found = conn.execute(
                    "SELECT n FROM job_counts WHERE plugin = ? AND command = ? AND status = ?"
                    " AND source = ?",
                    (plugin, command, status, source),
                ).fetchone()
                return found[0] if found else 0

            before = count("queued"), count("canceled")
            conn.execute("UPDATE jobs SET status = 'canceled' WHERE seq = ?", (seq,))
            fold_count_deltas(conn)
            after = count("queued"), count("canceled")
            if after != (before[0] - 1, before[1] + 1):
                raise AssertionError(f"the count triggers are not live: {before} -> {after}")
    finally:
        conn.execute("ROLLBACK")


def describe(
    path: Path, jobs: int, seed: int, anchor: datetime, timings: dict[str, float]
) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        counts = conn.execute(
            "SELECT plugin, command, status, source, n FROM job_counts WHERE n > 0"
        ).fetchall()
        attempts = conn.execute("SELECT COUNT(*) FROM job_attempts").fetchone()[0]
    finally:
        conn.close()
    by_status: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    by_plugin: Counter[str] = Counter()
    by_pair: Counter[tuple[str, str]] = Counter()
    for plugin, command, status, source, n in counts:
        by_status[status] += n
        by_source[source] += n
        by_plugin[plugin] += n
        by_pair[plugin, command] += n
    return {
        "path": path.name,
        "jobs": jobs,
        "attempts": attempts,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "migrations": migrations_hash(),
        "anchor": format_ts(anchor),
        "oldest": format_ts(anchor - timedelta(days=SPAN_DAYS)),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "by_status": dict(by_status.most_common()),
        "by_source": dict(by_source.most_common()),
        "plugins": [
            {
                "name": plugin,
                "jobs": n,
                "commands": [
                    {"name": c, "jobs": m} for (p, c), m in by_pair.most_common() if p == plugin
                ],
            }
            for plugin, n in by_plugin.most_common()
        ],
    }


def ensure_db(jobs: int, *, force: bool = False, seed: int = 42) -> tuple[Path, dict[str, Any]]:
    """The cached database of `jobs` rows (built when missing or stale) and its metadata."""
    path = db_path(jobs)
    meta_file = meta_path(path)
    if not force and path.exists() and meta_file.exists():
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        if meta.get("jobs") == jobs and meta.get("seed") == seed:
            return path, meta
    print(f"building {path.name} ({jobs:,} jobs) ...", flush=True)
    for stale in DATA.glob(f"jobs-{jobs}-*"):
        stale.unlink()
    return path, build(jobs, path, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help=f"default {DEFAULT_JOBS:,}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS:,} jobs")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    jobs = args.jobs or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    path, meta = ensure_db(jobs, force=args.force, seed=args.seed)
    t = meta["timings"]
    headers = ["file", "jobs", "attempts", "MB", "generate+load s", "index s", "verify s"]
    print_table(
        [*headers, "total s"],
        [
            [
                path.name,
                meta["jobs"],
                meta["attempts"],
                meta["file_mb"],
                t["generate_and_load_s"],
                t["index_s"],
                t["verify_s"],
                t["total_s"],
            ]
        ],
        title=f"database (built {meta['anchor']}; cached files are reused, --force rebuilds)",
    )
    print_table(
        ["status", "jobs"], list(meta["by_status"].items()), title="by status (from job_counts)"
    )
    print_table(["source", "jobs"], list(meta["by_source"].items()))
    print_table(
        ["plugin", "jobs", "commands"],
        [
            [p["name"], p["jobs"], " ".join(f"{c['name']}={c['jobs']}" for c in p["commands"][:5])]
            for p in meta["plugins"][:6]
        ],
        title="largest plugins",
    )
    write_results("build_db", {"database": meta}, quick=jobs != DEFAULT_JOBS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The store's contract, on every backend (a real temporary SQLite file, a fresh PostgreSQL
schema). Later work builds on these promises."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from queue_service.statuses import LOCAL_TRANSITIONS, Source, Status
from queue_service.store import (
    Conflict,
    ExternalJob,
    IllegalTransition,
    JobCount,
    JobFilter,
    JobNotFound,
    NewJob,
    SQLiteStore,
)
from queue_service.timeutil import format_ts, utcnow

from .conftest import RawDatabase

pytestmark = pytest.mark.anyio


async def test_pragmas_we_rely_on(store: SQLiteStore, require_sqlite: None) -> None:
    assert await store.pragma("journal_mode") == "wal"
    assert await store.pragma("foreign_keys") == 1
    assert await store.pragma("busy_timeout") == 5000
    assert await store.pragma("synchronous") == 1  # NORMAL


async def test_synchronous_full_is_configurable(db_path: Path) -> None:
    s = SQLiteStore(db_path, synchronous="FULL")
    await s.open()
    try:
        assert await s.pragma("synchronous") == 2
    finally:
        await s.close()


async def test_enqueue_then_get_round_trips_every_field(store: SQLiteStore) -> None:
    result = await store.enqueue(
        NewJob(
            "echo",
            "poll",
            {"n": 1, "nested": [1, "x"]},
            max_attempts=3,
            submitted_by="alice",
            submitted_by_token=7,
        )
    )
    assert not result.deduplicated
    job = await store.get_job(result.job_id)
    assert job is not None
    assert (job.plugin, job.command, job.status, job.source) == (
        "echo",
        "poll",
        Status.QUEUED,
        Source.LOCAL,
    )
    assert job.payload == {"n": 1, "nested": [1, "x"]}
    assert job.max_attempts == 3 and job.attempt == 0 and job.submitted_by == "alice"
    assert job.submitted_by_token == 7
    assert job.started_at is None and job.completed_at is None and job.result is None
    assert len(job.created_at) == 27 and job.created_at.endswith("Z")
    assert job.run_after == job.created_at


async def test_get_unknown_job_is_none(store: SQLiteStore) -> None:
    assert await store.get_job("00000000-0000-0000-0000-000000000000") is None
    assert await store.get_job("not-a-uuid") is None


async def test_dedupe_key_returns_the_active_job(store: SQLiteStore) -> None:
    first = await store.enqueue(NewJob("echo", "poll", {}, dedupe_key="k"))
    again = await store.enqueue(NewJob("echo", "poll", {"other": True}, dedupe_key="k"))
    assert again.deduplicated and again.job_id == first.job_id
    other_command = await store.enqueue(NewJob("echo", "handle", {}, dedupe_key="k"))
    assert not other_command.deduplicated
    # Once the first job finishes, the key is free again.
    await store.set_status(first.job_id, Status.RUNNING)
    await store.set_status(first.job_id, Status.SUCCEEDED)
    fresh = await store.enqueue(NewJob("echo", "poll", {}, dedupe_key="k"))
    assert not fresh.deduplicated and fresh.job_id != first.job_id
    page = await store.list_jobs(JobFilter(plugin="echo", command="poll"))
    assert page.total == 2


async def test_a_dedupe_key_is_scoped_to_its_submitter(store: SQLiteStore) -> None:
    """Another token can neither squat a key nor learn which job holds it."""
    squat = await store.enqueue(NewJob("echo", "poll", {}, dedupe_key="k", submitted_by="ro"))
    admin = await store.enqueue(NewJob("echo", "poll", {"a": 1}, dedupe_key="k", submitted_by="op"))
    assert not admin.deduplicated and admin.job_id != squat.job_id
    again = await store.enqueue(NewJob("echo", "poll", {}, dedupe_key="k", submitted_by="op"))
    assert again.deduplicated and again.job_id == admin.job_id
    job = await store.get_job(admin.job_id)
    assert job is not None and job.payload == {"a": 1}


async def test_enqueue_many_is_all_or_nothing(store: SQLiteStore) -> None:
    good = NewJob("echo", "poll", job_id="11111111-1111-1111-1111-111111111111")
    with pytest.raises(Exception, match="UNIQUE|constraint"):
        await store.enqueue_many([NewJob("echo", "poll"), good, good])
    assert (await store.list_jobs(JobFilter())).total == 0


async def test_legal_transitions_set_timestamps(store: SQLiteStore) -> None:
    job_id = (await store.enqueue(NewJob("echo", "poll"))).job_id
    assert await store.set_status(job_id, Status.RUNNING) is Status.RUNNING
    running = await store.get_job(job_id)
    assert running is not None and running.started_at is not None and running.completed_at is None
    await store.set_status(job_id, Status.FAILED, last_error="boom", result={"partial": 1})
    failed = await store.get_job(job_id)
    assert failed is not None
    assert failed.status is Status.FAILED and failed.last_error == "boom"
    assert failed.result == {"partial": 1} and failed.completed_at is not None


@pytest.mark.parametrize("terminal", [Status.SUCCEEDED, Status.FAILED, Status.CANCELED])
async def test_terminal_statuses_are_final(store: SQLiteStore, terminal: Status) -> None:
    job_id = (await store.enqueue(NewJob("echo", "poll"))).job_id
    await store.set_status(job_id, Status.RUNNING)
    await store.set_status(job_id, terminal)
    for target in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.DEAD):
        if target is terminal:
            continue
        with pytest.raises(IllegalTransition):
            await store.set_status(job_id, target)
    job = await store.get_job(job_id)
    assert job is not None and job.status is terminal


async def test_queued_cannot_skip_running(store: SQLiteStore) -> None:
    job_id = (await store.enqueue(NewJob("echo", "poll"))).job_id
    with pytest.raises(IllegalTransition):
        await store.set_status(job_id, Status.SUCCEEDED)


async def test_transition_of_unknown_job(store: SQLiteStore) -> None:
    with pytest.raises(JobNotFound):
        await store.set_status("nope", Status.RUNNING)


async def test_the_database_allows_exactly_the_vocabularys_local_transitions(
    raw_db: RawDatabase,
) -> None:
    """One truth: the trigger's table is LOCAL_TRANSITIONS, and hand-written SQL can make
    exactly those moves (terminal statuses stay final) and no other."""
    table = set(raw_db.execute("SELECT old_status, new_status FROM local_transitions"))
    assert table == {(old, new) for old, news in LOCAL_TRANSITIONS.items() for new in news}
    for old in Status:
        for new in Status:
            if new is old:
                continue
            job_id = f"{old}-{new}"
            raw_db.execute(
                "INSERT INTO jobs (job_id, plugin, command, status, created_at, run_after)"
                " VALUES (?, 'p', 'c', ?, '2026-01-01T00:00:00.000000Z', '')",
                (job_id, old.value),
            )
            update = "UPDATE jobs SET status = ? WHERE job_id = ?"
            if new in LOCAL_TRANSITIONS[old]:
                raw_db.execute(update, (new.value, job_id))
            else:
                with pytest.raises(raw_db.integrity_error, match="illegal status transition"):
                    raw_db.execute(update, (new.value, job_id))
    assert raw_db.execute("SELECT status FROM jobs WHERE job_id = 'queued-dead'") == [("dead",)]
    assert raw_db.execute("SELECT status FROM jobs WHERE job_id = 'dead-queued'") == [("dead",)]


async def test_listing_is_newest_first_with_exact_totals(store: SQLiteStore) -> None:
    ids = [(await store.enqueue(NewJob("p", "c", {"i": i}))).job_id for i in range(7)]
    page = await store.list_jobs(JobFilter(), limit=3)
    assert page.total == 7
    assert [j.job_id for j in page.jobs] == ids[::-1][:3]
    assert page.next_cursor is not None


async def test_paging_visits_every_job_once(store: SQLiteStore) -> None:
    # Same created_at for all: one transaction stamps one time, so the tie-break decides.
    results = await store.enqueue_many([NewJob("p", "c") for _ in range(25)])
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(JobFilter(), limit=4, cursor=cursor)
        seen += [j.job_id for j in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [r.job_id for r in results][::-1]


async def test_filters_and_totals_agree_for_every_combination(store: SQLiteStore) -> None:
    specs = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("a", "x")]
    for plugin, command in specs:
        await store.enqueue(NewJob(plugin, command))
    one = (await store.list_jobs(JobFilter(plugin="a", command="x"))).jobs[0]
    await store.set_status(one.job_id, Status.RUNNING)
    cases = {
        JobFilter(): 5,
        JobFilter(plugin="a"): 3,
        JobFilter(command="x"): 3,
        JobFilter(plugin="a", command="x"): 2,
        JobFilter(statuses=(Status.RUNNING,)): 1,
        JobFilter(statuses=(Status.QUEUED, Status.RUNNING), plugin="b"): 2,
        JobFilter(plugin="a", command="x", statuses=(Status.QUEUED,)): 1,
        JobFilter(sources=(Source.DATABRICKS,)): 0,
        JobFilter(plugin="zzz"): 0,
    }
    for filters, expected in cases.items():
        page = await store.list_jobs(filters, limit=200)
        assert page.total == expected, filters
        assert len(page.jobs) == expected, filters
        for job in page.jobs:
            assert filters.plugin in (None, job.plugin)
            assert filters.command in (None, job.command)
            assert not filters.statuses or job.status in filters.statuses


async def test_time_bounds_are_strict_and_counted(store: SQLiteStore) -> None:
    first = (await store.enqueue(NewJob("p", "c"))).job_id
    await asyncio.sleep(0.002)
    second = (await store.enqueue(NewJob("p", "c"))).job_id
    a, b = await store.get_job(first), await store.get_job(second)
    assert a is not None and b is not None
    after = await store.list_jobs(JobFilter(created_after=a.created_at))
    assert [j.job_id for j in after.jobs] == [second] and after.total == 1
    before = await store.list_jobs(JobFilter(created_before=b.created_at, plugin="p"))
    assert [j.job_id for j in before.jobs] == [first] and before.total == 1


async def test_counts_table_stays_exact_through_transitions(
    store: SQLiteStore, raw_db: RawDatabase
) -> None:
    ids = [(await store.enqueue(NewJob("p", "c"))).job_id for _ in range(5)]
    for job_id in ids[:3]:
        await store.set_status(job_id, Status.RUNNING)
    await store.set_status(ids[0], Status.SUCCEEDED)
    await store.set_status(ids[1], Status.QUEUED)
    truth = dict(raw_db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    # The counts and any deltas not folded yet (PostgreSQL folds them later).
    counted = dict(
        raw_db.execute(
            "SELECT status, SUM(n) FROM (SELECT status, n FROM job_counts"
            " UNION ALL SELECT status, d FROM job_count_deltas) AS c"
            " GROUP BY status HAVING SUM(n) > 0"
        )
    )
    assert counted == truth == {"queued": 3, "running": 1, "succeeded": 1}
    assert await store.queue_depth() == 4


async def test_tokens_store_only_hashes(store: SQLiteStore, raw_db: RawDatabase) -> None:
    token = await store.create_token("ci", "ab" * 32, ["jobs:ro"], None)
    assert token.scopes == ("jobs:ro",)
    with pytest.raises(Conflict):
        await store.create_token("ci", "cd" * 32, ["jobs:ro"], None)
    assert await store.revoke_token("ci")
    assert not await store.revoke_token("ci")
    # The name is free again once revoked.
    await store.create_token("ci", "ef" * 32, ["*"], None)
    assert await store.count_live_tokens() == 1
    stored = raw_db.execute("SELECT name, token_hash, scopes FROM tokens ORDER BY token_id")
    assert stored == [("ci", "ab" * 32, '["jobs:ro"]'), ("ci", "ef" * 32, '["*"]')]


async def test_concurrent_writers_in_one_process_never_lose_a_job(store: SQLiteStore) -> None:
    await asyncio.gather(*(store.enqueue(NewJob("p", "c", {"i": i})) for i in range(200)))
    assert (await store.list_jobs(JobFilter())).total == 200


async def test_slow_reads_are_interrupted(db_path: Path) -> None:
    from queue_service.store import QueryTimeout

    s = SQLiteStore(db_path, query_timeout_s=0.05)
    await s.open()
    try:

        def endless(conn: sqlite3.Connection) -> None:
            conn.execute(
                "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                "SELECT COUNT(*) FROM r"
            ).fetchone()

        with pytest.raises(QueryTimeout):
            await s._read(endless)
        # The connection is usable afterwards.
        assert await s.queue_depth() == 0
    finally:
        await s.close()


async def test_a_new_database_and_its_wal_are_private(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    try:
        await s.enqueue(NewJob("echo", "poll", {"secret": "payload"}))
        files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
            f.name: "0o600" for f in files
        }
    finally:
        await s.close()


async def test_an_existing_database_readable_by_others_is_reported(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o644))
    os.chmod(db_path, 0o644)  # whatever the umask
    s = SQLiteStore(db_path)
    await s.open()
    await s.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"{db_path} is readable by everyone (mode 644): it holds every payload and result; "
        "restrict it with chmod 600 (and its -wal and -shm files)"
    ]


async def test_concurrent_callers_lose_only_their_own_failed_work(
    store: SQLiteStore, store_backend: str
) -> None:
    """A failing caller loses only its own work, whoever writes at the same moment; on
    SQLite, callers that wait together share one COMMIT."""
    dup = "22222222-2222-2222-2222-222222222222"
    good = [store.enqueue(NewJob("g", "poll", {"i": i})) for i in range(40)]
    bad = store.enqueue_many([NewJob("b", "poll"), NewJob("b", "poll", job_id=dup)] * 2)
    more = [store.enqueue(NewJob("g", "poll", {"i": i})) for i in range(40, 80)]
    commits_before = store._writer.commits if isinstance(store, SQLiteStore) else 0
    outcomes = await asyncio.gather(*good, bad, *more, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 1 and "unique" in str(failures[0]).lower()
    assert (await store.list_jobs(JobFilter(plugin="g"))).total == 80
    assert (await store.list_jobs(JobFilter(plugin="b"))).total == 0
    assert await store.get_job(dup) is None
    if isinstance(store, SQLiteStore):
        # They were grouped: fewer COMMITs than callers.
        assert store._writer.commits - commits_before < 80


async def test_new_job_ids_are_uuid7_in_time_order(store: SQLiteStore) -> None:
    import uuid

    first = (await store.enqueue(NewJob("p", "c"))).job_id
    await asyncio.sleep(0.002)
    second = (await store.enqueue(NewJob("p", "c"))).job_id
    for job_id in (first, second):
        parsed = uuid.UUID(job_id)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == job_id
    assert first[:13] < second[:13]  # the millisecond prefix orders them


async def test_job_counts_are_exact_per_plugin_command_source_and_status(
    store: SQLiteStore,
) -> None:
    assert await store.job_counts() == []
    made: dict[str, tuple[str, str, Status]] = {}
    for plugin, command in [("a", "poll")] * 3 + [("a", "handle"), ("b", "poll")]:
        job_id = (await store.enqueue(NewJob(plugin, command))).job_id
        made[job_id] = (plugin, command, Status.QUEUED)
    [claimed] = await store.claim_jobs("a", limit=1, owner="w", lease_seconds=60)
    made[claimed.job_id] = (*made[claimed.job_id][:2], Status.RUNNING)
    b_job = next(i for i, (plugin, *_) in made.items() if plugin == "b")
    await store.cancel_job(b_job)
    made[b_job] = ("b", "poll", Status.CANCELED)
    # Every job of a key left it: the key is gone, not listed with 0.
    rows = await store.job_counts()
    assert all(isinstance(row, JobCount) and row.n > 0 for row in rows)
    expected = Counter((p, c, Source.LOCAL, s) for p, c, s in made.values())
    assert Counter({(r.plugin, r.command, r.source, r.status): r.n for r in rows}) == expected
    assert len(rows) == len(expected)
    # The same numbers as a listing's exact totals.
    for row in rows:
        filters = JobFilter(
            plugin=row.plugin, command=row.command, statuses=(row.status,), sources=(row.source,)
        )
        assert (await store.list_jobs(filters, limit=1)).total == row.n
    assert await store.queue_depth() == sum(
        r.n for r in rows if r.status in (Status.QUEUED, Status.RUNNING)
    )


async def test_oldest_queued_by_plugin_is_the_earliest_run_after_of_queued_local_jobs(
    store: SQLiteStore,
) -> None:
    assert await store.oldest_queued_by_plugin() == {}
    now = utcnow()
    later, much_later = (format_ts(now + timedelta(hours=h)) for h in (1, 2))
    first = (await store.enqueue(NewJob("a", "poll"))).job_id
    await store.enqueue(NewJob("a", "other"))
    await store.enqueue(NewJob("b", "poll", run_after=much_later))
    await store.enqueue(NewJob("b", "poll", run_after=later))
    claimed = (await store.enqueue(NewJob("c", "poll"))).job_id
    assert [
        j.job_id for j in await store.claim_jobs("c", limit=1, owner="w", lease_seconds=60)
    ] == [claimed]
    await store.upsert_external_jobs(
        [
            ExternalJob(
                job_id="databricks:w:1",
                plugin="databricks",
                command="etl",
                status=Status.QUEUED,
                status_if_new=Status.QUEUED,
                external_id="1",
                external_url=None,
                created_at=format_ts(now - timedelta(days=1)),
                started_at=None,
                completed_at=None,
                attempt=1,
                last_error=None,
                result={},
            )
        ]
    )
    first_job = await store.get_job(first)
    assert first_job is not None
    # a: its first job waited longest; b: the earlier of two future starts; c: none queued;
    # a queued Databricks run waits in Databricks, not for a worker.
    assert await store.oldest_queued_by_plugin() == {"a": first_job.run_after, "b": later}
    await store.cancel_job(first)
    remaining = await store.list_jobs(JobFilter(plugin="a", statuses=(Status.QUEUED,)))
    [left] = remaining.jobs
    left_job = await store.get_job(left.job_id)
    assert left_job is not None
    assert (await store.oldest_queued_by_plugin())["a"] == left_job.run_after

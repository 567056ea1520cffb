"""`copy_store` and `queue-service copy`: a whole store into another, counts checked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from queue_service.bootstrap import display_db
from queue_service.cli import main
from queue_service.statuses import AttemptStatus, Source, Status
from queue_service.store import (
    AlertRoute,
    AttemptEnd,
    ExternalJob,
    JobFilter,
    NewJob,
    SQLiteStore,
    Store,
    SyncState,
    create_store,
    open_store,
)
from queue_service.store.portable import PORTABLE_TABLES, CopyError, copy_store
from queue_service.timeutil import now_ts
from tests.conftest import PostgreSQLDatabase

pytestmark = pytest.mark.anyio

OWNER = "copy-test"


#: The backends a copy goes to; the `store` fixture gives every source backend, so the
#: tests below run for each (source, target) pair.
TARGETS = ("sqlite", "postgresql")


def new_database(request: pytest.FixtureRequest, backend: str, name: str) -> str:
    """A `--db` value naming a new, empty store of `backend` for this test: an SQLite file,
    or a schema of its own on the PostgreSQL test server (dropped after the test)."""
    if backend == "sqlite":
        return str(request.getfixturevalue("tmp_path") / f"{name}.db")
    database: PostgreSQLDatabase = request.getfixturevalue("postgresql_database")
    schema, url = database.new_schema()
    request.addfinalizer(lambda: database.drop_schema(schema))
    return url


@pytest.fixture(params=TARGETS, ids=[f"to_{name}" for name in TARGETS])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = create_store(new_database(request, request.param, "target"))
    await s.open()
    yield s
    await s.close()


async def fill(store: Store, *, jobs: int = 25) -> dict[str, Status]:
    """A store with something in every portable table; returns each job's final status."""
    alice = await store.create_token("alice", "ef" * 32, ["plugin:rw"], None)
    made = await store.enqueue_many(
        [
            NewJob(
                "p", f"c{i % 3}", {"i": i}, submitted_by="alice", submitted_by_token=alice.token_id
            )
            for i in range(jobs)
        ]
    )
    claimed = await store.claim_jobs("p", limit=4, owner=OWNER, lease_seconds=60)
    for index, job in enumerate(claimed):
        ok = index % 2 == 0
        end = AttemptEnd(
            status=Status.SUCCEEDED if ok else Status.FAILED,
            attempt_status=AttemptStatus.SUCCEEDED if ok else AttemptStatus.FAILED,
            result={"index": index} if ok else None,
            error=None if ok else "boom",
            exit_code=0 if ok else 1,
            stderr_tail=None if ok else "Traceback: boom",
            state_updates={"cursor": index} if ok else None,
        )
        await store.finish_attempt(
            job.job_id, plugin="p", attempt=job.attempt, owner=OWNER, end=end
        )
    await store.cancel_job(made[-1].job_id, reason="not needed")
    await store.create_token("ops", "ab" * 32, ["jobs:ro"], None)
    await store.create_token("old", "cd" * 32, ["*"], None)
    await store.revoke_token("old")
    ts = now_ts()
    await store.record_sync_page(
        SyncState(workspace="prod", host="https://x", watermark_ms=123, runs_ingested=1),
        [
            ExternalJob(
                job_id="databricks-prod-1",
                plugin="databricks",
                command="nightly",
                status=Status.RUNNING,
                status_if_new=Status.RUNNING,
                external_id="1",
                external_url="https://x/run/1",
                created_at=ts,
                started_at=ts,
                completed_at=None,
                attempt=1,
                last_error=None,
                result=None,
            )
        ],
    )
    await store.fire_schedule_slot(
        "p:hourly", "2026-12-02T10:00Z", "2026-12-02T11:00Z", NewJob("p", "c0", {}), False
    )
    statuses = {r.job_id: Status.QUEUED for r in made}
    for job_id in statuses:
        found = await store.get_job(job_id)
        assert found is not None
        statuses[job_id] = found.status
    return statuses


async def test_copy_moves_every_table_and_keeps_order_totals_and_fields(
    store: Store, target: Store
) -> None:
    await fill(store)
    # An alert already running on the target: its cursor stands before the copy.
    assert await target.route_alert_events(AlertRoute(alert="ops")) == 0
    report = await copy_store(store, target, batch=7)

    counts = await store.portable_counts()
    assert await target.portable_counts() == counts
    assert {t.table: t.copied for t in report.tables} == counts
    assert all(counts[t.name] > 0 for t in PORTABLE_TABLES), counts

    # Every job and its attempts, field for field; the pages in the same order.
    source_page = await store.list_jobs(JobFilter(), limit=100)
    target_page = await target.list_jobs(JobFilter(), limit=100)
    assert [j.job_id for j in target_page.jobs] == [j.job_id for j in source_page.jobs]
    assert target_page.total == source_page.total == counts["jobs"]
    for summary in source_page.jobs:
        assert await target.get_job(summary.job_id) == await store.get_job(summary.job_id)
        assert await target.get_attempts(summary.job_id) == await store.get_attempts(summary.job_id)
    # Totals come from the counts the target kept while the rows arrived.
    for status in Status:
        wanted = JobFilter(statuses=(status,))
        assert (await target.list_jobs(wanted)).total == (await store.list_jobs(wanted)).total
    assert (await target.list_jobs(JobFilter(sources=(Source.DATABRICKS,)))).total == 1
    assert await target.queue_depth() == await store.queue_depth()

    # Tokens (hashes only), schedule, sync and plugin state.
    live = await target.token_by_hash("ab" * 32)
    assert live is not None and live[0].name == "ops"
    assert [t.name for t in await target.list_tokens()] == [
        t.name for t in await store.list_tokens()
    ]
    assert await target.count_live_tokens() == 2
    # Own-job reads still find a token's jobs: token ids travel with the jobs.
    alice = await target.token_by_hash("ef" * 32)
    assert alice is not None
    mine = JobFilter(submitted_by_token=alice[0].token_id)
    assert (await target.list_jobs(mine)).total == (await store.list_jobs(mine)).total > 0
    # A token made on the target after the copy is numbered after the copied ones.
    copied_ids = [t.token_id for t in await target.list_tokens()]
    made = await target.create_token("after-copy", "12" * 32, ["jobs:ro"], None)
    assert made.token_id > max(copied_ids)
    assert await target.get_schedule_states() == await store.get_schedule_states()
    assert await target.get_sync_states() == await store.get_sync_states()
    assert await target.get_plugin_state("p") == await store.get_plugin_state("p") != {}
    # The failed jobs copied are not news: no alert event was recorded for them.
    assert (await target.list_jobs(JobFilter(statuses=(Status.FAILED,)))).total > 0
    assert await target.route_alert_events(AlertRoute(alert="ops")) == 0


async def test_a_non_empty_target_is_refused_and_nothing_is_written(
    store: Store, target: Store
) -> None:
    await fill(store, jobs=5)
    await target.enqueue(NewJob("q", "x", {}))
    before = await target.portable_counts()
    with pytest.raises(CopyError, match=r"not empty \(jobs 1\).*--merge"):
        await copy_store(store, target)
    assert await target.portable_counts() == before


async def test_merge_skips_what_the_target_holds_and_finishes_a_cut_short_copy(
    store: Store, target: Store
) -> None:
    await fill(store, jobs=10)
    # The first copy stops after one batch of jobs, as if the process died there.
    rows, _ = await store.export_rows("jobs", limit=4)
    assert await target.import_rows("jobs", rows) == 4
    assert await target.import_rows("jobs", rows) == 0  # re-imported: all present

    report = await copy_store(store, target, merge=True, batch=3)
    jobs = next(t for t in report.tables if t.table == "jobs")
    total = (await store.portable_counts())["jobs"]  # 10, the scheduled one and the run
    assert (jobs.copied, jobs.skipped, jobs.target_rows_after) == (total - 4, 4, total)
    assert await target.portable_counts() == await store.portable_counts()

    # Merging again copies nothing and changes nothing.
    again = await copy_store(store, target, merge=True)
    assert again.copied == 0
    assert await target.portable_counts() == await store.portable_counts()


async def test_pages_of_a_two_column_key_cover_every_row_once(store: Store) -> None:
    # schedule_fires pages by (schedule_key, slot): the cursor is a pair.
    fired = [(key, f"2026-12-02T{hour:02}:00Z") for key in ("p:a", "p:b") for hour in range(3)]
    for key, slot in fired:
        await store.fire_schedule_slot(key, slot, slot, NewJob("p", "c0", {}), False)
    seen: list[tuple[str, str]] = []
    rows, after = await store.export_rows("schedule_fires", limit=4)
    while True:
        seen += [(row[0], row[1]) for row in rows]
        if after is None:
            break
        assert isinstance(after, tuple) and len(after) == 2
        rows, after = await store.export_rows("schedule_fires", after=after, limit=4)
    assert seen == fired


async def test_a_nul_sqlite_holds_becomes_u_fffd_in_free_text_and_is_refused_in_a_key(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # SQLite text may hold NUL; PostgreSQL text cannot.
    source = SQLiteStore(tmp_path / "nul.db")
    await source.open()
    target = create_store(new_database(request, "postgresql", "nul-target"))
    await target.open()
    try:
        [job] = await source.enqueue_many([NewJob("p", "c", {})])
        [claimed] = await source.claim_jobs("p", limit=1, owner=OWNER, lease_seconds=60)
        end = AttemptEnd(
            status=Status.FAILED,
            attempt_status=AttemptStatus.FAILED,
            error="bad\x00byte",
            stderr_tail="tail\x00end",
        )
        await source.finish_attempt(
            job.job_id, plugin="p", attempt=claimed.attempt, owner=OWNER, end=end
        )
        await copy_store(source, target)
        copied = await target.get_job(job.job_id)
        assert copied is not None and copied.last_error == "bad\ufffdbyte"
        [attempt] = await target.get_attempts(job.job_id)
        assert (attempt["error"], attempt["stderr_tail"]) == ("bad\ufffdbyte", "tail\ufffdend")

        # A key with a NUL would name something else once changed: the copy stops there.
        [keyed] = await source.enqueue_many([NewJob("p", "c\x00x", {})])
        with pytest.raises(CopyError, match=r"jobs \(job_id '.*'\): its command holds a NUL"):
            await copy_store(source, target, merge=True)
        assert await target.get_job(keyed.job_id) is None
    finally:
        await source.close()
        await target.close()


async def test_batch_must_be_positive(store: Store, target: Store) -> None:
    with pytest.raises(ValueError, match="batch"):
        await copy_store(store, target, batch=0)


async def _fill_db(db: str) -> dict[str, Status]:
    store = await open_store(db)
    try:
        return await fill(store, jobs=6)
    finally:
        await store.close()


async def _statuses(db: str, job_ids: list[str]) -> list[Status | None]:
    store = await open_store(db)
    try:
        return [job.status if (job := await store.get_job(i)) else None for i in job_ids]
    finally:
        await store.close()


def test_cli_copy_reports_counts_and_refuses_a_missing_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_path = tmp_path / "source.db"
    statuses = asyncio.run(_fill_db(str(source_path)))
    target_path = tmp_path / "copy.db"

    assert main(["copy", "--from", str(source_path), "--to", str(target_path)]) == 0
    out = capsys.readouterr().out
    assert f"copied {source_path} -> {target_path}" in out
    jobs_line = next(line for line in out.splitlines() if line.startswith("jobs "))
    n = str(len(statuses) + 2)  # the scheduled job and the Databricks run too
    expected = f"jobs source {n} copied {n} skipped 0 target now {n}"
    assert jobs_line.split() == expected.split()
    assert asyncio.run(_statuses(str(target_path), list(statuses))) == list(statuses.values())

    # A second copy into the same target is refused, and says how to merge.
    assert main(["copy", "--from", str(source_path), "--to", str(target_path)]) == 1
    assert "--merge" in capsys.readouterr().err

    missing = tmp_path / "nope.db"
    assert main(["copy", "--from", str(missing), "--to", str(tmp_path / "x.db")]) == 1
    assert "no database at" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize(
    ("source_backend", "target_backend"),
    [("sqlite", "postgresql"), ("postgresql", "sqlite"), ("postgresql", "postgresql")],
)
def test_cli_copy_between_backends(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    source_backend: str,
    target_backend: str,
) -> None:
    source = new_database(request, source_backend, "source")
    statuses = asyncio.run(_fill_db(source))
    target = new_database(request, target_backend, "copy")

    assert main(["copy", "--from", source, "--to", target, "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert f"copied {display_db(source)} -> {display_db(target)}" in out
    n = len(statuses) + 2  # the scheduled job and the Databricks run too
    tables = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert tables["jobs"].split() == f"jobs source {n} copied {n} skipped 0 target now {n}".split()
    assert set(tables) == {table.name for table in PORTABLE_TABLES}
    assert asyncio.run(_statuses(target, list(statuses))) == list(statuses.values())

    # Copied again: refused, then merged with nothing left to copy.
    assert main(["copy", "--from", source, "--to", target]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["copy", "--from", source, "--to", target, "--merge"]) == 0
    merged = capsys.readouterr().out
    jobs_line = next(line for line in merged.splitlines() if line.startswith("jobs "))
    assert jobs_line.split() == f"jobs source {n} copied 0 skipped {n} target now {n}".split()


def test_a_database_url_is_printed_without_its_password() -> None:
    assert display_db("postgresql://qs:s3cret@db.example:5432/queue") == (
        "postgresql://qs:***@db.example:5432/queue"
    )
    assert display_db("postgresql://qs@db.example/queue") == "postgresql://qs@db.example/queue"
    assert display_db("/var/lib/qs.db") == "/var/lib/qs.db"

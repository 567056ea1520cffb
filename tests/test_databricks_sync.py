"""The Databricks sync worker against a fake workspace (real HTTP, real SDK, the real store of
every backend)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from queue_service.databricks import sync as sync_module
from queue_service.databricks.client import classify
from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig
from queue_service.databricks.mapping import run_job_id
from queue_service.databricks.status import EXTRA_PROGRESS, build_status
from queue_service.databricks.sync import COMMIT_MAX_RUNS, DatabricksSync
from queue_service.statuses import Source, Status
from queue_service.store import (
    ExternalJob,
    Job,
    JobFilter,
    Store,
    StoreUnavailable,
    SyncState,
    UpsertCounts,
)
from tests.fakes.databricks_server import FakeDatabricks, Fault, now_ms

pytestmark = pytest.mark.anyio

LIST = "/api/2.2/jobs/runs/list"
GET_RUN = "/api/2.2/jobs/runs/get"
GET_JOB = "/api/2.2/jobs/get"
TOKEN_ENV = "QS_TEST_DATABRICKS_TOKEN"
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the SDK from resolving anything from this machine's environment."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    with FakeDatabricks() as server:
        yield server


def settings(*workspaces: WorkspaceConfig, **overrides: Any) -> DatabricksConfig:
    values: dict[str, Any] = {
        "workspaces": list(workspaces),
        "retry_timeout_seconds": 1,
        "http_timeout_seconds": 5,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.4,
        "poll_interval_seconds": 0.05,
    }
    values.update(overrides)
    return DatabricksConfig(**values)


def workspace(
    fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch, name: str = "prod", env: str = TOKEN_ENV
) -> WorkspaceConfig:
    monkeypatch.setenv(env, fake.token)
    return WorkspaceConfig(name=name, host=fake.url, token_env=env)


async def job_of(store: Store, fake: FakeDatabricks, run_id: int) -> Job:
    job = await store.get_job(run_job_id(fake.url, run_id))
    assert job is not None, f"run {run_id} was not synced"
    return job


async def count(store: Store) -> int:
    page = await store.list_jobs(JobFilter(sources=(Source.DATABRICKS,)), limit=1)
    return page.total


async def state_of(store: Store, name: str = "prod") -> SyncState:
    (state,) = [s for s in await store.get_sync_states() if s.workspace == name]
    return state


class SpyStore:
    """Delegates to the real store, recording every record_sync_page call;
    raises once the ``crash_on``-th call starts (a crash before the commit).

    It implements the SyncStore protocol: mypy (which checks tests/ too) checks that at every
    ``DatabricksSync(..., spy)`` below."""

    def __init__(self, store: Store, crash_on: int | None = None) -> None:
        self.store = store
        self.crash_on = crash_on
        self.pages: list[tuple[SyncState, int]] = []
        self.run_ids: list[set[int]] = []  # the runs each call committed

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        if self.crash_on is not None and len(self.pages) + 1 == self.crash_on:
            raise RuntimeError("simulated crash")
        counts = await self.store.record_sync_page(state, jobs)
        self.pages.append((state, len(jobs)))
        self.run_ids.append({int(job.external_id) for job in jobs})
        return counts

    def __getattr__(self, name: str) -> Any:
        # Everything else of the Store protocol goes to the real store.
        return getattr(self.store, name)


@pytest.fixture
def no_commit_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches end by size only, whatever the load on the machine."""
    monkeypatch.setattr(sync_module, "COMMIT_MAX_SECONDS", 60.0)


# ---------------------------------------------------------------- happy paths


async def test_first_sync_reads_every_page_and_commits_them_in_batches(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    no_commit_timer: None,
) -> None:
    job = fake.add_job("Nightly ETL")
    now = now_ms()
    finished = fake.add_finished_runs(60, job_id=job, newest_start=now - 60_000, step_ms=60_000)
    failed = fake.start_run(job, start_time=now - 30_000)
    fake.finish_run(failed, "FAILED", message="Task main failed: ZeroDivisionError")
    running = fake.start_run(job)
    queued = fake.start_run(job, life_cycle_state="QUEUED")
    adhoc = fake.start_run(None, run_name="adhoc query", run_type="SUBMIT_RUN")
    (too_old,) = fake.add_finished_runs(1, job_id=job, newest_start=now - 200 * HOUR_MS)
    fake.rename_job(job, "Nightly ETL v2")  # runs keep the old run_name

    spy = SpyStore(store)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), spy)
    summary = await sync.sync_once()

    (result,) = summary.workspaces
    assert summary.ok, result.error
    assert await count(store) == 64
    assert await store.get_job(run_job_id(fake.url, too_old)) is None  # beyond lookback_hours
    assert (await job_of(store, fake, finished[0])).status is Status.SUCCEEDED
    failed_job = await job_of(store, fake, failed)
    assert failed_job.status is Status.FAILED
    assert failed_job.last_error == "Task main failed: ZeroDivisionError"
    assert (await job_of(store, fake, running)).status is Status.RUNNING
    assert (await job_of(store, fake, queued)).status is Status.QUEUED
    assert (await job_of(store, fake, running)).command == "Nightly ETL v2"  # jobs/get name
    assert (await job_of(store, fake, adhoc)).command == "adhoc query"  # run_name fallback
    assert fake.count(GET_JOB) == 1  # names are cached

    # Pages: 1 active page (3 runs) and 3 window pages (64 runs); one store call per listing.
    assert result.pages == 4
    assert [n for _, n in spy.pages] == [3, 64]
    assert {r.query["limit"] for r in fake.requests if r.path == LIST} == {"25"}
    window = [r for r in fake.requests if r.path == LIST and "start_time_from" in r.query]
    assert len(window) == 3
    assert abs(int(window[0].query["start_time_from"]) - (now - 168 * HOUR_MS)) < 60_000
    # The watermark moves only with the last page of the window.
    newest = max(fake.run(r)["start_time"] for r in (running, queued, adhoc))
    assert [s.watermark_ms for s, _ in spy.pages] == [None, newest]
    assert EXTRA_PROGRESS not in spy.pages[-1][0].extra
    state = await state_of(store)
    assert state.watermark_ms == newest
    assert state.healthy and state.last_success_at is not None
    assert state.runs_ingested == result.runs == 67
    assert state.host == fake.url


async def test_incremental_sync_sees_a_run_finish(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = fake.add_job("hourly")
    run_id = fake.start_run(job)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch), overlap_seconds=120), store)
    assert (await sync.sync_once()).ok
    before = await job_of(store, fake, run_id)
    assert before.status is Status.RUNNING and before.completed_at is None
    watermark = (await state_of(store)).watermark_ms
    assert watermark is not None and watermark == fake.run(run_id)["start_time"]

    fake.finish_run(run_id, "TIMEDOUT", message="Run timed out after 3600 seconds")
    summary = await sync.sync_once()
    assert summary.ok
    after = await job_of(store, fake, run_id)
    assert after.status is Status.TIMED_OUT
    assert after.completed_at is not None and after.last_error == "Run timed out after 3600 seconds"
    assert after.job_id == before.job_id and await count(store) == 1
    window = [r for r in fake.requests if r.path == LIST and "start_time_from" in r.query]
    assert int(window[-1].query["start_time_from"]) == watermark - 120_000
    assert summary.workspaces[0].updated == 1


async def test_run_finishing_outside_the_window_is_read_with_runs_get(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = fake.add_job("long")
    long_run = fake.start_run(job, start_time=now_ms() - 3 * HOUR_MS)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch), overlap_seconds=0), store)
    assert (await sync.sync_once()).ok
    fake.add_finished_runs(1, job_id=job)  # moves the watermark past long_run's start
    assert (await sync.sync_once()).ok
    assert fake.count(GET_RUN) == 0  # still active: the active_only listing returns it
    fake.finish_run(long_run, "SUCCESS")

    summary = await sync.sync_once()
    assert summary.ok and summary.workspaces[0].reconciled == 1
    assert fake.count(GET_RUN, run_id=str(long_run)) == 1
    assert (await job_of(store, fake, long_run)).status is Status.SUCCEEDED


async def test_repair_reopens_the_same_job(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = fake.add_job("flaky")
    run_id = fake.start_run(job, start_time=now_ms() - 60_000)
    fake.finish_run(run_id, "FAILED", message="boom")
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), store)
    assert (await sync.sync_once()).ok
    assert (await job_of(store, fake, run_id)).status is Status.FAILED

    fake.repair_run(run_id)
    assert (await sync.sync_once()).ok
    repaired = await job_of(store, fake, run_id)
    assert repaired.status is Status.RUNNING  # the one exit from a terminal status
    assert repaired.completed_at is None and repaired.last_error is None

    fake.finish_run(run_id, "SUCCESS")
    assert (await sync.sync_once()).ok
    assert (await job_of(store, fake, run_id)).status is Status.SUCCEEDED
    assert await count(store) == 1
    assert len(fake.run(run_id)["repair_history"]) == 2


async def test_restart_after_a_crash_mid_sync_loses_and_duplicates_nothing(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    no_commit_timer: None,
) -> None:
    runs = fake.add_finished_runs(1_100, newest_start=now_ms() - 60_000, step_ms=60_000)
    config = settings(workspace(fake, monkeypatch))
    # Store calls: 1 = the (empty) active listing, 2 = window batch 1 (500 runs, 20 pages),
    # 3 = window batch 2.
    crashing = SpyStore(store, crash_on=3)
    summary = await DatabricksSync(config, crashing).sync_once()
    assert not summary.ok and "simulated crash" in (summary.workspaces[0].error or "")
    assert await count(store) == COMMIT_MAX_RUNS == 500
    state = await state_of(store)
    assert state.watermark_ms is None  # not moved: older pages are still missing
    low = fake.run(runs[COMMIT_MAX_RUNS - 1])["start_time"]
    assert state.extra[EXTRA_PROGRESS]["low_ms"] == low

    restarted = DatabricksSync(config, store)  # a new process: state comes from the store
    summary = await restarted.sync_once()
    assert summary.ok and summary.workspaces[0].resumed
    assert await count(store) == 1_100
    last_window = [r for r in fake.requests if r.path == LIST and "start_time_from" in r.query]
    assert last_window[-1].query["start_time_to"] == str(low)
    state = await state_of(store)
    assert state.watermark_ms == fake.run(runs[0])["start_time"]
    assert EXTRA_PROGRESS not in state.extra

    again = await restarted.sync_once()
    assert again.ok and again.workspaces[0].inserted == 0
    assert await count(store) == 1_100


async def test_no_committed_state_skips_a_run_that_is_not_committed(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever call a crash follows, the state it left lets the next pass skip only
    runs that are already stored: the window above ``low_ms``, or up to the watermark."""
    job = fake.add_job("often")
    now = now_ms()
    fake.add_finished_runs(1_234, job_id=job, newest_start=now - 60_000, step_ms=7_000)
    for i in range(30):
        fake.start_run(job, start_time=now - 1_000 - i)
    spy = SpyStore(store)
    summary = await DatabricksSync(settings(workspace(fake, monkeypatch)), spy).sync_once()
    assert summary.ok
    window = next(r for r in fake.requests if r.path == LIST and "start_time_from" in r.query)
    from_ms = int(window.query["start_time_from"])
    starts = {run_id: fake.run(run_id)["start_time"] for run_id in fake.run_ids()}
    pages = len([r for r in fake.requests if r.path == LIST])
    assert len(spy.pages) < pages  # several pages per store call
    committed: set[int] = set()
    for state, run_ids in zip([s for s, _ in spy.pages], spy.run_ids, strict=True):
        committed |= run_ids
        progress = state.extra.get(EXTRA_PROGRESS)
        if progress is not None:
            assert state.watermark_ms is None  # a first sync: none until the window is stored
            skipped = {
                r for r, start in starts.items() if from_ms <= start and start > progress["low_ms"]
            }
        elif state.watermark_ms is not None:
            skipped = {r for r, start in starts.items() if from_ms <= start <= state.watermark_ms}
        else:
            continue  # the active listing, before any window page
        assert skipped <= committed, f"{len(skipped - committed)} runs skipped but not stored"
    assert committed == set(starts)


class WatchedStore:
    """Delegates to the real store; `syncing` is set while it holds a workspace's sync."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.syncing = asyncio.Event()

    @contextlib.asynccontextmanager
    async def exclusive_sync(self, workspace: str) -> AsyncIterator[bool]:
        async with self.store.exclusive_sync(workspace) as mine:
            if mine:
                self.syncing.set()
            yield mine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_workspace_synced_by_another_process_is_skipped(
    fake: FakeDatabricks,
    store: Store,
    another_store: Store,
    store_backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes (hosts) sync one workspace: while one's pass runs, the other skips its
    own, so each run is fetched and written by one pass."""
    if store_backend == "sqlite":
        pytest.skip("an SQLite file has one serving process; its sync's exclusion is in-process")
    job = fake.add_job("Nightly ETL")
    fake.add_finished_runs(30, job_id=job, newest_start=now_ms() - 60_000, step_ms=60_000)
    config = settings(workspace(fake, monkeypatch))
    first = WatchedStore(store)
    fake.inject(Fault.slow(30), path=LIST)  # holds the first pass in its first listing
    running = asyncio.create_task(DatabricksSync(config, first).sync_once())
    await asyncio.wait_for(first.syncing.wait(), 10)

    other = await DatabricksSync(config, another_store).sync_once()
    (skipped,) = other.workspaces
    assert skipped.ok and skipped.skipped, skipped
    assert (skipped.runs, skipped.inserted) == (0, 0)
    assert other.lines() == ["prod: skipped, another process is syncing it"]

    fake.clear_faults()
    (done,) = (await asyncio.wait_for(running, 30)).workspaces
    assert done.ok and not done.skipped, done.error
    assert done.inserted == 30
    assert fake.count(LIST) == done.pages, "only the pass that ran listed runs"
    assert await count(store) == 30
    # The lock went with the pass: the other process syncs next time (nothing new to add).
    (after,) = (await DatabricksSync(config, another_store).sync_once()).workspaces
    assert after.ok and not after.skipped and after.inserted == 0


async def test_pages_read_before_a_fault_are_kept(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    no_commit_timer: None,
) -> None:
    runs = fake.add_finished_runs(300, newest_start=now_ms() - 60_000, step_ms=60_000)
    # runs/list requests: 1 = active, 2-6 = window pages 1-5, then every request fails.
    fake.inject(Fault.internal_error(), times=None, path=LIST, skip=6)
    spy = SpyStore(store)
    summary = await DatabricksSync(settings(workspace(fake, monkeypatch)), spy).sync_once()
    assert not summary.ok and "INTERNAL_ERROR" in (summary.workspaces[0].error or "")
    assert [n for _, n in spy.pages] == [0, 125]  # the five pages, in one call
    assert await count(store) == 125
    state = await state_of(store)
    assert state.extra[EXTRA_PROGRESS]["low_ms"] == fake.run(runs[124])["start_time"]
    assert state.watermark_ms is None


async def test_cancelled_mid_sync_resumes(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_finished_runs(60, newest_start=now_ms() - 60_000, step_ms=60_000)
    config = settings(workspace(fake, monkeypatch), http_timeout_seconds=30)
    # runs/list requests: 1 = active, 2 = window page 1, 3 = window page 2 (hangs).
    fake.inject(Fault.slow(30), path=LIST, skip=2)
    task = asyncio.create_task(DatabricksSync(config, store).sync_once())
    # Page 1 is committed on its own once page 2 is COMMIT_MAX_SECONDS late.
    deadline = time.monotonic() + 10
    while not any(EXTRA_PROGRESS in s.extra for s in await store.get_sync_states()):
        assert time.monotonic() < deadline, "window page 1 was never committed"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(store) == 25

    fake.clear_faults()
    summary = await DatabricksSync(config, store).sync_once()
    assert summary.ok and summary.workspaces[0].resumed
    assert await count(store) == 60


# --------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limited(retry_after=0), Fault.unavailable(retry_after=0)],
    ids=["429", "503"],
)
async def test_sdk_retries_throttling_within_one_sync(
    fault: Fault, fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = fake.start_run(None)
    fake.inject(fault, path=LIST)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch), retry_timeout_seconds=10), store)
    summary = await sync.sync_once()
    assert summary.ok
    assert [r.status for r in fake.requests if r.path == LIST][:2] == [fault.status, 200]
    assert (await job_of(store, fake, run_id)).status is Status.RUNNING


TRANSIENT = [
    pytest.param(Fault.rate_limited(retry_after=0), "REQUEST_LIMIT_EXCEEDED", id="429-persistent"),
    pytest.param(Fault.unavailable(), "TEMPORARILY_UNAVAILABLE", id="503-persistent"),
    pytest.param(Fault.internal_error(), "INTERNAL_ERROR", id="500"),
    pytest.param(Fault.malformed_json(), "malformed JSON", id="malformed-json"),
    pytest.param(Fault.wrong_shape(), "unexpected shape", id="wrong-shape"),
    pytest.param(Fault.disconnect(), "cannot connect", id="disconnect"),
    pytest.param(Fault.slow(3), "timed out", id="slow"),
]


@pytest.mark.parametrize(("fault", "expected"), TRANSIENT)
async def test_transient_faults_back_off_then_recover(
    fault: Fault,
    expected: str,
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = fake.start_run(None)
    fake.inject(fault, times=None, path=LIST)
    config = settings(workspace(fake, monkeypatch), http_timeout_seconds=0.5)
    sync = DatabricksSync(config, store)
    summary = await sync.sync_once()
    (result,) = summary.workspaces
    assert not result.ok and result.fault_kind == "transient"
    assert expected in (result.error or "")
    state = await state_of(store)
    assert state.healthy  # transient: backing off, not unhealthy
    assert state.last_error == result.error and state.last_error_at is not None
    assert state.extra["consecutive_failures"] == 1
    assert build_status([state], enabled=True).workspaces[0].state == "backing_off"
    assert sync.next_delay("prod") == config.backoff_initial_seconds

    fake.clear_faults()
    summary = await sync.sync_once()
    assert summary.ok
    assert (await job_of(store, fake, run_id)).status is Status.RUNNING
    state = await state_of(store)
    assert state.extra["consecutive_failures"] == 0 and state.healthy
    assert build_status([state], enabled=True).workspaces[0].state == "ok"
    assert sync.next_delay("prod") == config.poll_interval_seconds


async def test_backoff_doubles_up_to_the_maximum(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.inject(Fault.internal_error(), times=None, path=LIST)
    config = settings(
        workspace(fake, monkeypatch), backoff_initial_seconds=0.1, backoff_max_seconds=0.5
    )
    sync = DatabricksSync(config, store)
    delays = []
    for _ in range(5):
        assert not (await sync.sync_once()).ok
        delays.append(sync.next_delay("prod"))
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert (await state_of(store)).extra["consecutive_failures"] == 5


AUTH = [
    pytest.param(Fault.unauthorized(numeric=True), "HTTP 401", id="401-numeric"),
    pytest.param(Fault.unauthorized(numeric=False), "HTTP 401", id="401"),
    pytest.param(Fault.forbidden(numeric=True), "HTTP 403", id="403-numeric"),
    pytest.param(Fault.forbidden_html(), "HTTP 403", id="403-html"),
]


@pytest.mark.parametrize(("fault", "expected"), AUTH)
async def test_auth_faults_make_the_workspace_unhealthy(
    fault: Fault,
    expected: str,
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = fake.start_run(None)
    fake.inject(fault, times=None, path=LIST)
    config = settings(workspace(fake, monkeypatch))
    sync = DatabricksSync(config, store)
    (result,) = (await sync.sync_once()).workspaces
    assert result.fault_kind == "auth"
    message = result.error or ""
    assert expected in message and "rejected the credentials" in message
    assert "'prod'" in message and fake.url in message
    assert fake.token not in message and "Config:" not in message and "<" not in message
    state = await state_of(store)
    assert not state.healthy and state.last_error == message
    status = build_status([state], enabled=True, workspaces=["prod"])
    assert not status.healthy and status.workspaces[0].state == "unhealthy"
    assert sync.next_delay("prod") == config.backoff_max_seconds

    fake.clear_faults()
    assert (await sync.sync_once()).ok
    assert (await state_of(store)).healthy
    assert (await job_of(store, fake, run_id)).status is Status.RUNNING


async def test_rotated_token_is_picked_up_after_an_auth_fault(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), store)
    assert (await sync.sync_once()).ok
    old_token = fake.token
    fake.token = "dapi-new-token-987654321"
    (result,) = (await sync.sync_once()).workspaces
    assert result.fault_kind == "auth" and "Invalid access token" in (result.error or "")
    assert old_token not in (result.error or "")
    monkeypatch.setenv(TOKEN_ENV, fake.token)  # the operator fixes the token
    assert (await sync.sync_once()).ok


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_host_is_transient(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "dapi-unused-token")
    ws = WorkspaceConfig(
        name="gone", host=f"http://127.0.0.1:{_closed_port()}", token_env=TOKEN_ENV
    )
    (result,) = (await DatabricksSync(settings(ws), store).sync_once()).workspaces
    assert result.fault_kind == "transient" and "cannot connect" in (result.error or "")
    assert (await state_of(store, "gone")).healthy


async def test_configuration_faults_are_unhealthy(fake: FakeDatabricks, store: Store) -> None:
    missing_env = WorkspaceConfig(name="noenv", host=fake.url, token_env="QS_TEST_UNSET_VAR")
    nothing = WorkspaceConfig(name="nothing")
    summary = await DatabricksSync(settings(missing_env, nothing), store).sync_once()
    by_name = {w.workspace: w for w in summary.workspaces}
    assert by_name["noenv"].fault_kind == "config"
    assert "QS_TEST_UNSET_VAR" in (by_name["noenv"].error or "")
    assert by_name["nothing"].fault_kind == "config"
    assert "cannot configure" in (by_name["nothing"].error or "")
    assert not (await state_of(store, "noenv")).healthy
    assert not (await state_of(store, "nothing")).healthy


async def test_malformed_run_is_skipped_and_the_page_kept(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = fake.start_run(None)
    fake.put_run({"run_id": 55, "start_time": "yesterday", "state": {}}, start_time=now_ms() - 5)
    also_good = fake.start_run(None, start_time=now_ms() - 10)
    with caplog.at_level(logging.WARNING, logger="queue_service.databricks"):
        summary = await DatabricksSync(settings(workspace(fake, monkeypatch)), store).sync_once()
    assert summary.ok and summary.workspaces[0].skipped_malformed == 1
    assert await count(store) == 2
    await job_of(store, fake, good)
    await job_of(store, fake, also_good)
    assert any(
        "run_id=55" in r.getMessage() and "start_time" in r.getMessage() for r in caplog.records
    )


async def test_unknown_state_keeps_status_and_raw_strings_and_logs_once(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    known = fake.start_run(None, life_cycle_state="QUEUED")
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), store)
    assert (await sync.sync_once()).ok
    assert (await job_of(store, fake, known)).status is Status.QUEUED
    unknown_state = {"life_cycle_state": "HIBERNATING", "state_message": ""}
    fake.set_state(known, state=unknown_state, status={"state": "HIBERNATING"})
    fresh = fake.start_run(None)
    fake.set_state(fresh, state=unknown_state, status={"state": "HIBERNATING"})
    with caplog.at_level(logging.WARNING, logger="queue_service.databricks"):
        summary = await sync.sync_once()
        assert (await sync.sync_once()).ok
    assert summary.ok and summary.workspaces[0].unknown_state == 2
    existing = await job_of(store, fake, known)
    assert existing.status is Status.QUEUED  # kept
    assert existing.result["life_cycle_state"] == "HIBERNATING"
    assert existing.result["status_state"] == "HIBERNATING"
    new = await job_of(store, fake, fresh)
    assert new.status is Status.RUNNING  # status_if_new while end_time is 0
    assert new.result["life_cycle_state"] == "HIBERNATING"
    unknown_logs = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(unknown_logs) == 1


async def test_vanished_active_run_becomes_dead(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = fake.start_run(None)
    finished = fake.start_run(None, start_time=now_ms() - 60_000)
    fake.finish_run(finished, "SUCCESS")
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), store)
    assert (await sync.sync_once()).ok
    fake.remove_run(active)
    fake.remove_run(finished)
    summary = await sync.sync_once()
    assert summary.ok and summary.workspaces[0].vanished == 1
    dead = await job_of(store, fake, active)
    assert dead.status is Status.DEAD
    assert dead.completed_at is not None and "vanished" in (dead.last_error or "")
    assert (await job_of(store, fake, finished)).status is Status.SUCCEEDED  # terminal: untouched


@pytest.mark.parametrize(
    "fault", [Fault.not_found_endpoint(), Fault.internal_error()], ids=["bare-404", "500"]
)
async def test_a_failing_runs_get_never_declares_a_run_dead(
    fault: Fault, fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = fake.start_run(None, start_time=now_ms() - 3 * HOUR_MS)
    config = settings(workspace(fake, monkeypatch), overlap_seconds=0)
    sync = DatabricksSync(config, store)
    assert (await sync.sync_once()).ok
    fake.remove_run(active)
    fake.inject(fault, times=None, path=GET_RUN)
    (result,) = (await sync.sync_once()).workspaces
    assert not result.ok and result.fault_kind == "transient"
    assert (await job_of(store, fake, active)).status is Status.RUNNING


def test_fault_messages_never_carry_secrets() -> None:
    from databricks.sdk.errors import PermissionDenied, TemporarilyUnavailable

    secret = "dapi-very-secret-0000"
    auth = classify(
        PermissionDenied(f"token {secret} is invalid. Config: host=x, token=***"),
        workspace="w",
        host="https://h",
        secrets=[secret],
    )
    assert auth.kind == "auth" and secret not in str(auth) and "Config" not in str(auth)
    transient = classify(
        TimeoutError("Timed out after 0:00:01"),
        workspace="w",
        host=None,
        secrets=[secret],
    )
    assert transient.kind == "transient"
    wrapped = TimeoutError("Timed out")
    wrapped.__cause__ = TemporarilyUnavailable(f"busy {secret}")
    message = str(classify(wrapped, workspace="w", host=None, secrets=[secret]))
    assert "gave up after retries" in message and "TemporarilyUnavailable" in message
    assert secret not in message


# ------------------------------------------------------- several workspaces


async def test_two_workspaces_one_broken(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    good_run = fake.start_run(None)
    good = workspace(fake, monkeypatch, name="good", env="QS_TEST_TOKEN_GOOD")
    monkeypatch.setenv("QS_TEST_TOKEN_BAD", "dapi-wrong-token")
    bad = WorkspaceConfig(name="bad", host=fake.url, token_env="QS_TEST_TOKEN_BAD")
    sync = DatabricksSync(settings(good, bad), store)
    summary = await sync.sync_once()
    by_name = {w.workspace: w for w in summary.workspaces}
    assert by_name["good"].ok and by_name["good"].inserted == 1
    assert by_name["bad"].fault_kind == "auth"
    assert (await job_of(store, fake, good_run)).status is Status.RUNNING
    status = await sync.status()
    assert not status.healthy
    assert [(w.workspace, w.state) for w in status.workspaces] == [
        ("good", "ok"),
        ("bad", "unhealthy"),
    ]
    # The active listing and the window both return the run: two records ingested.
    assert status.workspaces[0].runs_ingested == 2 and status.workspaces[0].watermark_ms
    assert "dapi-wrong-token" not in (status.workspaces[1].last_error or "")
    assert summary.lines()[1].startswith("bad: FAILED (auth)")


async def test_run_forever_keeps_a_healthy_workspace_fresh_while_another_hangs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeDatabricks() as fast, FakeDatabricks() as stuck:
        stuck.inject(Fault.slow(20), times=None, path=LIST)
        config = settings(
            workspace(fast, monkeypatch, name="fast", env="QS_TEST_TOKEN_FAST"),
            workspace(stuck, monkeypatch, name="stuck", env="QS_TEST_TOKEN_STUCK"),
            http_timeout_seconds=30,
        )
        sync = DatabricksSync(config, store)
        stop = asyncio.Event()
        forever = asyncio.create_task(sync.run_forever(stop, shutdown_grace=0.2))
        run_id = fast.start_run(None)
        deadline = time.monotonic() + 10
        while await store.get_job(run_job_id(fast.url, run_id)) is None:
            assert time.monotonic() < deadline, "the healthy workspace was never synced"
            await asyncio.sleep(0.02)
        fast.finish_run(run_id, "SUCCESS")
        while (await job_of(store, fast, run_id)).status is not Status.SUCCEEDED:
            assert time.monotonic() < deadline, "the healthy workspace stopped syncing"
            await asyncio.sleep(0.02)
        assert stuck.count(LIST) == 0  # its first request is still hanging
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(forever, timeout=5)
        assert time.monotonic() - started < 2
        stuck.clear_faults()  # releases the hanging request


async def test_run_forever_survives_faults_and_stops(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.inject(Fault.internal_error(), times=3, path=LIST)
    run_id = fake.start_run(None)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), store)
    stop = asyncio.Event()
    forever = asyncio.create_task(sync.run_forever(stop))
    deadline = time.monotonic() + 10
    while await store.get_job(run_job_id(fake.url, run_id)) is None:
        assert time.monotonic() < deadline and not forever.done()
        await asyncio.sleep(0.02)
    state = await state_of(store)
    assert "InternalError" in (state.last_error or "")  # it failed, then recovered
    stop.set()
    await asyncio.wait_for(forever, timeout=5)


class UnavailableStore(SpyStore):
    """The store away for the first `outage` page writes (a PostgreSQL server restarting)."""

    def __init__(self, store: Store, outage: int) -> None:
        super().__init__(store)
        self.outage = outage

    async def record_sync_page(self, state: SyncState, jobs: Sequence[ExternalJob]) -> UpsertCounts:
        if self.outage:
            self.outage -= 1
            raise StoreUnavailable("cannot reach PostgreSQL: the server is restarting")
        return await super().record_sync_page(state, jobs)


async def test_an_unavailable_store_is_one_line_and_the_next_pass_syncs(
    fake: FakeDatabricks,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_id = fake.start_run(None)
    unavailable = UnavailableStore(store, outage=1)
    sync = DatabricksSync(settings(workspace(fake, monkeypatch)), unavailable)
    with caplog.at_level(logging.WARNING, logger="queue_service.databricks"):
        assert not (await sync.sync_once()).ok
    said = [r for r in caplog.records if "the store is unavailable" in r.getMessage()]
    assert len(said) == 1 and "the server is restarting" in said[0].getMessage(), caplog.text
    assert all(r.exc_info is None for r in caplog.records), "no traceback for an outage"
    assert (await sync.sync_once()).ok
    assert (await job_of(store, fake, run_id)).external_id == str(run_id)


async def test_random_faults_converge_to_the_exact_remote_state(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = fake.add_job("batch")
    now = now_ms()
    fake.add_finished_runs(150, job_id=job, newest_start=now - 60_000, step_ms=1_000)
    fake.add_finished_runs(50, job_id=job, newest_start=now - 400_000, result_state="FAILED")
    active = [fake.start_run(job, start_time=now - i) for i in range(5)]
    fake.fail_randomly(
        4,
        seed=20240611,
        faults=[Fault.internal_error(), Fault.malformed_json(), Fault.unavailable(retry_after=0)],
    )
    sync = DatabricksSync(settings(workspace(fake, monkeypatch), retry_timeout_seconds=5), store)
    failures = 0
    for _ in range(40):
        if (await sync.sync_once()).ok:
            break
        failures += 1
    else:
        pytest.fail("the sync never completed under random faults")
    assert failures > 0  # the faults really happened
    fake.clear_faults()
    assert await count(store) == 205
    for run_id in fake.run_ids():
        job_row = await job_of(store, fake, run_id)
        life = fake.run(run_id)["state"]["life_cycle_state"]
        result = fake.run(run_id)["state"].get("result_state")
        expected = {
            "RUNNING": Status.RUNNING,
            "SUCCESS": Status.SUCCEEDED,
            "FAILED": Status.FAILED,
        }[result or life]
        assert job_row.status is expected, run_id
    assert {(await job_of(store, fake, r)).status for r in active} == {Status.RUNNING}


# ------------------------------------------------------ configuration paths


async def test_default_workspace_resolves_from_databricks_host_and_token(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", fake.token)
    run_id = fake.start_run(None)
    config = DatabricksConfig(retry_timeout_seconds=1)  # no workspaces listed
    summary = await DatabricksSync(config, store).sync_once()
    assert summary.ok and [w.workspace for w in summary.workspaces] == ["default"]
    job = await job_of(store, fake, run_id)
    assert job.result["workspace"] == "default"


async def test_profile_from_databrickscfg(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg_file = tmp_path / "databrickscfg"
    cfg_file.write_text(f"[dev]\nhost = {fake.url}\ntoken = {fake.token}\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg_file))
    run_id = fake.start_run(None)
    config = settings(WorkspaceConfig(profile="dev"))
    summary = await DatabricksSync(config, store).sync_once()
    assert summary.ok and summary.workspaces[0].workspace == "dev"
    assert (await job_of(store, fake, run_id)).status is Status.RUNNING


def test_importing_the_sync_does_not_import_the_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, queue_service.databricks.sync, queue_service.databricks.config, "
        "queue_service.databricks.status; "
        "print(sorted(m for m in sys.modules if m.startswith('databricks')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_config_rejects_duplicate_names_and_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unique"):
        DatabricksConfig(workspaces=[WorkspaceConfig(profile="a"), WorkspaceConfig(name="a")])
    with pytest.raises(ValidationError, match="token_env"):
        WorkspaceConfig(token_env="not a name")
    with pytest.raises(ValidationError, match="retry_timeout_seconds"):
        DatabricksConfig(retry_timeout_seconds=0)  # the SDK would read 0 as 300 s
    defaults = DatabricksConfig()
    assert (defaults.poll_interval_seconds, defaults.lookback_hours) == (30, 168)
    assert defaults.retry_timeout_seconds == 30
    assert [w.display_name for w in defaults.workspaces] == ["default"]
    assert WorkspaceConfig(host="https://ADB-1.azuredatabricks.net/").display_name == (
        "adb-1.azuredatabricks.net"
    )


async def test_run_forever_does_nothing_when_disabled(
    fake: FakeDatabricks, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.start_run(None)
    config = settings(workspace(fake, monkeypatch), enabled=False)
    stop = asyncio.Event()
    forever = asyncio.create_task(DatabricksSync(config, store).run_forever(stop))
    for _ in range(20):  # event-loop turns, not wall time: an enabled sync starts its loops here
        await asyncio.sleep(0)
    assert not forever.done(), "run_forever returned before stop was set"
    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("databricks-sync:")]
    assert loops == [], "a disabled sync started workspace loops"
    stop.set()
    await asyncio.wait_for(forever, timeout=2)
    assert fake.count(LIST) == 0 and await count(store) == 0

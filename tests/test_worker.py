"""The worker in-process, running real plugin subprocesses from tests/plugins.

Leases, grace periods and timeouts are small so the file stays fast. Backoff is
checked against an injected clock: the worker never sleeps through a retry delay here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from queue_service.config import ServiceConfig, parse_config
from queue_service.plugins import AttemptOutcome, OutcomeKind, Registry, load
from queue_service.statuses import TERMINAL, Source, Status
from queue_service.store import Job, JobFilter, NewJob, Store, StoreUnavailable
from queue_service.timeutil import format_ts, parse_rfc3339, utcnow
from queue_service.worker import Worker, backoff_delay, decide_end
from tests.processes import alive, kill_quietly, read_pid

from .conftest import RawDatabase

pytestmark = pytest.mark.anyio

PLUGINS = Path(__file__).parent / "plugins"
KILL_GRACE = 0.3


class FakeClock:
    """A clock the test moves by hand. It starts a little ahead of real time so that jobs
    enqueued (with run_after = the real now) are runnable for it at once."""

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_config(plugins: dict[str, dict[str, Any]] | None = None, **service: Any) -> ServiceConfig:
    settings: dict[str, Any] = {
        "plugin_dirs": [str(PLUGINS)],
        "workers": 4,
        "lease_seconds": 3,
        "shutdown_grace_seconds": 0.2,
    }
    settings.update(service)
    return parse_config({"service": settings, "plugins": plugins or {}})


def registry_for(config: ServiceConfig) -> Registry:
    return load(config.service.plugin_dirs, {n: s.config for n, s in config.plugins.items()})


@dataclass
class Harness:
    store: Store
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self.task is None
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def stopped(self, within: float = 15) -> None:
        """Stop the worker and wait for its graceful shutdown to finish."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, within)

    async def enqueue(
        self, plugin: str, command: str = "poll", payload: Any = None, **kw: Any
    ) -> str:
        settings = self.worker.config.plugin(plugin)
        kw.setdefault("max_attempts", settings.max_attempts)
        result = await self.store.enqueue(NewJob(plugin, command, payload or {}, **kw))
        self.worker.wake()
        return result.job_id

    async def job(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        assert job is not None, f"job {job_id} vanished"
        return job

    async def until(
        self, job_id: str, check: Callable[[Job], bool], what: str, within: float = 15
    ) -> Job:
        """Poll the job until `check` holds; fail naming `what` and the job's last state."""
        deadline = time.monotonic() + within
        while True:
            job = await self.job(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                attempts = await self.store.get_attempts(job_id)
                pytest.fail(f"job never became {what} within {within}s: {job} {attempts}")
            await asyncio.sleep(0.02)

    async def finished(self, job_id: str, within: float = 15) -> Job:
        return await self.until(job_id, lambda j: j.status in TERMINAL, "terminal", within)

    async def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return await self.store.get_attempts(job_id)


HarnessFactory = Callable[..., Harness]


@pytest.fixture
async def harness(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HarnessFactory]:
    # Plugins start with `#!/usr/bin/env python3`: let them find this interpreter first
    # rather than a slow shim (pyenv's costs about 0.1 s per run).
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    made: list[Harness] = []

    def make(config: ServiceConfig | None = None, **worker_options: Any) -> Harness:
        config = config or make_config()
        worker_options.setdefault("kill_grace", KILL_GRACE)
        worker_options.setdefault("poll_interval", 0.05)
        worker_options.setdefault("rng", random.Random(7))
        worker = Worker(store, registry_for(config), config, **worker_options)
        h = Harness(store, worker, asyncio.Event())
        made.append(h)
        return h

    yield make
    for h in made:
        if h.task is not None and not h.task.done():
            await h.stopped()


async def wait_for_pid_file(path: Path, within: float = 10) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = read_pid(path)
        if pid is not None:
            return pid
        await asyncio.sleep(0.02)
    pytest.fail(f"the plugin never wrote {path}")


async def eventually(check: Callable[[], bool], what: str, within: float = 10) -> None:
    """Poll `check` (state the test can observe) until it holds; fail naming `what`."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def gone(pid: int, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


# --- pure decisions: decide_end and backoff_delay ---------------------------------------


def a_job(attempt: int, max_attempts: int = 4) -> Job:
    return Job(
        job_id="j",
        plugin="p",
        command="poll",
        status=Status.RUNNING,
        source=Source.LOCAL,
        payload={},
        result=None,
        events=None,
        logs=None,
        last_error=None,
        attempt=attempt,
        max_attempts=max_attempts,
        submitted_by=None,
        external_id=None,
        external_url=None,
        created_at="2026-01-01T00:00:00.000000Z",
        started_at="2026-01-01T00:00:00.000000Z",
        completed_at=None,
        run_after="2026-01-01T00:00:00.000000Z",
        lease_expires_at=None,
        dedupe_key=None,
        schedule_id=None,
        seq=1,
    )


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_backoff_doubles_per_attempt_with_bounded_jitter() -> None:
    rng = random.Random(1)
    for attempt, base in ((1, 30), (2, 60), (3, 120), (4, 240)):
        for _ in range(50):
            delay = backoff_delay(30, attempt, rng)
            assert base <= delay <= base + 30 / 4, (attempt, delay)
    assert backoff_delay(0, 3, rng) == 0
    # The jitter spreads jobs that failed together.
    assert len({backoff_delay(30, 1, rng) for _ in range(20)}) > 1
    # Same seed, same answer: the randomness is injected, not global.
    assert backoff_delay(30, 2, random.Random(5)) == backoff_delay(30, 2, random.Random(5))


def test_decide_end_success_carries_result_and_state_updates() -> None:
    outcome = AttemptOutcome(
        kind=OutcomeKind.SUCCEEDED,
        result={"n": 1},
        exit_code=0,
        stderr_tail="note",
        events=({"type": "e"},),
        logs=({"message": "m"},),
        state_updates={"cursor": 9},
    )
    end = decide_end(a_job(1), outcome, backoff_seconds=30, now=NOW, rng=random.Random(0))
    assert end.status is Status.SUCCEEDED and end.attempt_status == "succeeded"
    assert end.result == {"n": 1} and end.state_updates == {"cursor": 9}
    assert end.events == [{"type": "e"}] and end.logs == [{"message": "m"}]
    assert (end.exit_code, end.stderr_tail, end.error, end.run_after) == (0, "note", None, None)


@pytest.mark.parametrize(
    ("kind", "attempt_status"),
    [
        (OutcomeKind.FAILED, "failed"),
        (OutcomeKind.PROTOCOL_ERROR, "failed"),
        (OutcomeKind.TIMED_OUT, "timed_out"),
    ],
)
def test_decide_end_retries_with_backoff_from_the_injected_now(
    kind: OutcomeKind, attempt_status: str
) -> None:
    outcome = AttemptOutcome(kind=kind, error="it broke", state_updates={"x": 1})
    for attempt in (1, 2, 3):
        end = decide_end(
            a_job(attempt, 4), outcome, backoff_seconds=10, now=NOW, rng=random.Random(attempt)
        )
        assert end.status is Status.QUEUED
        assert end.attempt_status == attempt_status and end.error == "it broke"
        assert end.state_updates is None, "state is only updated by a success"
        assert end.run_after is not None
        delay = (parse_rfc3339(end.run_after) - NOW).total_seconds()
        expected = backoff_delay(10, attempt, random.Random(attempt))
        assert delay == pytest.approx(expected, abs=1e-6)
        assert 10 * 2 ** (attempt - 1) <= delay <= 10 * 2 ** (attempt - 1) + 2.5


@pytest.mark.parametrize(
    ("kind", "final"),
    [
        (OutcomeKind.FAILED, Status.FAILED),
        (OutcomeKind.PROTOCOL_ERROR, Status.FAILED),
        (OutcomeKind.TIMED_OUT, Status.TIMED_OUT),
    ],
)
def test_decide_end_on_the_last_attempt_is_final(kind: OutcomeKind, final: Status) -> None:
    outcome = AttemptOutcome(kind=kind, error="it broke")
    end = decide_end(a_job(4, 4), outcome, backoff_seconds=10, now=NOW, rng=random.Random(0))
    assert end.status is final and end.run_after is None and end.error == "it broke"


def test_decide_end_without_retry_allowed_is_final_at_once() -> None:
    outcome = AttemptOutcome(kind=OutcomeKind.FAILED, error="no", retry_allowed=False)
    end = decide_end(a_job(1, 4), outcome, backoff_seconds=10, now=NOW, rng=random.Random(0))
    assert end.status is Status.FAILED and end.run_after is None


# --- jobs that end well and badly --------------------------------------------------------


async def test_ok_job_succeeds_with_result_logs_and_one_attempt(harness: HarnessFactory) -> None:
    h = harness()
    h.start()
    poll = await h.enqueue("ok", "poll", {"hello": "world"})
    handle = await h.enqueue("ok", "handle", {"event": "data"})
    job = await h.finished(poll)
    assert job.status is Status.SUCCEEDED, job
    assert job.result == {"hello": "world"}
    assert job.logs == [{"level": "info", "message": "ok plugin ran poll"}]
    assert job.events is None and job.last_error is None
    assert job.attempt == 1 and job.started_at is not None and job.completed_at is not None
    assert job.lease_expires_at is None
    (attempt,) = await h.attempts(poll)
    assert (attempt["attempt"], attempt["status"], attempt["exit_code"]) == (1, "succeeded", 0)
    assert attempt["completed_at"] is not None and attempt["error"] is None
    handled = await h.finished(handle)
    assert handled.status is Status.SUCCEEDED and handled.result == {"event": "data"}


async def idle_worker(h: Harness) -> None:
    """Start the worker and let it run one job, so that it is idle afterwards: waiting
    for work with nothing to claim."""
    h.start()
    await h.finished(await h.enqueue("ok"))
    await asyncio.sleep(0.3)


async def test_an_idle_worker_starts_a_job_its_store_enqueues_without_polling(
    harness: HarnessFactory,
) -> None:
    h = harness(poll_interval=3600)  # only a wake-up can start the job within the test
    await idle_worker(h)
    job_id = (await h.store.enqueue(NewJob("ok", "poll", {"n": 2}))).job_id  # no worker.wake()
    assert (await h.finished(job_id)).status is Status.SUCCEEDED


async def test_an_idle_worker_starts_a_job_another_process_enqueues_without_polling(
    harness: HarnessFactory, another_store: Store, store_backend: str
) -> None:
    if store_backend == "sqlite":
        pytest.skip("SQLite workers find other processes' jobs by polling")
    h = harness(poll_interval=3600)  # only a wake-up can start the job within the test
    await idle_worker(h)
    job_id = (await another_store.enqueue(NewJob("ok", "poll", {"n": 3}))).job_id
    assert (await h.finished(job_id)).status is Status.SUCCEEDED


async def test_error_retries_with_backoff_then_fails(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    config = make_config({"error": {"max_attempts": 3, "backoff_seconds": 10}})
    h = harness(config, clock=clock)
    claims: list[list[str]] = []  # the job ids of each claim of error jobs
    real_claim = h.store.claim_jobs

    async def claim_jobs(plugin: str, **kwargs: Any) -> list[Job]:
        jobs = await real_claim(plugin, **kwargs)
        if plugin == "error":
            claims.append([j.job_id for j in jobs])
        return jobs

    monkeypatch.setattr(h.store, "claim_jobs", claim_jobs)
    h.start()
    job_id = await h.enqueue("error", payload={"message": "upstream said no"})

    for attempt, base in ((1, 10), (2, 20)):
        waiting = await h.until(
            job_id,
            lambda j: j.status is Status.QUEUED and j.attempt == attempt,
            f"queued for a retry after attempt {attempt}",
        )
        assert waiting.last_error == "upstream said no", "last_error is kept while waiting"
        assert waiting.completed_at is None and waiting.lease_expires_at is None
        assert waiting.run_after is not None
        delay = (parse_rfc3339(waiting.run_after) - clock.now).total_seconds()
        assert base <= delay <= base + 10 / 4, delay
        # Not claimed before run_after: the worker looks for work, and leaves the job waiting.
        looked = len(claims)
        h.worker.wake()
        await eventually(lambda: len(claims) > looked, "the worker to look for error jobs")
        assert job_id not in [i for ids in claims[looked:] for i in ids]
        still = await h.job(job_id)
        assert (still.status, still.attempt) == (Status.QUEUED, attempt)
        clock.advance(delay + 0.001)
        h.worker.wake()

    job = await h.finished(job_id)
    assert job.status is Status.FAILED, job
    assert job.attempt == 3 and job.last_error == "upstream said no"
    assert job.logs == [{"level": "error", "message": "upstream said no"}]
    attempts = await h.attempts(job_id)
    assert [(a["attempt"], a["status"], a["error"]) for a in attempts] == [
        (n, "failed", "upstream said no") for n in (1, 2, 3)
    ]
    assert all("about to fail" in a["stderr_tail"] for a in attempts)
    assert await h.store.get_plugin_state("error") == {}, "an error's state_updates are dropped"


async def test_retry_false_fails_after_one_attempt(harness: HarnessFactory) -> None:
    h = harness(make_config({"noretry": {"max_attempts": 4, "backoff_seconds": 0}}))
    h.start()
    job = await h.finished(await h.enqueue("noretry"))
    assert job.status is Status.FAILED and job.attempt == 1
    assert job.last_error == "permanent failure: bad input"
    assert [a["status"] for a in await h.attempts(job.job_id)] == ["failed"]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({}, "exit code 78 (configuration error; no valid response: empty stdout)"),
        ({"respond": True}, "missing api_key (exit code 78: configuration error)"),
    ],
)
async def test_exit_78_fails_after_one_attempt(
    harness: HarnessFactory, payload: dict[str, Any], error: str
) -> None:
    h = harness(make_config({"exit78": {"max_attempts": 4, "backoff_seconds": 0}}))
    h.start()
    job = await h.finished(await h.enqueue("exit78", payload=payload))
    assert job.status is Status.FAILED and job.attempt == 1
    assert job.last_error == error
    (attempt,) = await h.attempts(job.job_id)
    assert attempt["exit_code"] == 78 and "missing api_key in config" in attempt["stderr_tail"]


async def test_backoff_zero_retries_at_once_until_attempts_run_out(
    harness: HarnessFactory,
) -> None:
    h = harness(make_config({"error": {"max_attempts": 2, "backoff_seconds": 0}}))
    h.start()
    job = await h.finished(await h.enqueue("error"))
    assert job.status is Status.FAILED and job.attempt == 2


@pytest.mark.parametrize(
    ("plugin", "how"),
    [("sleepy", "stopped by SIGTERM"), ("stubborn", "killed by SIGKILL after a 0.3s grace")],
)
async def test_past_the_deadline_the_job_times_out_and_its_process_is_stopped(
    harness: HarnessFactory, tmp_path: Path, plugin: str, how: str
) -> None:
    config = make_config({plugin: {"max_attempts": 1, "timeout_seconds": {"poll": 0.5}}})
    h = harness(config)
    h.start()
    pid_file = tmp_path / "pid"
    job_id = await h.enqueue(plugin, payload={"seconds": 60, "pid_file": str(pid_file)})
    pid = await wait_for_pid_file(pid_file)
    try:
        job = await h.finished(job_id)
        assert job.status is Status.TIMED_OUT, job
        assert job.last_error is not None
        assert job.last_error.startswith("timed out after 0.5s; " + how), job.last_error
        (attempt,) = await h.attempts(job_id)
        assert attempt["status"] == "timed_out"
        assert await gone(pid), f"plugin process {pid} outlived its timeout"
    finally:
        kill_quietly([pid])


async def test_a_timeout_with_attempts_left_is_retried(harness: HarnessFactory) -> None:
    config = make_config(
        {"sleepy": {"max_attempts": 2, "backoff_seconds": 0, "timeout_seconds": 0.3}}
    )
    h = harness(config)
    h.start()
    job = await h.finished(await h.enqueue("sleepy", payload={"seconds": 60}))
    assert job.status is Status.TIMED_OUT and job.attempt == 2
    assert [a["status"] for a in await h.attempts(job.job_id)] == ["timed_out", "timed_out"]


@pytest.mark.parametrize(
    ("plugin", "payload", "error"),
    [
        ("garbage", {}, "protocol violation: stdout is not JSON"),
        ("huge", {}, "protocol violation: stdout exceeded the 1048576-byte cap"),
        ("violations", {"mode": "no_status"}, "protocol violation: response has no status"),
        ("violations", {"mode": "ok_no_result"}, "protocol violation: status ok without result"),
    ],
)
async def test_protocol_violations_fail_the_job_naming_the_violation(
    harness: HarnessFactory, plugin: str, payload: dict[str, Any], error: str
) -> None:
    h = harness(make_config({plugin: {"max_attempts": 1}}))
    h.start()
    job = await h.finished(await h.enqueue(plugin, payload=payload))
    assert job.status is Status.FAILED, job
    assert job.last_error is not None and job.last_error.startswith(error), job.last_error
    (attempt,) = await h.attempts(job.job_id)
    assert attempt["status"] == "failed" and attempt["error"] == job.last_error


async def test_a_reply_over_the_stdout_cap_is_not_retried(harness: HarnessFactory) -> None:
    h = harness(make_config({"huge": {"max_attempts": 3, "backoff_seconds": 0}}))
    h.start()
    job = await h.finished(await h.enqueue("huge"))
    assert job.status is Status.FAILED and job.attempt == 1, job
    assert [a["status"] for a in await h.attempts(job.job_id)] == ["failed"]


async def test_the_request_and_environment_follow_the_config(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QS_TEST_WEBHOOK", "https://hooks.example/s3cret")
    monkeypatch.setenv("GITHUB_TOKEN", "gh-passed")
    monkeypatch.setenv("QS_TEST_NOT_PASSED", "hidden")
    config = parse_config(
        {
            "service": {
                "plugin_dirs": [str(PLUGINS)],
                "lease_seconds": 3,
                "plugin_env_passthrough": ["GITHUB_TOKEN"],
            },
            "plugins": {
                "introspect": {
                    "config": {"channel": "ops"},
                    "secrets": {"webhook": "${QS_TEST_WEBHOOK}"},
                }
            },
        }
    )
    h = harness(config)
    h.start()
    job = await h.finished(await h.enqueue("introspect", payload={"n": 1}))
    assert job.status is Status.SUCCEEDED, job
    request, env = job.result["request"], job.result["env"]
    assert request["context"] == {"ductile_plugin": "introspect"}
    assert request["config"] == {"channel": "ops"}
    assert request["secrets"] == {"webhook": "https://hooks.example/s3cret"}
    assert env["GITHUB_TOKEN"] == "gh-passed" and "QS_TEST_NOT_PASSED" not in env


async def test_a_valid_response_wins_over_the_exit_code(harness: HarnessFactory) -> None:
    h = harness(make_config({"scripted": {"max_attempts": 3, "backoff_seconds": 0}}))
    h.start()
    ok = {"status": "ok", "result": "done", "events": [], "logs": []}
    job = await h.finished(await h.enqueue("scripted", payload={"reply": ok, "exit_code": 1}))
    assert job.status is Status.SUCCEEDED and job.result == "done", job
    assert job.events == [] and job.logs == [], "an empty list is stored as [], not null"
    error = {"status": "error", "error": "no such repo", "retry": False}
    job = await h.finished(await h.enqueue("scripted", payload={"reply": error, "exit_code": 1}))
    assert job.status is Status.FAILED and job.attempt == 1, job
    assert job.last_error == "no such repo"
    (attempt,) = await h.attempts(job.job_id)
    assert attempt["exit_code"] == 1 and attempt["error"] == "no such repo"
    plain = {"status": "ok", "result": "done"}
    job = await h.finished(await h.enqueue("scripted", payload={"reply": plain}))
    assert job.events is None and job.logs is None, "no events key: nothing stored"


async def test_state_updates_are_merged_and_passed_as_state_next_time(
    harness: HarnessFactory,
) -> None:
    h = harness()
    h.start()
    jobs = []
    for expected in (1, 2, 3):
        job = await h.finished(await h.enqueue("stateful"))
        assert job.status is Status.SUCCEEDED, job
        assert job.result == {"counter": expected}, "the plugin saw the merged state"
        assert job.events == [
            {
                "type": "counter.incremented",
                "payload": {"counter": expected},
                "dedupe_key": f"counter:{expected}",
            }
        ]
        assert job.logs == [{"level": "info", "message": f"counter is now {expected}"}]
        jobs.append(job)
    assert await h.store.get_plugin_state("stateful") == {
        "counter": 3,
        "last_job_id": jobs[-1].job_id,
    }


def replying(state_updates: Any, status: str = "ok") -> dict[str, Any]:
    """A payload for the scripted plugin: answer `status` with these state_updates."""
    reply: dict[str, Any] = {"status": status, "state_updates": state_updates}
    reply.update({"result": "done"} if status == "ok" else {"error": "refused"})
    return {"reply": reply}


async def test_state_updates_are_a_shallow_merge_like_ductile(harness: HarnessFactory) -> None:
    h = harness(make_config({"scripted": {"max_attempts": 1}}))
    h.start()
    first = {"seen": {"a": 1, "b": 2}, "cursor": 1, "note": "keep", "price": 0.30000000000000004}
    job = await h.finished(await h.enqueue("scripted", payload=replying(first)))
    assert job.status is Status.SUCCEEDED, job
    second = {"seen": {"c": 3, "d": None}, "cursor": None, 'odd "key"': [1, None], "new": True}
    job = await h.finished(await h.enqueue("scripted", payload=replying(second)))
    assert job.status is Status.SUCCEEDED, job
    assert await h.store.get_plugin_state("scripted") == {
        "seen": {"c": 3, "d": None},  # a nested object is replaced whole, its nulls kept
        "cursor": None,  # null is stored as a value: the key stays
        "note": "keep",
        "price": 0.30000000000000004,
        'odd "key"': [1, None],
        "new": True,
    }
    job = await h.finished(await h.enqueue("scripted", payload=replying({"note": 1}, "error")))
    assert job.status is Status.FAILED
    assert (await h.store.get_plugin_state("scripted"))["note"] == "keep", "error: not applied"


async def test_state_over_one_mib_fails_the_job_without_retry(harness: HarnessFactory) -> None:
    h = harness(make_config({"scripted": {"max_attempts": 3, "backoff_seconds": 0}}))
    h.start()
    half = "x" * (600 * 1024)
    job = await h.finished(await h.enqueue("scripted", payload=replying({"a": half})))
    assert job.status is Status.SUCCEEDED, job
    job = await h.finished(await h.enqueue("scripted", payload=replying({"b": half})))
    assert job.status is Status.FAILED and job.attempt == 1, job
    assert job.last_error is not None and "1048576" in job.last_error, job.last_error
    assert await h.store.get_plugin_state("scripted") == {"a": half}, "nothing was merged"
    # Replacing a key keeps the merged state small: that is allowed.
    job = await h.finished(await h.enqueue("scripted", payload=replying({"a": half[:10]})))
    assert job.status is Status.SUCCEEDED, job


# --- concurrency ---------------------------------------------------------------------------


def trace_lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines()


def max_overlap(trace: Path) -> int:
    """The most runs that were in progress at once, from start/end lines."""
    events = []
    for line in trace_lines(trace):
        what, _pid, moment = line.split()
        events.append((float(moment), 1 if what == "start" else -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


async def run_traced(h: Harness, plugin: str, trace: Path, count: int) -> None:
    h.start()
    ids = [
        await h.enqueue(plugin, payload={"trace": str(trace), "seconds": 0.3}) for _ in range(count)
    ]
    for job_id in ids:
        job = await h.finished(job_id)
        assert job.status is Status.SUCCEEDED, job
    lines = trace_lines(trace)
    assert len(lines) == 2 * count, lines


async def test_a_plugin_that_is_not_concurrency_safe_runs_one_job_at_a_time(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    trace = tmp_path / "serial.trace"
    await run_traced(harness(make_config(workers=4)), "serial", trace, 4)
    assert max_overlap(trace) == 1


async def test_a_concurrency_safe_plugin_runs_jobs_side_by_side(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    """The control for the test above: the same trace does show overlap."""
    trace = tmp_path / "overlap.trace"
    await run_traced(harness(make_config(workers=4)), "overlap", trace, 4)
    assert max_overlap(trace) > 1


async def test_configured_concurrency_and_workers_cap_parallel_runs(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    per_plugin = tmp_path / "per-plugin.trace"
    await run_traced(
        harness(make_config({"overlap": {"concurrency": 2}}, workers=4)), "overlap", per_plugin, 5
    )
    assert max_overlap(per_plugin) == 2


async def test_workers_caps_parallel_runs(harness: HarnessFactory, tmp_path: Path) -> None:
    trace = tmp_path / "workers.trace"
    await run_traced(harness(make_config(workers=2)), "overlap", trace, 5)
    assert max_overlap(trace) == 2


# --- cancel, lease loss, shutdown ----------------------------------------------------------


async def start_sleepy(h: Harness, tmp_path: Path, name: str = "pid") -> tuple[str, int]:
    pid_file = tmp_path / name
    job_id = await h.enqueue("sleepy", payload={"seconds": 60, "pid_file": str(pid_file)})
    pid = await wait_for_pid_file(pid_file)
    job = await h.job(job_id)
    assert job.status is Status.RUNNING, job
    return job_id, pid


async def test_cancel_in_process_terminates_the_subprocess(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness()
    h.start()
    job_id, pid = await start_sleepy(h, tmp_path)
    try:
        # What POST /job/{id}/cancel does in the process that runs the job.
        assert await h.store.cancel_job(job_id) is Status.RUNNING
        assert h.worker.cancel_running(job_id)
        job = await h.finished(job_id, within=5)
        assert job.status is Status.CANCELED, job
        assert job.last_error == "canceled by request" and job.completed_at is not None
        assert [a["status"] for a in await h.attempts(job_id)] == ["canceled"]
        assert await gone(pid), f"plugin process {pid} survived the cancel"
        assert not h.worker.cancel_running(job_id), "no longer running here"
    finally:
        kill_quietly([pid])


async def test_cancel_from_another_process_is_seen_by_the_heartbeat(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(make_config(lease_seconds=1.5))  # heartbeat every 0.5 s
    h.start()
    job_id, pid = await start_sleepy(h, tmp_path)
    try:
        assert await h.store.cancel_job(job_id) is Status.RUNNING  # only the flag
        job = await h.finished(job_id, within=5)
        assert job.status is Status.CANCELED, job
        assert await gone(pid), f"plugin process {pid} survived the cancel"
    finally:
        kill_quietly([pid])


async def test_a_lost_lease_stops_the_subprocess_and_discards_the_outcome(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(make_config(lease_seconds=1.5))
    h.start()
    job_id, pid = await start_sleepy(h, tmp_path)
    try:
        # Another process decides this worker is gone (as if its heartbeats had stalled).
        later = utcnow() + timedelta(minutes=10)
        recovered = await h.store.recover_expired_leases(now=later)
        assert [r.job_id for r in recovered] == [job_id]
        assert await gone(pid), "the worker should stop a job whose lease it lost"
        await eventually(
            lambda: job_id not in h.worker.running_job_ids, "the worker to let go of the job"
        )
        job = await h.job(job_id)
        assert (job.status, job.attempt) == (Status.QUEUED, 1), job
        assert [a["status"] for a in await h.attempts(job_id)] == ["lost"]
    finally:
        kill_quietly([pid])


async def test_graceful_shutdown_returns_running_jobs_to_queued(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(make_config(shutdown_grace_seconds=0.2))
    h.start()
    first, pid1 = await start_sleepy(h, tmp_path, "one")
    second, pid2 = await start_sleepy(h, tmp_path, "two")
    try:
        await h.stopped()
        for job_id in (first, second):
            job = await h.job(job_id)
            assert job.status is Status.QUEUED, job
            assert job.attempt == 0, "the interrupted attempt is not spent"
            assert job.started_at is None and job.lease_expires_at is None
            # On record as interrupted, not counted.
            assert [(a["attempt"], a["status"]) for a in await h.attempts(job_id)] == [
                (1, "interrupted")
            ]
        assert await gone(pid1) and await gone(pid2)
    finally:
        kill_quietly([pid1, pid2])


async def test_shutdown_lets_jobs_finish_within_the_grace_period_and_claims_nothing(
    harness: HarnessFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queue_service.worker")
    h = harness(make_config(shutdown_grace_seconds=10))
    h.start()
    pid_file = tmp_path / "pid"
    job_id = await h.enqueue("sleepy", payload={"seconds": 1, "pid_file": str(pid_file)})
    await wait_for_pid_file(pid_file)
    h.stop.set()
    await eventually(lambda: "waiting up to 10 s for 1 running job" in caplog.text, "draining")
    late = await h.enqueue("ok")
    await h.stopped()
    job = await h.job(job_id)
    assert job.status is Status.SUCCEEDED and job.result == {"slept": 1}, job
    assert [a["status"] for a in await h.attempts(job_id)] == ["succeeded"]
    late_job = await h.job(late)
    assert (late_job.status, late_job.attempt) == (Status.QUEUED, 0), "claimed while stopping"


# --- jobs nobody can run, and crash leftovers ------------------------------------------------


async def test_a_job_of_an_uninstalled_plugin_stays_queued_and_is_reported(
    harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness()
    waiting = (await h.store.enqueue(NewJob("uninstalled", "poll", {}))).job_id
    h.start()
    # The worker runs other jobs meanwhile: once this one is done, the start-up check ran.
    ok = await h.finished(await h.enqueue("ok"))
    assert ok.status is Status.SUCCEEDED
    job = await h.job(waiting)
    assert (job.status, job.attempt) == (Status.QUEUED, 0), job
    said = [r.getMessage() for r in caplog.records if "uninstalled" in r.getMessage()]
    assert said == [
        "plugin uninstalled is not installed: 1 queued job(s) wait for it; install it, or "
        "cancel them with `queue-service cancel --plugin uninstalled`"
    ]


async def test_a_crashed_workers_job_is_recovered_and_run_again(
    harness: HarnessFactory, raw_db: RawDatabase
) -> None:
    h = harness()
    job_id = (await h.store.enqueue(NewJob("ok", "poll", {"n": 1}, max_attempts=3))).job_id
    past = format_ts(utcnow() - timedelta(minutes=5))
    raw_db.execute(
        "UPDATE jobs SET status = 'running', attempt = 1, started_at = ?,"
        " lease_expires_at = ?, lease_owner = 'crashed:1:x' WHERE job_id = ?",
        (past, past, job_id),
    )
    raw_db.execute(
        "INSERT INTO job_attempts (job_id, attempt, status, started_at) VALUES (?, 1, 'running', ?)",
        (job_id, past),
    )
    h.start()
    job = await h.finished(job_id)
    assert job.status is Status.SUCCEEDED and job.attempt == 2 and job.result == {"n": 1}
    assert [(a["attempt"], a["status"]) for a in await h.attempts(job_id)] == [
        (1, "lost"),
        (2, "succeeded"),
    ]


async def test_retention_prunes_old_finished_jobs(harness: HarnessFactory) -> None:
    clock = FakeClock()
    h = harness(make_config(retention_days=1), clock=clock)
    h.start()
    done = await h.finished(await h.enqueue("ok"))
    assert done.status is Status.SUCCEEDED
    waiting = await h.enqueue("ok", run_after=format_ts(utcnow() + timedelta(days=30)))
    assert await h.worker.prune() == 0, "inside the retention window"
    clock.advance(2 * 86400)
    assert await h.worker.prune() == 1
    assert await h.store.get_job(done.job_id) is None
    assert (await h.job(waiting)).status is Status.QUEUED


# --- robustness ---------------------------------------------------------------------------


async def test_shutdown_keeps_the_lease_while_a_slow_plugin_is_stopped(
    harness: HarnessFactory, tmp_path: Path
) -> None:
    """Stopping a plugin that ignores SIGTERM takes the kill grace. Meanwhile another
    process recovers expired leases; the job must still be released unspent."""
    config = make_config(lease_seconds=0.6, shutdown_grace_seconds=0)
    h = harness(config, kill_grace=1.5)
    h.start()
    pid_file = tmp_path / "pid"
    job_id = await h.enqueue("stubborn", payload={"pid_file": str(pid_file)})
    pid = await wait_for_pid_file(pid_file)
    try:
        stopping = asyncio.create_task(h.stopped())
        recovered = []
        while not stopping.done():  # another process, recovering as it should
            recovered += await h.store.recover_expired_leases()
            await asyncio.sleep(0.05)
        await stopping
        assert recovered == [], "the lease expired while the worker was stopping the job"
        job = await h.job(job_id)
        assert (job.status, job.attempt) == (Status.QUEUED, 0), job
        # On record as interrupted, not counted.
        assert [(a["attempt"], a["status"]) for a in await h.attempts(job_id)] == [
            (1, "interrupted")
        ]
        assert await gone(pid)
    finally:
        kill_quietly([pid])


def fail_first(
    monkeypatch: pytest.MonkeyPatch, store: Store, method: str, failures: list[StoreUnavailable]
) -> None:
    """Make `store.method` raise the `failures` (one per call) before it works again."""
    real = getattr(store, method)

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, method, flaky)


async def test_the_worker_survives_a_failing_claim(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness()
    failures = [StoreUnavailable("the database is busy; try again shortly")] * 2
    fail_first(monkeypatch, h.store, "claim_jobs", failures)
    job_id = await h.enqueue("ok")
    h.start()
    job = await h.finished(job_id)
    assert job.status is Status.SUCCEEDED and not failures
    assert h.task is not None and not h.task.done(), "the worker loop must keep running"


async def test_an_outcome_the_store_cannot_take_is_retried_while_the_lease_lasts(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL server restarting, a busy disk: recording the outcome fails a few
    times. The worker keeps it and tries again, so the job ends on its first attempt
    instead of waiting for its lease to expire and running again."""
    h = harness()
    failures = [StoreUnavailable("cannot reach PostgreSQL: the server is restarting")] * 3
    fail_first(monkeypatch, h.store, "finish_attempt", failures)
    job_id = await h.enqueue("ok")
    h.start()
    job = await h.finished(job_id)
    assert (job.status, job.attempt) == (Status.SUCCEEDED, 1) and not failures
    assert [a["status"] for a in await h.attempts(job_id)] == ["succeeded"]


async def test_an_outcome_is_given_up_when_the_lease_would_have_expired(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage longer than the lease: the worker stops trying (recovery owns the job
    now) and goes on with other work."""
    h = harness(make_config(lease_seconds=0.5))
    real_finish = h.store.finish_attempt
    tries: list[str] = []

    async def failing_finish(job_id: str, **kwargs: Any) -> Status | None:
        tries.append(job_id)
        if len(tries) < 100 and job_id == first:
            raise StoreUnavailable("cannot reach PostgreSQL: the server is down")
        return await real_finish(job_id, **kwargs)

    monkeypatch.setattr(h.store, "finish_attempt", failing_finish)
    first = await h.enqueue("ok", max_attempts=1)
    h.start()
    await eventually(lambda: not h.worker.running_job_ids and len(tries) > 1, "the give-up")
    given_up_after = len(tries)
    # Its outcome never reached the store: the lease expires and recovery ends the job.
    assert (await h.finished(first)).status is Status.DEAD
    second = await h.enqueue("ok")
    assert (await h.finished(second)).status is Status.SUCCEEDED
    assert tries.count(first) == given_up_after, "the worker went on trying after the lease"


async def test_the_worker_starts_while_the_store_cannot_count_missing_plugins(
    harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness()

    async def unavailable() -> dict[str, int]:
        raise StoreUnavailable("cannot reach PostgreSQL: the server is starting")

    monkeypatch.setattr(h.store, "queued_by_plugin", unavailable)
    job_id = await h.enqueue("ok")
    h.start()
    assert (await h.finished(job_id)).status is Status.SUCCEEDED


async def test_missing_plugins_are_counted_without_touching_their_jobs(
    harness: HarnessFactory,
) -> None:
    h = harness()
    await h.store.enqueue_many([NewJob("uninstalled", "poll", {}) for _ in range(1203)])
    await h.store.enqueue(NewJob("ok", "poll", {}))
    assert await h.worker.missing_plugins() == {"uninstalled": 1203}
    page = await h.store.list_jobs(JobFilter(plugin="uninstalled", statuses=(Status.QUEUED,)))
    assert page.total == 1203

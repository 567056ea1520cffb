"""The Databricks sync under random faults, compared with a fault-free sync."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queue_service.store import SQLiteStore
from tests.reliability._db import (
    Log,
    quiet,
    read_only,
)


@dataclass
class SyncFaultReport:
    runs: int = 0
    passes: int = 0
    failed_passes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    rows_compared: int = 0
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        injected = sum(self.faults.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()))
        return (
            f"{self.runs} runs, {injected} of {self.requests} requests failed ({kinds}); "
            f"{self.passes} passes ({self.failed_passes} cut short by a fault) in "
            f"{self.seconds:.0f} s; {self.rows_compared} rows compared with a fault-free "
            f"sync: {len(self.differences)} differ"
        )


def sync_faults(immediate_weight: int = 1) -> list[Any]:
    """Every way the fake can fail a request (`slow` outlasts the client's HTTP timeout).

    The SDK retries 429, 503, refused connections and timeouts itself, sleeping a second
    or more each time, before the sync sees a fault; the others fail the pass at once.
    `immediate_weight` repeats the immediate kinds so that a short run still goes through
    many interrupted passes (the sync's own resume logic) rather than the SDK's sleeps.
    """
    from tests.fakes.databricks_server import Fault

    immediate = [
        Fault.internal_error(),
        Fault.malformed_json(),
        Fault.wrong_shape(),
        Fault.not_found_endpoint(),
    ]
    retried = [
        Fault.unavailable(retry_after=0),
        Fault.rate_limited(retry_after=0),
        Fault.disconnect(),
        Fault.slow(0.8),
    ]
    return immediate * immediate_weight + retried


@contextlib.contextmanager
def sdk_environment(tmp: Path, token_env: str, token: str) -> Iterator[None]:
    """The SDK resolves nothing from this machine (no DATABRICKS_* variables, no
    ~/.databrickscfg); the workspace token is in `token_env`. Restored on exit."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            del os.environ[name]
    os.environ["DATABRICKS_CONFIG_FILE"] = str(tmp / "no-databrickscfg")
    os.environ[token_env] = token
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _job_rows(db: Path) -> dict[str, dict[str, Any]]:
    with read_only(db) as conn:
        cursor = conn.execute("SELECT * FROM jobs WHERE source = 'databricks'")
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {row["job_id"]: {k: v for k, v in row.items() if k != "seq"} for row in rows}


async def run_databricks_faults(
    tmp: Path,
    *,
    runs: int = 10_000,
    one_in: int = 5,
    seed: int = 5,
    jobs: int = 40,
    active: int = 30,
    max_passes: int = 3000,
    immediate_weight: int = 1,
    log: Log = quiet,
) -> SyncFaultReport:
    """Sync a `runs`-run history from a fake workspace that fails one request in `one_in`
    at random (every fault kind), while runs finish, start and get repaired half-way; then
    sync the final history without faults into a second database and compare every row."""
    from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig
    from queue_service.databricks.sync import DatabricksSync
    from tests.fakes.databricks_server import FakeDatabricks, now_ms

    rng = random.Random(seed)
    report = SyncFaultReport()
    token_env = "QS_RELIABILITY_DATABRICKS_TOKEN"
    started = time.monotonic()
    with FakeDatabricks() as fake, sdk_environment(tmp, token_env, fake.token):
        job_ids = [fake.add_job(f"job-{n:02d}") for n in range(jobs)]
        states = ["SUCCESS"] * 6 + ["FAILED", "CANCELED", "TIMEDOUT", "SUCCESS_WITH_FAILURES"]
        now = now_ms()
        per_job = runs // jobs
        for n, job in enumerate(job_ids):
            fake.add_finished_runs(
                per_job + (1 if n < runs % jobs else 0),
                job_id=job,
                newest_start=now - 60_000 - n * 37,
                step_ms=40_000,
                result_state=states[n % len(states)],
            )
        lifecycles = ["RUNNING", "PENDING", "QUEUED"]
        running = [
            fake.start_run(
                rng.choice(job_ids), start_time=now - 1_000 * i, life_cycle_state=lifecycles[i % 3]
            )
            for i in range(active)
        ]
        report.runs = len(fake.run_ids())

        def settings(**overrides: Any) -> DatabricksConfig:
            values: dict[str, Any] = {
                "workspaces": [WorkspaceConfig(name="prod", host=fake.url, token_env=token_env)],
                "retry_timeout_seconds": 1,
                "http_timeout_seconds": 0.5,
                "lookback_hours": 48,
            }
            values.update(overrides)
            return DatabricksConfig(**values)

        def mutate() -> None:
            finished = [r for r in fake.run_ids() if fake.run(r).get("end_time")]
            for run_id in running[: active // 2]:
                fake.finish_run(run_id, rng.choice(states))
            for run_id in rng.sample(finished, 5):
                fake.repair_run(run_id)
            for _ in range(5):
                running.append(fake.start_run(rng.choice(job_ids)))
            log("mutated the remote history: finished, repaired and started runs")

        faulty = SQLiteStore(tmp / "faulty.db")
        clean = SQLiteStore(tmp / "clean.db")
        await faulty.open()
        await clean.open()
        try:
            sync = DatabricksSync(settings(), faulty)
            fake.fail_randomly(one_in, seed=seed, faults=sync_faults(immediate_weight))
            mutated = False
            while True:
                if report.passes >= max_passes:
                    report.differences.append(f"no complete pass in {max_passes} passes")
                    break
                summary = await sync.sync_once()
                report.passes += 1
                if not summary.ok:
                    report.failed_passes += 1
                elif mutated:
                    break
                if not mutated and (report.passes >= 5 or summary.ok):
                    mutate()
                    mutated = True
            fake.clear_faults()
            report.requests = len(fake.requests)
            report.faults = Counter(r.fault for r in fake.requests if r.fault is not None)
            report.runs = len(fake.run_ids())
            patient = settings(retry_timeout_seconds=30, http_timeout_seconds=30)
            baseline = await DatabricksSync(patient, clean).sync_once()
            if not baseline.ok:
                report.differences.append(f"the fault-free sync failed: {baseline.lines()}")
        finally:
            await faulty.close()
            await clean.close()
    report.seconds = time.monotonic() - started
    got, want = _job_rows(tmp / "faulty.db"), _job_rows(tmp / "clean.db")
    report.rows_compared = len(want)
    if len(want) != report.runs:
        report.differences.append(f"the fault-free sync has {len(want)} of {report.runs} runs")
    for job_id in sorted(set(got) | set(want)):
        a, b = got.get(job_id), want.get(job_id)
        if a != b:
            fields = sorted(k for k in (a or b or {}) if (a or {}).get(k) != (b or {}).get(k))
            report.differences.append(
                f"{job_id}: {fields}: faulty={a and {k: a[k] for k in fields}} clean={b and {k: b[k] for k in fields}}"
            )
    return report

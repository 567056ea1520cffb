"""Crash recovery with real processes: SIGKILL, again and again, and count what it cost.

- `queue-service worker` processes are SIGKILLed while they hold running jobs, at least
  20 times (QS_SOAK=1: 200; `bench/soak.py` runs the heavy version and records figures),
  on an SQLite file and on a PostgreSQL schema.
  Every job must end `succeeded` with an exact attempt history, every lost attempt must
  be one a killed worker held, and every extra execution in the ledger must be explained
  by a kill. See tests/reliability/crash.py for the engine and its exact rules.
- `queue-service serve` is SIGKILLed while clients enqueue over HTTP: every enqueue it
  answered 202 survives, with SQLite's synchronous = NORMAL and FULL, and on PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability import run_crash_scenario, run_server_kills

pytestmark = pytest.mark.slow

SOAK = os.environ.get("QS_SOAK") == "1"


def test_sigkilled_workers_lose_no_job_and_rerun_only_what_a_kill_interrupted(
    tmp_path: Path, db_url: str
) -> None:
    kills = 200 if SOAK else 20
    report = run_crash_scenario(tmp_path, kills=kills, time_limit=1800 if SOAK else 240, db=db_url)
    print(report.summary())
    assert report.problems == []
    assert report.mid_job_kills == kills
    assert (report.lost_jobs, report.stuck_jobs, report.dead_jobs) == (0, 0, 0)
    # Every kill interrupted at least one attempt, and each interrupted attempt is recorded
    # as lost (exactly those: checked pairwise in the engine).
    assert report.lost_attempts == report.attempts_held_at_kills >= kills
    # Re-executions happen only for interrupted attempts, never more often.
    assert report.re_executions <= report.lost_attempts


@pytest.mark.parametrize(
    ("backend", "synchronous"),
    [("sqlite", "NORMAL"), ("sqlite", "FULL"), ("postgresql", "server's")],
)
def test_every_acknowledged_enqueue_survives_a_sigkilled_server(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, synchronous: str
) -> None:
    # PostgreSQL: durability is the server's (synchronous_commit), not a service setting.
    db = request.getfixturevalue("postgresql_url") if backend == "postgresql" else None
    mode = "NORMAL" if backend == "postgresql" else synchronous
    report = run_server_kills(tmp_path, kills=12 if SOAK else 3, synchronous=mode, db=db)
    print(report.summary())
    assert report.problems == []
    assert report.acknowledged > 0, "the clients got no 202 before the kills"
    assert report.missing == 0

"""Databricks faults at scale: a 10k-run history synced from a fake workspace that fails one
request in five, in every way it knows, while runs finish, start and get repaired half-way.
The store must end exactly as a fault-free sync of the final history leaves it: every column
of every mirrored job.

The SDK retries 429, 503, refused connections and timeouts itself, sleeping a second or more
each time; in CI the faults that fail at once are drawn 8 times as often so that the run stays
short while still covering every kind. QS_SOAK=1 (and `bench/soak.py`) draw them uniformly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability import run_databricks_faults

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SOAK = os.environ.get("QS_SOAK") == "1"


async def test_a_faulty_sync_of_10k_runs_ends_equal_to_a_fault_free_one(tmp_path: Path) -> None:
    report = await run_databricks_faults(
        tmp_path, runs=10_000, one_in=5, seed=20261123, immediate_weight=1 if SOAK else 8
    )
    print(report.summary())
    assert report.differences == []
    assert report.rows_compared == report.runs >= 10_000
    # The faults really happened, in many ways, at about the rate asked for, and cut
    # short pass after pass (each resumed where the last one stopped).
    assert len(report.faults) >= 5, report.faults
    assert 0.12 < sum(report.faults.values()) / report.requests < 0.28
    assert report.failed_passes > 10 and report.passes > report.failed_passes

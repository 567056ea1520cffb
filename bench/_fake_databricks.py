"""Run tests/fakes/databricks_server.py's FakeDatabricks in its own process, for bench_ingest.

    python bench/_fake_databricks.py --runs N [--jobs 12]

Adds `--jobs` Databricks jobs and N finished runs spread over the last hours (mostly
SUCCESS, some FAILED, CANCELED and TIMEDOUT), prints one JSON line {"url", "token",
"runs"} once it listens on 127.0.0.1, and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys

import _common  # noqa: F401 - puts the repository root on sys.path

from tests.fakes.databricks_server import FakeDatabricks, now_ms

MIX = (("SUCCESS", 0.88), ("FAILED", 0.07), ("CANCELED", 0.03), ("TIMEDOUT", 0.02))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--step-ms", type=int, default=1_000, help="start-time spacing per job")
    args = parser.parse_args()
    fake = FakeDatabricks()
    jobs = [fake.add_job(f"bench-job-{i:02d}") for i in range(args.jobs)]
    newest = now_ms() - 60_000
    added = 0
    for index, job in enumerate(jobs):
        share = args.runs // len(jobs) + (1 if index < args.runs % len(jobs) else 0)
        offset = index * 37  # interleave the jobs' start times
        for state, fraction in MIX:
            count = round(share * fraction) if state != "SUCCESS" else 0
            if count:
                fake.add_finished_runs(
                    count,
                    job_id=job,
                    newest_start=newest - offset - 13,
                    step_ms=args.step_ms * 7,
                    result_state=state,
                )
                share -= count
                added += count
        fake.add_finished_runs(
            share, job_id=job, newest_start=newest - offset, step_ms=args.step_ms
        )
        added += share
    fake.start()
    print(json.dumps({"url": fake.url, "token": fake.token, "runs": added}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reliability suite's heavy versions: the same engines as the tests, run longer.

    python bench/soak.py [--only crash,servers,contention,databricks] [--kills 200]
                         [--contention-jobs 25000] [--quick]

- crash: `queue-service worker` processes SIGKILLed mid-job `--kills` times (default 200);
- servers: `queue-service serve` SIGKILLed during HTTP enqueues, 12 times with
  synchronous=NORMAL and 12 with FULL; every 202 must survive;
- contention: 4 contender processes x `--contention-jobs` jobs (default 25,000: 100,000
  in all) plus a serving process with its worker, API readers and HTTP enqueues;
- databricks: a 10k-run history behind a fake workspace failing one request in five,
  every fault kind drawn uniformly, for two seeds; compared with a fault-free sync.

Every part is bounded in time and talks only to 127.0.0.1. The figures go to
bench/results/soak.json and are quoted in docs/RELIABILITY.md. Exit status 1 when any
part found a problem (its first problems are printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import RESULTS, write_results

from tests.reliability import (
    run_contention,
    run_crash_scenario,
    run_databricks_faults,
    run_server_kills,
)

PARTS = ("crash", "servers", "contention", "databricks")


def _log(line: str) -> None:
    print(f"  {line}", flush=True)


def _part(name: str, run: Callable[[Path], Any]) -> dict[str, Any]:
    print(f"\n== {name}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
        report = run(Path(tmp))
    reports = report if isinstance(report, list) else [report]
    problems = [p for r in reports for p in (getattr(r, "problems", None) or [])]
    problems += [d for r in reports for d in (getattr(r, "differences", None) or [])]
    for r in reports:
        print(f"  {r.summary()}", flush=True)
    for problem in problems[:10]:
        print(f"  PROBLEM: {problem}", flush=True)
    return {
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average": round(os.getloadavg()[0], 2),
        "seconds": round(time.monotonic() - started, 1),
        "summaries": [r.summary() for r in reports],
        "problems": len(problems),
        "first_problems": problems[:10],
        "figures": [
            {k: v for k, v in vars(r).items() if k not in {"problems", "differences"}}
            for r in reports
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--contention-jobs", type=int, default=25_000, help="per process")
    parser.add_argument("--quick", action="store_true", help="CI-sized, to try the script")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    kills = 20 if args.quick else args.kills
    per_process = 2_000 if args.quick else args.contention_jobs
    server_kills = 2 if args.quick else 12
    seeds = [1] if args.quick else [1, 2]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The sync logs every injected fault; the report counts them instead.
    logging.basicConfig(level=logging.ERROR)
    results: dict[str, Any] = {}

    if "crash" in parts:
        results["crash"] = _part(
            "crash",
            lambda tmp: run_crash_scenario(tmp, kills=kills, time_limit=3600, log=_log),
        )
    if "servers" in parts:

        def servers(tmp: Path) -> list[Any]:
            reports = []
            for mode in ("NORMAL", "FULL"):
                (tmp / mode).mkdir()
                reports.append(
                    run_server_kills(tmp / mode, kills=server_kills, synchronous=mode, log=_log)
                )
            return reports

        results["servers"] = _part("servers", servers)
    if "contention" in parts:
        results["contention"] = _part(
            "contention",
            lambda tmp: run_contention(
                tmp, processes=4, jobs_per_process=per_process, time_limit=3600
            ),
        )
    if "databricks" in parts:

        def databricks(tmp: Path) -> list[Any]:
            reports = []
            for seed in seeds:
                (tmp / str(seed)).mkdir()
                reports.append(
                    asyncio.run(
                        run_databricks_faults(
                            tmp / str(seed), runs=10_000, one_in=5, seed=seed, immediate_weight=1
                        )
                    )
                )
            return reports

        results["databricks"] = _part("databricks", databricks)

    failed = sum(part["problems"] for part in results.values() if isinstance(part, dict))
    name = "soak" if not args.quick else "soak_quick"
    # A run of some parts keeps the latest figures of the others.
    previous = RESULTS / f"{name}.json"
    if previous.exists() and set(parts) != set(PARTS):
        kept = json.loads(previous.read_text())
        results = {**{k: v for k, v in kept.items() if k in PARTS}, **results}
    results["problems"] = sum(
        part["problems"] for part in results.values() if isinstance(part, dict)
    )
    write_results(name, results)
    print("\nsoak: " + ("PASSED" if not failed else f"FAILED with {failed} problem(s)"))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

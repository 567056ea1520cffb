"""Shared helpers for the benchmark scripts: paths, percentiles, tables, results, processes.

The scripts in bench/ are run as `python bench/NAME.py`, so this module is imported as
`_common` and puts the repository root on sys.path for `queue_service` and `tests.fakes`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / ".data"
RESULTS = BENCH / "results"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable
QUEUE_SERVICE = str(Path(PYTHON).with_name("queue-service"))


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0-100) of unsorted samples; NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds, plus the sample count."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A compact fixed-width table on stdout; numbers right-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    if title:
        print(f"\n{title}")
    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in text:
        print(line(row))
    sys.stdout.flush()


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(where: str, limit_s: float = 180.0, busy_below: float = 0.2) -> dict[str, Any]:
    """Wait (up to `limit_s`) until other processes leave the CPUs mostly idle, then report
    the load. Every figure on a shared 2-core machine depends on it."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    while busy >= busy_below and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    load = os.getloadavg()[0]
    state = (
        "quiet" if busy < busy_below else "BUSY: other processes compete; figures are pessimistic"
    )
    print(f"[{where}] CPUs {busy:.0%} busy before start, load average {load:.2f} ({state})")
    return {
        "cpu_busy_at_start": round(busy, 3),
        "loadavg_1m_at_start": round(load, 2),
        "source_at_start": source_version(),
    }


def source_version() -> dict[str, Any]:
    """The commit measured, and how many files differ from it (others edit concurrently)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "queue_service", "migrations")
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "uncommitted_product_files": len(changed.splitlines())}  # fmt: skip


def machine() -> dict[str, Any]:
    return {
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def write_results(name: str, data: dict[str, Any], *, quick: bool = False) -> Path:
    """Write bench/results/NAME.json atomically (through NAME.json.tmp). A --quick run
    writes NAME_quick.json instead, so a smoke test never replaces the full-size figures."""
    name = f"{name}_quick" if quick else name
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    header = {"machine": machine(), "source_at_end": source_version()}
    tmp.write_text(json.dumps({**header, **data}, indent=2) + "\n")
    tmp.replace(path)
    print(f"\nresults: {path.relative_to(REPO)}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            key, _, value = row.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def data_dir() -> Path:
    """bench/.data, created with a .gitignore of its own so its large files never get committed."""
    DATA.mkdir(parents=True, exist_ok=True)
    ignore = DATA / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Benchmark databases and scratch files: never commit.\n*\n")
    return DATA


def copy_db(source: Path, target: Path) -> None:
    """Copy a checkpointed SQLite database file (build_db leaves no WAL content behind)."""
    wal = Path(f"{source}-wal")
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{source} has un-checkpointed WAL content; rebuild it")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


# -- HTTP: a server subprocess and bench/_loadgen.py against it --------------------


def server_env() -> dict[str, str]:
    """This process's environment without QUEUE_SERVICE_CONFIG: a server started by a
    benchmark reads only the config the benchmark gives it."""
    return {k: v for k, v in os.environ.items() if k != "QUEUE_SERVICE_CONFIG"}


@contextlib.contextmanager
def server(command: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[int]:
    """Start a server subprocess on 127.0.0.1:port; yield its pid; stop it (SIGINT, which
    lets `queue-service serve` drain and close its store) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port(port)
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def scenario(
    name: str,
    pid: int,
    port: int,
    paths: list[str],
    token: str,
    args: argparse.Namespace,
    tmp: Path,
    body: bytes | None = None,
) -> dict[str, Any]:
    """One run of bench/_loadgen.py against the server `pid` on 127.0.0.1:port, with
    args.connections, args.warmup, args.seconds and args.max_requests: GETs of `paths`, or
    POSTs of `body` to them. Adds the server's CPU use and RSS afterwards."""
    paths_file = tmp / "paths.json"
    paths_file.write_text(json.dumps(paths))
    command = [
        PYTHON, str(BENCH / "_loadgen.py"), "--port", str(port), "--paths", str(paths_file),
        "--connections", str(args.connections), "--warmup", str(args.warmup),
        "--duration", str(args.seconds), "--max-requests", str(args.max_requests),
    ]  # fmt: skip
    if body is not None:
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        command += ["--body", str(body_file)]
    env = {**os.environ, "BENCH_TOKEN": token}
    cpu0 = proc_cpu_seconds(pid)
    done = subprocess.run(command, capture_output=True, env=env, timeout=args.seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu"] = round(
        (proc_cpu_seconds(pid) - cpu0) / (result["seconds"] + args.warmup), 2
    )
    result["server_memory_kb_after"] = proc_memory_kb(pid)
    result["name"] = name
    ok = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
    print(
        f"  {name}: {result['rps']:,.0f} req/s ({ok:,} x 2xx of {result['requests']:,}), "
        f"client p99 {result['latency_ms']['p99']:.1f} ms, server CPU {result['server_cpu']:.2f}, "
        f"client CPU {result['client_cpu']:.2f}",
        flush=True,
    )
    return result

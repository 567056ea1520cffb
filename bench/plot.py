"""Plots of the results JSON files, written beside them in bench/results/ (matplotlib, Agg):

- list_p99.png, from bench_list.json: in-server GET /jobs p99 per filter combination, as two
  heat maps (wall time and CPU time; rows are filter sets, columns time bounds and cursor),
  coloured around the 10 ms target;
- queue_core.png, from compare.json: queue-core jobs/s of queue-service against the raw
  sqlite3 ceiling, huey and persist-queue, with the target lines.

A missing results file skips its plot. --quick reads the *_quick.json files and writes
*_quick.png.

    python bench/plot.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from _common import REPO, RESULTS
from matplotlib.colors import TwoSlopeNorm

TARGET_P99_MS = 10.0
CORE_TARGET_JOBS_PER_S = 10_000


def read(name: str, quick: bool) -> dict[str, Any] | None:
    path = RESULTS / f"{name}{'_quick' if quick else ''}.json"
    if not path.exists():
        print(f"plot: no {path.relative_to(REPO)}; skipped")
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def save(fig: Any, name: str, quick: bool) -> Path:
    path = RESULTS / f"{name}{'_quick' if quick else ''}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path.relative_to(REPO)}")
    return path


def stamp(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    commit = data.get("source_at_start", {}).get("commit")
    busy = data.get("cpu_busy_at_start")
    load = f", CPUs {busy:.0%} busy at start" if busy is not None else ""
    return f"{machine.get('date', '?')}, commit {commit}{load}"


def list_p99(data: dict[str, Any], quick: bool) -> Path:
    combos = data["in_process"]["combinations"]
    bases: list[str] = []
    variants: list[str] = []
    for combo in combos:
        base, variant = combo["name"].split(" | ")
        bases += [base] if base not in bases else []
        variants += [variant] if variant not in variants else []
    fig, axes = plt.subplots(1, 2, figsize=(15, 12), sharey=True, layout="constrained")
    norm = TwoSlopeNorm(vmin=0.0, vcenter=TARGET_P99_MS, vmax=max(4 * TARGET_P99_MS, 1.0))
    image = None
    for ax, metric, title in ((axes[0], "asgi", "wall time"), (axes[1], "cpu", "CPU time")):
        grid = [[float("nan")] * len(variants) for _ in bases]
        for combo in combos:
            base, variant = combo["name"].split(" | ")
            if combo[metric]["n"]:
                grid[bases.index(base)][variants.index(variant)] = combo[metric]["p99_ms"]
        image = ax.imshow(grid, cmap="RdYlGn_r", norm=norm, aspect="auto")
        for row, values in enumerate(grid):
            for col, value in enumerate(values):
                if value == value:  # not NaN (no second page to ask for)
                    ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(bases)), bases, fontsize=7)
        ax.set_title(f"p99 {title}, ms")
    label = f"p99 ms (colours clipped at 40; black line: the {TARGET_P99_MS:g} ms target)"
    bar = fig.colorbar(image, ax=axes, shrink=0.6, label=label)
    bar.ax.axhline(TARGET_P99_MS, color="black", linewidth=2)
    fig.suptitle(
        f"in-server GET /jobs p99 by filter combination, {data['jobs']:,} jobs "
        f"(blank: fewer than 51 matches, no second page)\n{stamp(data)}"
    )
    return save(fig, "list_p99", quick)


def queue_core(data: dict[str, Any], quick: bool) -> Path:
    core = data["core"]
    bars = [
        ("raw sqlite3 claim+complete (ceiling)", core["ceiling"]["jobs_per_s"], "grey"),
        (f"queue-service store (batch {core['best_batch']})", core["store"]["jobs_per_s"], "C0"),
        ("huey SqliteHuey", core["huey"]["jobs_per_s"], "C1"),
        ("persist-queue SQLiteAckQueue", core["persist_queue"]["jobs_per_s"], "C2"),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(names, values, color=[b[2] for b in bars][::-1])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=9)
    lines = (
        (CORE_TARGET_JOBS_PER_S, "target 10,000 jobs/s", "red"),
        (0.5 * core["ceiling"]["jobs_per_s"], "0.5 x ceiling", "purple"),
        (5 * core["huey"]["jobs_per_s"], "5 x huey", "C1"),
    )
    for x, label, color in lines:
        ax.axvline(x, color=color, linestyle="--", linewidth=1, label=label)
    ax.set_xlim(0, max(values + [x for x, _, _ in lines]) * 1.2)
    ax.set_xlabel("no-op jobs per second, enqueue -> claim -> complete")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"queue core, {core['jobs']:,} jobs per run, best of {core['best_of']}")
    fig.suptitle(stamp(data), fontsize=8)
    fig.tight_layout()
    return save(fig, "queue_core", quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="plot the *_quick.json files")
    args = parser.parse_args(argv)
    listing = read("bench_list", args.quick)
    if listing is not None:
        list_p99(listing, args.quick)
    compare = read("compare", args.quick)
    if compare is not None and "core" in compare:
        queue_core(compare, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the dashboard's views for the docs, from a real `serve` in headless Chromium.

    python bench/ui_screenshots.py [--out docs/img]

Starts a fake Databricks workspace (tests/fakes/databricks_server.py) and `queue-service serve`
with a few plugins (copies of the test plugins under friendlier names), a schedule per plugin
and two Databricks workspaces (one healthy, one with a refused token). Jobs are made through the
REST API; then the jobs view, a failed job's view and the plugins view are saved as
ui-jobs.png, ui-job.png and ui-plugins.png. Needs Debian's `chromium`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the repository root on sys.path
import httpx

from queue_service.auth import TokenService
from queue_service.store import SQLiteStore
from queue_service.timeutil import format_ts, utcnow
from tests.browser import CHROMIUM, Page, chromium
from tests.conftest import free_port
from tests.fakes.databricks_server import FakeDatabricks, now_ms
from tests.processes import ENV, PLUGINS, REPO, Processes, wait_healthy, wait_until, with_store

#: Demo plugin name -> the test plugin it copies: answers ok, fails for good, fails after
#: retries (with stderr), runs for a while.
DEMO_PLUGINS = {"withings": "ok", "backup": "noretry", "mailer": "error", "crawler": "sleepy"}
TOKEN_ENV = "QS_DEMO_DATABRICKS_TOKEN"

CONFIG = """workers = 4
shutdown_grace_seconds = 1

[plugins.mailer]
max_attempts = 3
backoff_seconds = 0

[[plugins.withings.schedules]]
id = "sync-scale"
command = "poll"
every = "15m"

[[plugins.backup.schedules]]
id = "nightly"
command = "handle"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
catch_up = "run_once"

[[plugins.echo.schedules]]
id = "heartbeat"
command = "poll"
every = "5m"
if_running = "queue"

[databricks]
enabled = true
poll_interval_seconds = 5

[[databricks.workspaces]]
name = "prod"
host = "{host}"
token_env = "{token_env}"

[[databricks.workspaces]]
name = "staging"
host = "{host}"
token_env = "QS_DEMO_STAGING_TOKEN"
"""


def demo_plugins(folder: Path) -> Path:
    """Copies of the test plugins, renamed, beside the sample `echo` plugin."""
    root = folder / "plugins"
    for name, original in DEMO_PLUGINS.items():
        target = root / name
        shutil.copytree(PLUGINS / original, target)
        manifest = target / "manifest.yaml"
        manifest.write_text(manifest.read_text().replace(f"name: {original}\n", f"name: {name}\n"))
    shutil.copytree(REPO / "plugins" / "echo", root / "echo")
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o022)
    return root


def fake_workspace() -> FakeDatabricks:
    fake = FakeDatabricks()
    etl = fake.add_job("nightly-etl")
    features = fake.add_job("feature-refresh")
    newest = now_ms() - 90_000
    fake.add_finished_runs(3, job_id=etl, newest_start=newest, step_ms=3_600_000)
    fake.add_finished_runs(1, job_id=features, newest_start=newest - 600_000, result_state="FAILED")
    fake.add_finished_runs(2, job_id=features, newest_start=newest - 7_200_000, step_ms=3_600_000)
    fake.start_run(features, start_time=now_ms() - 30_000)
    return fake.start()


class Demo:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    def enqueue(self, plugin: str, command: str, payload: dict[str, Any], **more: Any) -> str:
        answer = httpx.post(
            f"{self.base}/plugin/{plugin}/{command}",
            json={"payload": payload, **more},
            headers=self.headers,
        )
        answer.raise_for_status()
        job_id: str = answer.json()["job_id"]
        return job_id

    def total(self, query: str) -> int:
        answer = httpx.get(f"{self.base}/jobs?{query}&limit=1", headers=self.headers)
        answer.raise_for_status()
        total: int = answer.json()["total"]
        return total


def make_jobs(demo: Demo) -> str:
    """A morning's worth of jobs; the id of one that failed after retries."""
    for day in range(1, 7):
        demo.enqueue("withings", "poll", {"user": "ada", "since": f"2026-11-{day:02d}"})
    demo.enqueue("backup", "handle", {"message": "s3://backups: AccessDenied on PutObject"})
    failed = demo.enqueue("mailer", "poll", {"message": "smtp.example.org:587 timed out"})
    demo.enqueue("echo", "poll", {"message": "hello"})
    demo.enqueue("withings", "handle", {"event": "weight", "kg": 71.4})
    demo.enqueue("crawler", "poll", {"seconds": 900})
    demo.enqueue("echo", "handle", {"report": "daily"})
    demo.enqueue("crawler", "poll", {"seconds": 900})
    later = format_ts(utcnow() + timedelta(days=1))
    demo.enqueue("backup", "poll", {"bucket": "photos"}, run_after=later)
    dropped = demo.enqueue("echo", "poll", {"message": "never mind"}, run_after=later)
    httpx.post(f"{demo.base}/job/{dropped}/cancel", headers=demo.headers).raise_for_status()
    demo.enqueue("withings", "poll", {"user": "grace"}, run_after=later)
    wait_until(
        lambda: demo.total("status=failed") == 2 and demo.total("status=running") == 2,
        "the demo jobs to settle",
        60,
    )
    return failed


def shoot(page: Page, path: Path, height: int | None = None) -> None:
    page.screenshot(path, height=height)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    if CHROMIUM is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        processes = Processes(folder)
        fake = fake_workspace()
        try:
            db = folder / "demo.db"

            async def admin(store: SQLiteStore) -> str:
                return (await TokenService(store).create("demo", ["*"]))[0]

            token = with_store(db, admin)
            config = folder / "queue-service.toml"
            config.write_text(
                f'[service]\nplugin_dirs = ["{demo_plugins(folder)}"]\n'
                + CONFIG.replace("{host}", fake.url).replace("{token_env}", TOKEN_ENV)
            )
            os.environ[TOKEN_ENV] = ENV[TOKEN_ENV] = fake.token
            ENV["QS_DEMO_STAGING_TOKEN"] = "dapi-revoked-0000"
            port = free_port()
            server = processes.start(
                "server", "serve", "--db", str(db), "--port", str(port), "--config", str(config)
            )
            wait_healthy(server, port, processes)
            demo = Demo(f"http://127.0.0.1:{port}", token)
            failed = make_jobs(demo)
            wait_until(lambda: demo.total("source=databricks") >= 7, "the Databricks runs", 60)
            time.sleep(1)  # let the sync record both workspaces' state
            with chromium(processes, folder / "profile") as browser, browser.new_page() as page:
                page.open(f"{demo.base}/ui#token={token}")
                page.wait_for("document.querySelectorAll('#jobs-rows tr').length >= 20", "rows")
                shoot(page, args.out / "ui-jobs.png", height=860)
                page.open(f"{demo.base}/ui#job={failed}")
                page.wait_for("document.querySelectorAll('#job-attempts tr.stderr').length", "job")
                shoot(page, args.out / "ui-job.png")
                page.open(f"{demo.base}/ui#view=plugins")
                page.wait_for("document.querySelectorAll('#sync-rows tr').length === 2", "sync")
                page.wait_for("document.querySelector('#status-counts a')", "counts")
                shoot(page, args.out / "ui-plugins.png")
        finally:
            processes.stop_all()
            fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

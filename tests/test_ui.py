"""The dashboard at /ui, in Debian's headless Chromium, against a real `queue-service serve` whose
jobs were made through the REST API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from queue_service.api.ui import CONTENT_SECURITY_POLICY
from queue_service.auth import TokenService
from queue_service.store import Store
from queue_service.timeutil import format_ts, utcnow
from tests.browser import CHROMIUM, Browser, Page, chromium
from tests.conftest import free_port
from tests.processes import ENV, REPO, Processes, wait_healthy, wait_until, with_store, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
    ),
]

#: `noretry` fails once for good, `error` fails twice (no wait between), `sleepy` keeps running
#: until the server stops (which then waits at most a second for it).
CONFIG = """shutdown_grace_seconds = 1

[plugins.error]
backoff_seconds = 0

[[plugins.ok.schedules]]
id = "new-year"
command = "poll"
cron = "0 0 1 1 *"
"""
#: Token name -> scopes, made before the server starts.
TOKENS = {
    "admin": ["*"],
    "status-only": ["jobs:status:ro"],
    "plugins-only": ["plugin:ro"],
    "doomed": ["jobs:ro"],
}


@dataclass
class Dashboard:
    base: str
    db: Path
    browser: Browser
    tokens: dict[str, str]
    #: Job ids in the order they were made, and by what they became.
    created: list[str] = field(default_factory=list)
    by_kind: dict[str, list[str]] = field(default_factory=dict)

    def api(self, path: str) -> dict[str, object]:
        answer = httpx.get(
            self.base + path, headers={"Authorization": f"Bearer {self.tokens['admin']}"}
        )
        answer.raise_for_status()
        body: dict[str, object] = answer.json()
        return body

    def enqueue(self, kind: str, plugin: str, body: dict[str, object]) -> None:
        answer = httpx.post(
            f"{self.base}/plugin/{plugin}/poll",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens['admin']}"},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        self.created.append(job_id)
        self.by_kind.setdefault(kind, []).append(job_id)

    def newest_first(self, kind: str | None = None) -> list[str]:
        chosen = self.created if kind is None else self.by_kind[kind]
        return list(reversed(chosen))


def _make_tokens(db: Path) -> dict[str, str]:
    async def make(store: Store) -> dict[str, str]:
        service = TokenService(store)
        return {name: (await service.create(name, scopes))[0] for name, scopes in TOKENS.items()}

    return with_store(db, make)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    folder = tmp_path_factory.mktemp("ui")
    processes = Processes(folder)
    try:
        db = folder / "q.db"
        tokens = _make_tokens(db)
        port = free_port()
        config = write_config(folder, CONFIG)
        server = processes.start(
            "server", "serve", "--db", str(db), "--port", str(port), "--config", str(config)
        )
        wait_healthy(server, port, processes)
        with chromium(processes, folder / "profile") as browser:
            board = Dashboard(f"http://127.0.0.1:{port}", db, browser, tokens)
            board.enqueue("ok", "ok", {"payload": {"order": 1}})
            board.enqueue("failed", "noretry", {"payload": {"message": "disk full"}})
            board.enqueue("ok", "ok", {"payload": {"order": 2}})
            board.enqueue(
                "failed", "error", {"payload": {"message": "bad gateway"}, "max_attempts": 2}
            )
            board.enqueue("running", "sleepy", {"payload": {"seconds": 600}})
            board.enqueue("ok", "ok", {"payload": {"order": 3, "note": "<b>not bold</b>"}})
            later = format_ts(utcnow().replace(year=utcnow().year + 1))
            board.enqueue("queued", "ok", {"payload": {}, "run_after": later})
            board.enqueue("failed", "noretry", {"payload": {"message": "quota exceeded"}})

            def settled() -> bool:
                totals = {
                    status: board.api(f"/jobs?status={status}&limit=1")["total"]
                    for status in ("succeeded", "failed", "running", "queued")
                }
                return totals == {"succeeded": 3, "failed": 3, "running": 1, "queued": 1}

            wait_until(settled, "the jobs to settle", 60, processes)
            yield board
    finally:
        processes.stop_all()


@pytest.fixture
def page(dashboard: Dashboard) -> Iterator[Page]:
    with dashboard.browser.new_page() as tab:
        yield tab


ROW_IDS = "[...document.querySelectorAll('#jobs-rows tr')].map(tr => tr.dataset.jobId)"


def open_ui(page: Page, board: Dashboard, fragment: str = "", token: str = "admin") -> None:
    secret = board.tokens[token]
    page.open(f"{board.base}/ui#token={secret}" + (f"&{fragment}" if fragment else ""))


def rows(page: Page, count: int) -> list[str]:
    """The job ids of the rows, once there are `count` of them."""
    page.wait_for(f"{ROW_IDS}.length === {count}", f"{count} job rows")
    ids: list[str] = page.evaluate(ROW_IDS)
    return ids


def text(page: Page, selector: str) -> str:
    value: str = page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")
    return value


def test_every_job_is_a_row_newest_first_with_its_status(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard)
    assert rows(page, 8) == dashboard.newest_first()
    assert text(page, "#jobs-total") == "8 jobs"
    shown = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#jobs-rows tr')]"
        ".map(tr => [tr.dataset.jobId, tr.querySelector('.badge').textContent]))"
    )
    listed = dashboard.api("/jobs")["jobs"]
    assert isinstance(listed, list)
    assert shown == {job["job_id"]: job["status"] for job in listed}
    # The token left the address bar for the tab's sessionStorage.
    assert page.evaluate("location.href") == f"{dashboard.base}/ui"
    assert (
        page.evaluate("sessionStorage.getItem('queue-service.token')") == dashboard.tokens["admin"]
    )


def test_a_status_filter_in_the_fragment_shows_only_those_jobs(
    dashboard: Dashboard, page: Page
) -> None:
    open_ui(page, dashboard, "status=failed")
    assert rows(page, 3) == dashboard.newest_first("failed")
    assert page.evaluate("location.hash") == "#status=failed"
    assert page.evaluate("document.querySelector('#filters [name=status]').value") == "failed"
    assert text(page, "#jobs-total") == "3 jobs"
    # An alias, and several statuses at once, as GET /jobs takes them.
    page.evaluate("location.hash = 'status=ok,pending'")
    expected = [
        j
        for j in dashboard.newest_first()
        if j in dashboard.by_kind["ok"] + dashboard.by_kind["queued"]
    ]
    assert rows(page, 4) == expected


def test_the_filter_form_filters_and_names_a_bad_value(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard)
    rows(page, 8)
    page.evaluate(
        "document.querySelector('#filters [name=plugin]').value = 'noretry';"
        "document.querySelector('#filters button[type=submit]').click()"
    )
    failed_once = dashboard.newest_first("failed")
    assert rows(page, 2) == [failed_once[0], failed_once[2]]
    assert page.evaluate("location.hash") == "#plugin=noretry"
    # The server's own error, naming the parameter, for a status it does not know.
    page.evaluate("location.hash = 'status=broken'")
    page.wait_for("!document.getElementById('notice').hidden", "the error notice")
    assert "invalid_parameter" in text(page, "#notice")
    assert page.evaluate("document.querySelector('#filters [name=status]').className") == "invalid"
    assert rows(page, 0) == []


def test_cursor_paging_walks_every_job_once(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard, "limit=3")
    expected = dashboard.newest_first()
    assert rows(page, 3) == expected[:3]
    assert page.evaluate("document.getElementById('page-newer').disabled") is True
    page.evaluate("document.getElementById('page-older').click()")
    page.wait_for(f"{ROW_IDS}[0] === {json.dumps(expected[3])}", "the second page")
    assert rows(page, 3) == expected[3:6]
    page.evaluate("document.getElementById('page-older').click()")
    page.wait_for(f"{ROW_IDS}[0] === {json.dumps(expected[6])}", "the last page")
    assert rows(page, 2) == expected[6:]
    assert text(page, "#page-label") == "7\u20138"  # an en dash
    assert page.evaluate("document.getElementById('page-older').disabled") is True
    page.evaluate("document.getElementById('page-newer').click()")
    page.wait_for(f"{ROW_IDS}[0] === {json.dumps(expected[3])}", "the second page again")
    assert text(page, "#jobs-total") == "8 jobs"


def test_the_job_view_shows_payload_result_and_every_attempt(
    dashboard: Dashboard, page: Page
) -> None:
    failing = dashboard.by_kind["failed"][1]  # the `error` plugin's job: two attempts
    open_ui(page, dashboard)
    rows(page, 8)
    page.evaluate(f"document.querySelector('tr[data-job-id=\"{failing}\"] a').click()")
    page.wait_for(
        "document.querySelectorAll('#job-attempts tr[data-attempt]').length === 2", "2 attempts"
    )
    assert text(page, "#job-id") == failing
    assert text(page, "#job-status") == "failed"
    assert json.loads(text(page, "#job-payload")) == {"message": "bad gateway"}
    assert "bad gateway" in text(page, "#job-last-error")
    stderr = page.evaluate(
        "[...document.querySelectorAll('#job-attempts tr.stderr pre')].map(p => p.textContent)"
    )
    assert stderr == ["about to fail\n", "about to fail\n"]
    assert "ERROR bad gateway" in text(page, "#job-logs")
    # A payload with markup is shown as text, never parsed.
    succeeded = dashboard.by_kind["ok"][2]
    page.evaluate(f"location.hash = 'job={succeeded}'")
    page.wait_for("document.getElementById('job-status').textContent === 'succeeded'", "the ok job")
    assert json.loads(text(page, "#job-payload")) == {"order": 3, "note": "<b>not bold</b>"}
    assert page.evaluate("document.querySelectorAll('#job-payload b, #job-result b').length") == 0
    assert "<b>not bold</b>" in text(page, "#job-result")


def test_a_status_only_token_gets_the_status_view(dashboard: Dashboard, page: Page) -> None:
    failing = dashboard.by_kind["failed"][1]
    open_ui(page, dashboard, f"job={failing}", token="status-only")
    page.wait_for("document.getElementById('job-status').textContent === 'failed'", "the job")
    page.wait_for("!document.getElementById('job-scope-note').hidden", "the scope note")
    assert "jobs:ro" in text(page, "#job-scope-note")
    assert page.evaluate("document.getElementById('job-detail').hidden") is True
    assert "bad gateway" not in page.evaluate("document.body.innerText")


def test_an_unknown_job_says_not_found(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard, "job=no-such-job")
    page.wait_for("!document.getElementById('notice').hidden", "the error notice")
    assert text(page, "#notice") == "404 not_found: no job with id 'no-such-job'"
    assert text(page, "#job-status") == "not found"
    assert page.evaluate("document.getElementById('job-detail').hidden") is True


def test_a_token_without_job_scopes_sees_why(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard, token="plugins-only")
    page.wait_for("!document.getElementById('notice').hidden", "the error notice")
    assert "jobs:status:ro" in text(page, "#notice")
    assert rows(page, 0) == []


def test_a_revoked_token_shows_no_rows_and_an_auth_error(dashboard: Dashboard, page: Page) -> None:
    open_ui(page, dashboard, token="doomed")
    assert len(rows(page, 8)) == 8
    subprocess.run(
        [
            sys.executable,
            "-m",
            "queue_service",
            "token",
            "revoke",
            "doomed",
            "--db",
            str(dashboard.db),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=ENV,
        timeout=60,
    )
    # No reload: the next auto-refresh finds the token refused.
    page.wait_for("document.getElementById('notice').className === 'auth'", "the auth error")
    assert rows(page, 0) == []
    assert "invalid_token" in text(page, "#notice")
    assert text(page, "#jobs-total") == "—"


def test_the_plugins_view_shows_plugins_schedules_queue_and_sync(
    dashboard: Dashboard, page: Page
) -> None:
    open_ui(page, dashboard, "view=plugins")
    page.wait_for("document.querySelector('#plugins-rows tr[data-plugin=\"ok\"]')", "the plugins")
    plugins = page.evaluate(
        "[...document.querySelectorAll('#plugins-rows tr')].map(tr => tr.dataset.plugin)"
    )
    listed = dashboard.api("/plugins")["plugins"]
    assert isinstance(listed, list)
    assert plugins == [p["name"] for p in listed]
    assert page.evaluate(
        "document.querySelector('tr[data-plugin=\"ok\"] .commands').textContent"
    ) == ("pollreadhandlewritehealthread")
    page.wait_for("document.getElementById('queue-depth')", "the queue depth")
    assert text(page, "#queue-depth") == str(dashboard.api("/healthz")["queue_depth"]) == "2"
    counts = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#status-counts .chip')]"
        ".map(c => [c.dataset.status, c.querySelector('a').textContent]))"
    )
    assert counts == {
        "queued": "1",
        "running": "1",
        "succeeded": "3",
        "failed": "3",
        "timed_out": "0",
        "canceled": "0",
        "dead": "0",
    }
    schedules = dashboard.api("/schedules")["schedules"]
    assert isinstance(schedules, list) and len(schedules) == 1
    schedule = schedules[0]
    row = page.evaluate(
        "[...document.querySelectorAll('#schedules-rows tr[data-schedule=\"ok:new-year\"] td')]"
        ".map(td => td.title || td.textContent)"
    )
    assert row[:3] == ["ok:new-year", "poll", "0 0 1 1 * (UTC)"]
    assert row[5] == schedule["next_run_at"]
    assert text(page, "#sync-error") == "The Databricks sync is not configured."


def test_the_page_runs_under_its_policy_and_requests_no_url_with_the_token(
    dashboard: Dashboard, page: Page
) -> None:
    response = httpx.get(f"{dashboard.base}/ui")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    # Every view, then what the browser reported.
    open_ui(page, dashboard, "status=failed")
    rows(page, 3)
    page.evaluate(f"location.hash = 'job={dashboard.by_kind['failed'][1]}'")
    page.wait_for(
        "document.querySelectorAll('#job-attempts tr[data-attempt]').length === 2", "attempts"
    )
    page.evaluate("location.hash = 'view=plugins'")
    page.wait_for("document.querySelector('#plugins-rows tr')", "the plugins")
    assert page.problems() == []
    urls = page.requested_urls()
    assert f"{dashboard.base}/ui" in urls and any("/jobs?" in url for url in urls)
    token = dashboard.tokens["admin"]
    assert [url for url in urls if token in url or token[3:] in url] == []
    # Nothing from anywhere else (the page works air-gapped).
    assert [url for url in urls if not url.startswith(dashboard.base + "/")] == []
    # The policy is enforced, and a violation would be seen: an inline script is refused.
    page.evaluate(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.head.append(s)"
    )
    assert page.evaluate("window.ran") is None
    assert any("Content Security Policy" in problem for problem in page.problems())

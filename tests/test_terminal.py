"""The terminal views: `queue-service jobs --watch` in a real pseudo-terminal, and
`queue-service status` (text and JSON) over data the test makes through the store."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from queue_service.cli import main
from queue_service.statuses import STATUSES, Status
from queue_service.store import NewJob, Store, SyncState
from queue_service.timeutil import format_ts, utcnow
from tests.processes import Processes, enqueue_many, with_store
from tests.test_cli import run

# -- jobs --watch ----------------------------------------------------------


@pytest.mark.slow
def test_watch_draws_refreshes_and_exits_on_sigint(processes: Processes, tmp_path: Path) -> None:
    db = tmp_path / "watch.db"
    echo = enqueue_many(db, [NewJob("echo", "poll", {"i": i}) for i in range(2)])
    (other,) = enqueue_many(db, [NewJob("other", "handle")])
    proc, terminal = processes.start_in_terminal(
        "jobs", "--watch", "--plugin", "echo", "--interval", "0.2", "--db", str(db)
    )

    terminal.wait_for("the first frame", lambda screen: all(i in screen for i in echo))
    assert f"queued {len(echo)}" in terminal.text  # counts of the filter, every status
    assert f"{len(echo)} of {len(echo)} matching jobs" in terminal.text

    # A job enqueued while it watches appears in a later frame, and the counts follow.
    echo += enqueue_many(db, [NewJob("echo", "poll", {"i": "late"})])
    terminal.wait_for(
        "a frame with the job enqueued after the start",
        lambda screen: echo[-1] in screen and f"queued {len(echo)}" in screen,
    )
    assert other not in terminal.text  # the filter holds on every frame

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    terminal.drain()
    assert "Traceback" not in terminal.text and "KeyboardInterrupt" not in terminal.text
    # The cursor, hidden while the table is live, is shown again: the terminal is restored.
    assert terminal.raw.rfind(b"\x1b[?25h") > terminal.raw.rfind(b"\x1b[?25l") >= 0


@pytest.mark.slow
def test_watch_fits_the_newest_jobs_to_a_short_terminal(
    processes: Processes, tmp_path: Path
) -> None:
    db = tmp_path / "short.db"
    ids = enqueue_many(db, [NewJob("echo", "poll", {"i": i}) for i in range(30)])
    proc, terminal = processes.start_in_terminal(
        "jobs", "--watch", "--interval", "0.2", "--db", str(db), lines=16
    )
    terminal.wait_for("a frame", lambda screen: "matching jobs" in screen)
    shown = [i for i in ids if i in terminal.text]
    # Newest first, as many as fit, and the footer says how many of how many.
    assert 0 < len(shown) < len(ids) and ids[-1] in shown
    assert f"{len(shown)} of {len(ids)} matching jobs" in terminal.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


@pytest.mark.slow
def test_watch_needs_a_terminal_that_can_redraw(processes: Processes, tmp_path: Path) -> None:
    db = tmp_path / "dumb.db"
    enqueue_many(db, [NewJob("echo", "poll")])
    proc, terminal = processes.start_in_terminal("jobs", "--watch", "--db", str(db), term="dumb")
    assert proc.wait(timeout=15) == 1
    terminal.drain()
    assert "TERM must not be dumb" in terminal.text and "Traceback" not in terminal.text


def test_watch_needs_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "n.db")
    assert run(capsys, "migrate", "--db", db)[0] == 0
    code, out, err = run(capsys, "jobs", "--watch", "--db", db)  # stdout is captured: no tty
    assert code == 1 and out == "" and "jobs --json" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--cursor", "00000000000000000001-1"], 1, "takes no --cursor or --json"),
        (["--json"], 1, "takes no --cursor or --json"),
        (["--interval", "0"], 2, "not a number of seconds"),
        (["--interval", "nan"], 2, "not a number of seconds"),
        (["--status", "fail"], 1, "unknown status 'fail'"),
    ],
)
def test_watch_refuses_what_it_cannot_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    db = str(tmp_path / "r.db")
    assert run(capsys, "migrate", "--db", db)[0] == 0
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            main(["jobs", "--watch", *args, "--db", db])
        assert exit_.value.code == code and message in capsys.readouterr().err
        return
    got, _, err = run(capsys, "jobs", "--watch", *args, "--db", db)
    assert got == code and message in err


# -- status ----------------------------------------------------------------


@dataclass(frozen=True)
class Busy:
    """What the `busy` fixture made, for the tests to count."""

    db: Path
    config: Path
    counts: dict[tuple[str, Status], int]
    oldest_queued: str
    running: list[str]
    next_run: str

    def total(self, *, plugin: str | None = None, status: Status | None = None) -> int:
        return sum(
            n for (p, s), n in self.counts.items() if plugin in (None, p) and status in (None, s)
        )


@pytest.fixture
def busy(tmp_path: Path) -> Busy:
    """A database with jobs in several statuses and plugins, a planned schedule, one never
    planned, and a failing workspace."""
    db = tmp_path / "busy.db"
    next_run = format_ts(utcnow() + timedelta(minutes=7))
    counts: dict[tuple[str, Status], int] = {}

    def count(plugin: str, status: Status, n: int = 1) -> None:
        counts[(plugin, status)] = counts.get((plugin, status), 0) + n

    async def make(store: Store) -> tuple[str, list[str]]:
        echo = await store.enqueue_many([NewJob("echo", "poll", {"i": i}) for i in range(6)])
        other = await store.enqueue_many([NewJob("other", "handle") for _ in range(2)])
        running = await store.claim_jobs("echo", limit=3, owner="t", lease_seconds=60)
        await store.set_status(running[0].job_id, Status.FAILED, last_error="boom")
        await store.cancel_job(other[0].job_id)
        count("echo", Status.QUEUED, len(echo) - len(running))
        count("echo", Status.RUNNING, len(running) - 1)
        count("echo", Status.FAILED)
        count("other", Status.QUEUED, len(other) - 1)
        count("other", Status.CANCELED)
        await store.set_schedule_next_run("echo:tick", next_run)
        await store.save_sync_state(
            SyncState(workspace="prod", healthy=False, last_error="401: invalid token")
        )
        claimed = {j.job_id for j in running}
        queued = [j.job_id for j in [*echo, *other[1:]] if j.job_id not in claimed]
        # echo's jobs were enqueued first: the first of them not claimed waits longest.
        return queued[0], sorted(j.job_id for j in running[1:])

    oldest_queued, still_running = with_store(db, make)
    config = tmp_path / "queue-service.toml"
    config.write_text(
        '[[plugins.echo.schedules]]\nid = "tick"\ncommand = "poll"\nevery = "5m"\n'
        '[[plugins.other.schedules]]\nid = "never-ran"\ncommand = "handle"\nevery = "1h"\n'
    )
    return Busy(db, config, counts, oldest_queued, still_running, next_run)


def test_status_json_is_what_the_store_holds(
    busy: Busy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "status", "--json", "--db", str(busy.db), "--config", str(busy.config)
    )
    assert code == 0
    body = json.loads(out)
    by_plugin: dict[str, dict[str, int]] = {}
    for (plugin, status), n in busy.counts.items():
        by_plugin.setdefault(plugin, {})[status] = n
    assert body["counts_by_plugin"] == by_plugin
    assert body["counts_by_status"] == {s: busy.total(status=Status(s)) for s in STATUSES}
    assert body["queue_depth"] == busy.total(status=Status.QUEUED) + busy.total(
        status=Status.RUNNING
    )
    assert body["oldest_queued"]["job"]["job_id"] == busy.oldest_queued
    assert body["oldest_queued"]["age_seconds"] >= 0
    assert body["running"]["total"] == len(busy.running)
    assert sorted(j["job_id"] for j in body["running"]["jobs"]) == busy.running
    schedules = {(s["plugin"], s["schedule_id"]): s for s in body["schedules"]}
    assert schedules[("echo", "tick")]["next_run_at"] == busy.next_run
    assert schedules[("other", "never-ran")]["next_run_at"] is None
    (workspace,) = body["sync"]["workspaces"]
    assert (workspace["workspace"], workspace["state"]) == ("prod", "unhealthy")
    assert body["sync"]["healthy"] is False


def test_status_text_shows_the_same_on_one_screen(
    busy: Busy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", "--db", str(busy.db), "--config", str(busy.config))
    assert code == 0
    assert "\x1b[" not in out  # not a terminal: plain text, no colours or cursor moves
    lines = out.splitlines()
    assert len(lines) < 50
    for plugin in {p for p, _ in busy.counts}:
        (row,) = [line.split() for line in lines if line.startswith(plugin + " ")]
        assert row[-1] == str(busy.total(plugin=plugin))
    assert f"queued {busy.total(status=Status.QUEUED)} " in out
    assert f"Oldest queued: {busy.oldest_queued}" in out
    assert f"Running: {len(busy.running)}" in out and all(i in out for i in busy.running)
    (tick,) = [line for line in lines if line.startswith("echo:tick ")]
    assert "every 5m" in tick and " in 6m " in tick  # next run 7 minutes after the seeding
    (never,) = [line for line in lines if line.startswith("other:never-ran ")]
    assert "not planned yet" in never
    (prod,) = [line for line in lines if line.startswith("prod ")]
    assert "unhealthy" in prod and "401: invalid token" in prod


def test_status_without_a_config_says_schedules_are_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUEUE_SERVICE_CONFIG", raising=False)
    db = str(tmp_path / "empty.db")
    assert run(capsys, "migrate", "--db", db)[0] == 0
    code, out, _ = run(capsys, "status", "--db", db)
    assert code == 0
    assert "nothing is queued" in out and "Running: none" in out
    assert "unknown without a config file" in out and "Databricks sync: not configured" in out
    code, out, _ = run(capsys, "status", "--json", "--db", db)
    body = json.loads(out)
    assert body["schedules"] is None and body["oldest_queued"] is None
    assert body["queue_depth"] == 0 and set(body["counts_by_status"].values()) == {0}


def test_status_refuses_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "status", "--db", str(tmp_path / "absent.db"))
    assert code == 1 and "no database at" in err and not (tmp_path / "absent.db").exists()

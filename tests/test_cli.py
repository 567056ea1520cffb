"""The CLI, in-process: migrate, tokens, jobs, job."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from queue_service.cli import main
from queue_service.store.postgresql.migrations import latest_version as pg_latest_version
from queue_service.store.sqlite.migrations import latest_version

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_creates_and_is_idempotent(
    db_url: str, store_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = pg_latest_version() if store_backend == "postgresql" else latest_version()
    code, out, _ = run(capsys, "migrate", "--db", db_url)
    assert code == 0 and f"schema version {latest}" in out
    code, out, _ = run(capsys, "migrate", "--db", db_url)
    assert code == 0 and f"schema version {latest}" in out


def test_db_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("QUEUE_SERVICE_DB", str(db))
    assert run(capsys, "migrate")[0] == 0
    assert db.exists()


def test_token_lifecycle(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = db_url
    code, out, _ = run(
        capsys,
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "jobs:ro",
        "--scope",
        "plugin:rw",
        "--expires-in",
        "30d",
        "--db",
        db,
    )
    assert code == 0
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("qs_")
    code, out, _ = run(capsys, "token", "list", "--db", db)
    assert code == 0 and "ci" in out and "jobs:ro,plugin:rw" in out and secret not in out
    code, out, _ = run(capsys, "token", "list", "--json", "--db", db)
    listed = json.loads(out)
    assert listed[0]["name"] == "ci" and listed[0]["expires_at"] and secret not in out
    assert run(capsys, "token", "revoke", "ci", "--db", db)[0] == 0
    code, _, err = run(capsys, "token", "revoke", "ci", "--db", db)
    assert code == 1 and "no live token named 'ci'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "jobs:write"], "unknown scope 'jobs:write'"),
        (["--scope", "*", "--expires-in", "soon"], "not a duration"),
    ],
)
def test_token_create_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(
        capsys, "token", "create", "--name", "x", *args, "--db", str(tmp_path / "e.db")
    )
    assert code == 1 and out == "" and message in err


def test_duplicate_token_name(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = db_url
    run(capsys, "token", "create", "--name", "x", "--scope", "*", "--db", db)
    code, _, err = run(capsys, "token", "create", "--name", "x", "--scope", "*", "--db", db)
    assert code == 1 and "already exists" in err


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    import asyncio

    from queue_service.store import NewJob, SQLiteStore

    db = str(tmp_path / "j.db")

    async def seed() -> None:
        s = SQLiteStore(db)
        await s.open()
        await s.enqueue_many([NewJob("echo", "poll", {"i": i}) for i in range(3)])
        await s.enqueue(NewJob("other", "handle"))
        await s.close()

    asyncio.run(seed())
    return db


def test_jobs_table_and_json(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "jobs", "--plugin", "echo", "--db", seeded)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "JOB_ID",
        "PLUGIN",
        "COMMAND",
        "STATUS",
        "SOURCE",
        "CREATED",
        "ATTEMPT",
    ]
    assert sum(" echo " in line for line in lines) == 3 and "3 of 3 matching jobs" in out
    code, out, _ = run(
        capsys, "jobs", "--json", "--status", "pending", "--limit", "2", "--db", seeded
    )
    body = json.loads(out)
    assert body["total"] == 4 and len(body["jobs"]) == 2 and body["next_cursor"]
    code, out, _ = run(capsys, "jobs", "--json", "--cursor", body["next_cursor"], "--db", seeded)
    assert len(json.loads(out)["jobs"]) == 2


def test_jobs_rejects_bad_status(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "jobs", "--status", "fail", "--db", seeded)
    assert code == 1 and "unknown status 'fail'" in err


def test_job_shows_detail(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = (
        sqlite3.connect(seeded)
        .execute("SELECT job_id FROM jobs WHERE plugin = 'other'")
        .fetchone()[0]
    )
    code, out, _ = run(capsys, "job", job_id, "--db", seeded)
    body = json.loads(out)
    assert code == 0 and body["job_id"] == job_id and body["plugin"] == "other"
    assert "payload" in body
    code, _, err = run(capsys, "job", "missing", "--db", seeded)
    assert code == 1 and "no job with id 'missing'" in err


def test_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "x.db"
    bogus.write_text("plain text " * 500)
    code, _, err = run(capsys, "jobs", "--db", str(bogus))
    assert code == 1 and "not a queue-service SQLite database" in err


def test_jobs_filters_by_source(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "jobs", "--json", "--source", "local", "--db", seeded)
    assert code == 0 and json.loads(out)["total"] == 4
    code, out, _ = run(capsys, "jobs", "--json", "--source", "databricks", "--db", seeded)
    assert code == 0 and json.loads(out)["total"] == 0
    code, _, err = run(capsys, "jobs", "--source", "remote", "--db", seeded)
    assert code == 1 and "unknown source 'remote'" in err


def test_an_expiry_beyond_the_calendar_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "x.db")
    code, out, err = run(
        capsys,
        "token",
        "create",
        "--name",
        "x",
        "--scope",
        "*",
        "--expires-in",
        "99999999d",
        "--db",
        db,
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "'99999999d'" in err and "at most 36500d" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "create", "--name", "x", "--scope", "*", "--expires-in", "99999999999999999d"],
        ["serve", "--port", "99999"],
        ["serve", "--port", "-1"],
        ["serve", "--host", "no-such-host.invalid", "--port", "18999"],
        ["token", "revoke", "\udcff"],
        ["jobs", "--status", "ok,\udcff"],
    ],
)
def test_no_cli_error_is_a_traceback(argv: list[str], tmp_path: Path) -> None:
    # A subprocess, so that argparse's own exit and stray output count too.
    result = subprocess.run(
        [sys.executable, "-m", "queue_service", *argv, "--db", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") <= 1 or result.stderr.startswith("usage:"), result.stderr


@pytest.mark.parametrize("argv", [["jobs"], ["job", "some-id"], ["token", "list"]])
def test_read_only_commands_refuse_a_missing_database(
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUEUE_SERVICE_DB", raising=False)
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert "queue-service.db" in err and "--db" in err and "QUEUE_SERVICE_DB" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(capsys, *argv, "--db", str(tmp_path / "other.db"))
    assert code == 1 and str(tmp_path / "other.db") in err
    assert list(tmp_path.iterdir()) == []


def test_enqueue_without_plugins_says_how_to_load_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUEUE_SERVICE_CONFIG", raising=False)
    db = str(tmp_path / "e.db")
    code, _, err = run(capsys, "enqueue", "echo", "poll", "--db", db)
    assert code == 1 and "available: none" not in err
    assert "no plugins are loaded" in err and "--config" in err and "plugin_dirs" in err
    config = tmp_path / "empty.toml"
    config.write_text(f'[service]\nplugin_dirs = ["{tmp_path / "nowhere"}"]\n')
    code, _, err = run(capsys, "enqueue", "echo", "poll", "--config", str(config), "--db", db)
    assert code == 1 and "no plugins are loaded" in err and str(tmp_path / "nowhere") in err


def test_enqueue_with_plugins_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nplugin_dirs = ["{ROOT / "plugins"}"]\n')
    code, _, err = run(
        capsys, "enqueue", "ech", "poll", "--config", str(config), "--db", str(tmp_path / "e.db")
    )
    assert code == 1 and "unknown plugin 'ech'" in err and "available: echo" in err


@pytest.mark.parametrize("name", ["a\x1b[31mb", "tab\there", "new\nline", "bidi\u202eevil", ""])
def test_token_names_with_control_characters_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "n.db")
    code, out, err = run(capsys, "token", "create", "--name", name, "--scope", "*", "--db", db)
    assert code == 1 and out == "" and "name" in err
    assert "\x1b" not in err and "\u202e" not in err  # the name is quoted, not echoed raw


def test_an_empty_status_item_is_named(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "jobs", "--status", "ok,,failed", "--db", seeded)
    assert code == 1 and "unknown status ''" not in err
    assert "empty" in err and "'ok,,failed'" in err


def test_a_payload_with_a_huge_integer_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nplugin_dirs = ["{ROOT / "plugins"}"]\n')
    payload = '{"n": ' + "7" * 5000 + "}"
    code, _, err = run(
        capsys,
        "enqueue",
        "echo",
        "poll",
        "--payload",
        payload,
        "--config",
        str(config),
        "--db",
        str(tmp_path / "e.db"),
    )
    assert code == 1 and "set_int_max_str_digits" not in err
    assert "5000 digits" in err and "at most" in err


def test_cancel_drops_the_queued_jobs_of_a_plugin_in_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The explicit way to drop the work of a plugin that is gone (its jobs stay queued)."""
    from queue_service.store import NewJob
    from tests.processes import enqueue_many

    db = tmp_path / "c.db"
    gone = enqueue_many(db, [NewJob("gone", "poll") for _ in range(1203)])
    other = enqueue_many(db, [NewJob("gone", "push"), NewJob("kept", "poll")])
    code, out, err = run(capsys, "cancel", "--plugin", "gone", "--command", "poll", "--db", str(db))
    assert (code, out, err) == (0, "canceled 1203 queued job(s) of gone poll\n", "")
    raw = sqlite3.connect(db)
    statuses = dict(raw.execute("SELECT job_id, status FROM jobs").fetchall())
    reasons = {r for (r,) in raw.execute("SELECT last_error FROM jobs WHERE status = 'canceled'")}
    raw.close()
    assert {statuses[j] for j in gone} == {"canceled"}
    assert [statuses[j] for j in other] == ["queued", "queued"]
    assert reasons == {"canceled by the operator (queue-service cancel --plugin gone)"}
    code, out, _ = run(capsys, "cancel", "--plugin", "gone", "--db", str(db))
    assert (code, out) == (0, "canceled 1 queued job(s) of gone\n")

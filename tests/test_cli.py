"""The CLI, in-process: migrate, tokens, jobs, job."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from queue_service.cli import main
from queue_service.store.sqlite.migrations import latest_version


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_creates_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "m.db")
    assert run(capsys, "migrate", "--db", db)[0] == 0
    code, out, _ = run(capsys, "migrate", "--db", db)
    assert code == 0 and f"schema version {latest_version()}" in out


def test_db_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("QUEUE_SERVICE_DB", str(db))
    assert run(capsys, "migrate")[0] == 0
    assert db.exists()


def test_token_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "t.db")
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


def test_duplicate_token_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "d.db")
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

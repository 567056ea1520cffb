"""End to end: the real `queue-service serve` process on uvicorn, spoken to over TCP."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from queue_service.store import Store
from tests.conftest import RawDatabase, free_port
from tests.processes import Processes, stop, wait_healthy, wait_until

pytestmark = pytest.mark.slow

SERVE = (sys.executable, "-m", "queue_service", "serve")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, token: str, log: Path) -> None:
        self.proc, self.base, self.token, self.log = proc, base, token, log


@pytest.fixture
def server(tmp_path: Path, db_url: str, processes: Processes) -> Server:
    """`serve` on a new database of each backend (an SQLite file, a PostgreSQL schema)."""
    port = free_port()
    proc = processes.start(
        "server",
        *("serve", "--db", db_url, "--port", str(port)),
        cwd=tmp_path,
        separate_stdout=True,  # the first admin token goes to stdout, the log to stderr
    )
    printed = tmp_path / "server.out"
    token = wait_until(
        lambda: re.search(r"qs_[A-Za-z0-9_-]{43}", printed.read_text()),
        "serve to print an admin token",
        20,
        processes,
    ).group(0)
    wait_healthy(proc, port, processes)
    return Server(proc, f"http://127.0.0.1:{port}", token, tmp_path / "server.log")


def test_first_run_token_answers_the_readme_curl(server: Server) -> None:
    response = httpx.get(
        f"{server.base}/jobs?status=ok", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.status_code == 200
    assert response.json() == {"jobs": [], "total": 0, "next_cursor": None}
    assert httpx.get(f"{server.base}/openapi.json").json()["openapi"] == "3.1.0"


def test_errors_over_the_wire_are_json(server: Server) -> None:
    response = httpx.get(f"{server.base}/jobs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="queue-service"'
    assert response.json()["code"] == "unauthorized"
    response = httpx.post(f"{server.base}/nowhere", content=b"x" * 2_000_000)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_no_token_reaches_the_log(server: Server) -> None:
    good = {"Authorization": f"Bearer {server.token}"}
    httpx.get(f"{server.base}/jobs", headers=good)
    httpx.get(f"{server.base}/jobs", headers={"Authorization": "Bearer qs_" + "B" * 43})
    httpx.get(f"{server.base}/jobs?access_token={server.token}")
    httpx.get(f"{server.base}/jobs?access_token={server.token}", headers=good)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=15)
    text = server.log.read_text()
    assert '"GET /jobs HTTP/1.1" 200' in text, "the access log should be on"
    assert '"GET /jobs HTTP/1.1" 401' in text
    assert server.token not in text and server.token[3:] not in text
    assert "B" * 43 not in text
    assert "qs_[redacted]" in text


def test_a_file_that_is_not_sqlite_is_refused_with_a_message(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_text("hello, I am a text file " * 200)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queue_service",
            "serve",
            "--db",
            str(bogus),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "not a queue-service SQLite database" in result.stderr
    assert "Traceback" not in result.stderr


def refused_start(cwd: Path, *args: str) -> str:
    """Run `queue-service serve ARGS`, which must refuse to start: exit 1, nothing on
    stdout (no token), one line on stderr, which is returned."""
    result = subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert result.returncode == 1
    assert result.stdout == "", "nothing (no token) may be printed for a start that fails"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queue-service: "), result.stderr
    return lines[0]


def test_an_unreachable_postgresql_server_is_refused_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://queue:s3cret-pw@127.0.0.1:{port}/queue"
    line = refused_start(tmp_path, "--db", url, "--port", str(free_port()))
    assert f"127.0.0.1:{port}" in line
    assert "s3cret-pw" not in line, "the password must not be shown"


def test_a_schedule_naming_an_unknown_command_stops_start_up(tmp_path: Path) -> None:
    plugins = Path(__file__).resolve().parents[1] / "plugins"
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[service]\nplugin_dirs = ["{plugins}"]\n'
        '[[plugins.echo.schedules]]\nid = "typo"\ncommand = "pol"\nevery = "1m"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queue_service",
            "serve",
            "--db",
            str(tmp_path / "q.db"),
            "--port",
            str(free_port()),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "plugins.echo.schedules[0].command: plugin 'echo' has no command 'pol'" in result.stderr
    assert "Traceback" not in result.stderr


def serve_until_healthy(
    processes: Processes, db: Path | str, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `queue-service serve --db DB` (stdout in serve.out, stderr in serve.log); return
    it once /healthz answers."""
    port = free_port()
    proc = processes.start(
        "serve", "serve", "--db", str(db), "--port", str(port), *extra, separate_stdout=True
    )
    wait_healthy(proc, port, processes)
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_revoking_every_token_keeps_the_api_locked_across_restarts(
    tmp_path: Path,
    how: str,
    processes: Processes,
    db_url: str,
    store: Store,
    raw_db: RawDatabase,
) -> None:
    from queue_service.api import ServiceState

    secret, _ = await ServiceState.for_store(store).tokens.create("only", ["*"], "1h")
    if how == "revoked":
        assert await store.revoke_token("only")
    else:
        raw_db.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000000Z'")
    proc, base = serve_until_healthy(processes, db_url)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    stop(proc)
    out = (tmp_path / "serve.out").read_text()
    err = (tmp_path / "serve.log").read_text()
    # (Not just "qs_": the log may show a database named qs_…, redacted like a token.)
    assert not re.search(r"qs_[A-Za-z0-9_-]{43}", out + err), "a new token was minted"
    assert raw_db.execute("SELECT COUNT(*) FROM tokens") == [(1,)]
    assert "no live token" in err and "queue-service token create" in err and "--scope '*'" in err


def test_a_port_in_use_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused_start(tmp_path, "--db", str(tmp_path / "q.db"), "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "--port" in line and "serving" not in line


@pytest.mark.parametrize(
    ("trusted", "logged"),
    [(None, "127.0.0.1"), ('["10.0.0.0/8"]', "127.0.0.1"), ('["127.0.0.1"]', "203.0.113.9")],
)
def test_forwarded_headers_are_trusted_only_from_configured_addresses(
    tmp_path: Path, trusted: str | None, logged: str, processes: Processes
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[service]\nforwarded_allow_ips = {trusted}\n" if trusted else "")
    proc, base = serve_until_healthy(processes, tmp_path / "q.db", "--config", str(config))
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert httpx.get(f"{base}/healthz?probe=1", headers=forged).status_code == 400
    stop(proc)
    log = (tmp_path / "serve.log").read_text()
    access = [line for line in log.splitlines() if "probe=1" in line]
    assert len(access) == 1 and f"{logged}:" in access[0], access

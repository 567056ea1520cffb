"""The Databricks client honours HTTP(S)_PROXY and NO_PROXY, read once when it connects.

requests re-reads the proxy variables on every call of a session that trusts the environment;
the client resolves them once in ``RunsClient.connect`` instead. The proxy here is a real one:
a small forwarding HTTP proxy that counts what goes through it.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig
from queue_service.databricks.sync import DatabricksSync
from queue_service.store import SQLiteStore
from tests.fakes.databricks_server import FakeDatabricks

pytestmark = pytest.mark.anyio

TOKEN_ENV = "QS_TEST_DATABRICKS_TOKEN"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        target = urlsplit(self.path)  # a proxy gets the absolute URL
        self.seen.append(target.path)
        assert target.hostname is not None and target.port is not None
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request("GET", path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CountingProxy:
    """A forwarding HTTP proxy on 127.0.0.1; ``requests`` lists the paths it forwarded."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        handler = type("Handler", (_ProxyHandler,), {"seen": self.requests})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SDK settings and no proxy settings from this machine."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")) or (
            name.upper() in PROXY_VARIABLES
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDatabricks]:
    with FakeDatabricks() as server:
        monkeypatch.setenv(TOKEN_ENV, server.token)
        yield server


@pytest.fixture
def proxy() -> Iterator[CountingProxy]:
    with CountingProxy() as p:
        yield p


def settings(fake: FakeDatabricks) -> DatabricksConfig:
    return DatabricksConfig(
        workspaces=[WorkspaceConfig(name="prod", host=fake.url, token_env=TOKEN_ENV)],
        retry_timeout_seconds=1,
        http_timeout_seconds=5,
    )


async def test_requests_go_through_the_proxy_of_the_environment(
    fake: FakeDatabricks, proxy: CountingProxy, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    fake.add_finished_runs(30)
    summary = await DatabricksSync(settings(fake), store).sync_once()
    assert summary.ok, summary.workspaces[0].error
    assert summary.workspaces[0].inserted == 30
    listed = [p for p in proxy.requests if p.endswith("/jobs/runs/list")]
    assert len(listed) == len([r for r in fake.requests if r.path.endswith("/runs/list")]) == 3


async def test_no_proxy_bypasses_it(
    fake: FakeDatabricks, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", _closed_port_url())  # unusable: nothing listens
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    fake.add_finished_runs(3)
    summary = await DatabricksSync(settings(fake), store).sync_once()
    assert summary.ok, summary.workspaces[0].error
    assert summary.workspaces[0].inserted == 3


async def test_the_environment_is_read_once_when_the_client_connects(
    fake: FakeDatabricks, proxy: CountingProxy, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    fake.add_finished_runs(3)
    sync = DatabricksSync(settings(fake), store)
    assert (await sync.sync_once()).ok
    through_proxy = len(proxy.requests)
    # A change after the connect is not seen by the connected client (it would be by the
    # next one, built after an auth fault or a restart).
    monkeypatch.setenv("HTTP_PROXY", _closed_port_url())
    summary = await sync.sync_once()
    assert summary.ok, summary.workspaces[0].error
    assert len(proxy.requests) > through_proxy


async def test_a_ca_bundle_from_the_environment_is_used(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # requests checks the bundle's path before it connects, so no TLS server is needed.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing-ca.pem"))
    monkeypatch.setenv(TOKEN_ENV, "dapi-unused-token")
    host = _closed_port_url().replace("http://", "https://")
    ws = WorkspaceConfig(name="tls", host=host, token_env=TOKEN_ENV)
    config = DatabricksConfig(workspaces=[ws], retry_timeout_seconds=1)
    (result,) = (await DatabricksSync(config, store).sync_once()).workspaces
    assert result.fault_kind == "transient"
    assert "CA certificate bundle" in (result.error or "")

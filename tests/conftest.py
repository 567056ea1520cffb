"""Fixtures that build real things: a temporary SQLite file, the ASGI app, tokens."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service.api import ServiceState, create_app
from queue_service.store import SQLiteStore
from tests.processes import Processes

#: What the store fixture yields. Today the SQLite store; tests that only use the Store
#: protocol should annotate with this (or `Store`), so a second backend runs them as is.
StoreUnderTest = SQLiteStore

#: Every backend the `store` fixture (and so every contract, API and worker test built on it)
#: runs against: a name for the test id, and how to make an unopened store in a temporary
#: place. A new backend adds one entry here.
STORE_BACKENDS: dict[str, Callable[[Path], SQLiteStore]] = {
    "sqlite": lambda db_path: SQLiteStore(db_path),
}

REPO = Path(__file__).parent.parent


@pytest.fixture(autouse=True, scope="session")
def _safe_plugin_modes() -> None:
    """Plugins are refused when group or others may write them (plugins/trust.py).
    A checkout made under umask 002 is group-writable, and so would be the folders
    tests create: take group and other write access away, as an operator would."""
    os.umask(0o022)
    for top in (REPO / "plugins", REPO / "tests" / "plugins", REPO / "tests" / "plugins_invalid"):
        for path in [top, *top.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o022)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture(params=sorted(STORE_BACKENDS))
async def store(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = STORE_BACKENDS[request.param](db_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def state(store: SQLiteStore) -> ServiceState:
    return ServiceState.for_store(store)


@pytest.fixture
async def client(state: ServiceState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(state)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start real processes (logs under tmp_path); every one is stopped after the test."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


TokenFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def make_token(state: ServiceState) -> TokenFactory:
    """Create a real token with the given scopes; returns the secret."""
    counter = iter(range(1_000_000))

    async def make(*scopes: str, expires_in: str | None = None) -> str:
        secret, _ = await state.tokens.create(f"t{next(counter)}", list(scopes), expires_in)
        return secret

    return make


@pytest.fixture
async def admin_headers(make_token: TokenFactory) -> dict[str, str]:
    return bearer(await make_token("*"))


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    *,
    param: str | None = None,
    allowed: list[str] | None = None,
) -> dict[str, Any]:
    """Assert the canonical error shape: JSON {error, code, param?, allowed?} and nothing else."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "code", "param", "allowed"}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    assert body["code"] == code, body
    if param is not None:
        assert body.get("param") == param, body
    if allowed is not None:
        assert body.get("allowed") == allowed, body
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

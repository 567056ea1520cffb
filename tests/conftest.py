"""Fixtures that build real things: a temporary SQLite file, a PostgreSQL schema, the ASGI
app, tokens.

PostgreSQL: the first test that needs it creates a database `qs_test_<pid>_<random>` on the
server `QS_TEST_PG` names (default postgresql://127.0.0.1:5432/test), dropped when the session
ends; each test gets a fresh schema in it (`postgresql_url`: the search_path rides in the URL's
`options`, so a process started with `--db URL` sees the same schema). When no server answers,
the postgresql tests are skipped, unless QS_REQUIRE_POSTGRESQL=1 (CI): then they fail. A
session killed before its clean-up leaves its database behind; the next session on this
machine drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import secrets
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from queue_service.api import ServiceState, create_app
from queue_service.store import SQLiteStore, Store
from queue_service.store.postgresql import PostgreSQLStore
from tests.processes import Processes

#: What the store fixture yields: any backend, so annotate with this (or `Store`).
StoreUnderTest = Store

#: Every backend the `store` fixture (and so every contract, API and worker test built on it)
#: runs against: a name for the test id, and how to make an unopened store from the test's
#: fixtures. A new backend adds one entry here.
STORE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Store]] = {
    "sqlite": lambda request: SQLiteStore(request.getfixturevalue("db_path")),
    "postgresql": lambda request: PostgreSQLStore(request.getfixturevalue("postgresql_url")),
}

#: The server the postgresql tests use, and the switch that makes its absence a failure.
PG_SERVER_ENV = "QS_TEST_PG"
PG_DEFAULT_SERVER = "postgresql://127.0.0.1:5432/test"
PG_REQUIRE_ENV = "QS_REQUIRE_POSTGRESQL"

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests (real processes, browsers, large databases) form one xdist group:
    under `-n 2` (pyproject's addopts) they run one at a time in one worker while the other
    worker runs the rest, so two of them never compete for the two cores, and several
    processes' pools never exceed the PostgreSQL server's connections together."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


class PostgreSQLDatabase:
    """The session's database on the test server, and a fresh schema per test in it."""

    def __init__(self, server: str, admin: psycopg.Connection[Any]) -> None:
        self.server = server
        self.admin = admin
        self.name = f"qs_test_{os.getpid()}_{secrets.token_hex(3)}"
        self._schemas = itertools.count(1)
        self._to_drop: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._dropper: threading.Thread | None = None
        admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(server)._replace(path=f"/{self.name}", query=""))
        self.conn = psycopg.connect(self.url, autocommit=True)

    def new_schema(self) -> tuple[str, str]:
        """A new empty schema, and the URL whose connections use it."""
        schema = f"t{next(self._schemas)}"
        self.conn.execute(f"CREATE SCHEMA {schema}")
        return schema, f"{self.url}?options={quote(f'-csearch_path={schema}', safe='')}"

    def drop_schema(self, schema: str) -> None:
        """Drop `schema` in the background: a test's tables take about as long to drop as
        to create, and the next test need not wait for it."""
        if self._dropper is None:
            self._dropper = threading.Thread(target=self._drop_schemas, name="drop-schemas")
            self._dropper.start()
        self._to_drop.put(schema)

    def _drop_schemas(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            # A process a test left connected inside a transaction must not hang the
            # session; the database (and whatever is left in it) goes at the end anyway.
            conn.execute("SET lock_timeout = '5s'")
            while (schema := self._to_drop.get()) is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")

    def drop(self) -> None:
        if self._dropper is not None:
            self._to_drop.put(None)
            self._dropper.join()
        self.conn.close()
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


def _drop_abandoned_databases(server: str, admin: psycopg.Connection[Any]) -> None:
    """Drop the test databases of sessions that died before their clean-up (killed, timed
    out): on a server on this machine, one whose pid no longer runs. A plain DROP DATABASE
    fails while anyone is connected, and a live session keeps its connection open, so a
    session in another pid namespace is never touched."""
    if urlsplit(server).hostname not in ("127.0.0.1", "localhost", "::1", None):
        return  # the pids of another machine's sessions mean nothing here
    names = admin.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'qs\\_test\\_%'"
    ).fetchall()
    for (name,) in names:
        pid = name.split("_")[2]
        if not pid.isdigit() or _running(int(pid)):
            continue
        with contextlib.suppress(psycopg.Error):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def postgresql_database() -> Iterator[PostgreSQLDatabase]:
    """A database of this session on the test server; skipped (failed under
    QS_REQUIRE_POSTGRESQL=1) when no server answers."""
    server = os.environ.get(PG_SERVER_ENV) or PG_DEFAULT_SERVER
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())  # one line in the skip summary
        reason = f"no PostgreSQL server answers at {server} ({why}); set {PG_SERVER_ENV}"
        if os.environ.get(PG_REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({PG_REQUIRE_ENV}=1 requires one)")
        pytest.skip(reason)
    _drop_abandoned_databases(server, admin)
    database = PostgreSQLDatabase(server, admin)
    try:
        yield database
    finally:
        database.drop()


async def fold_everything(store: PostgreSQLStore) -> None:
    """Fold every committed count delta of `store`'s database (a fold task, this store's or
    another process's, may hold the fold lock a moment)."""
    for _ in range(1000):
        if await store.fold_count_deltas() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the count deltas were never all folded")


@pytest.fixture
def postgresql_url(postgresql_database: PostgreSQLDatabase) -> Iterator[str]:
    """The URL of a fresh, empty schema on the test server (for a store, or a process
    started with `--db URL`), dropped after the test."""
    schema, url = postgresql_database.new_schema()
    try:
        yield url
    finally:
        postgresql_database.drop_schema(schema)


@pytest.fixture(params=sorted(STORE_BACKENDS))
def store_backend(request: pytest.FixtureRequest) -> str:
    """The backend of the test's `store`: every test using it runs once per backend."""
    return str(request.param)


@pytest.fixture
def require_sqlite(store_backend: str) -> None:
    """For a test that reads or changes the SQLite file under its store: skipped on the
    other backends."""
    if store_backend != "sqlite":
        pytest.skip(f"opens the SQLite file itself; the {store_backend} store has none")


@pytest.fixture
def db_url(request: pytest.FixtureRequest, store_backend: str) -> str:
    """A `--db` value naming a fresh database of the backend under test: a file path that
    does not exist yet, or the URL of an empty PostgreSQL schema."""
    if store_backend == "postgresql":
        return str(request.getfixturevalue("postgresql_url"))
    return str(request.getfixturevalue("db_path"))


@pytest.fixture
async def another_store(
    request: pytest.FixtureRequest, store_backend: str, store: Store
) -> AsyncIterator[Store]:
    """A second store on the database of `store`: what another process sees."""
    other = STORE_BACKENDS[store_backend](request)
    await other.open()
    try:
        yield other
    finally:
        await other.close()


class RawDatabase:
    """Plain SQL on the database under the test's store, beside it: each statement commits
    on its own. Placeholders are `?` on every backend."""

    def __init__(self, backend: str, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self._pg: psycopg.Connection[Any] | None = None
        self._sqlite: sqlite3.Connection | None = None
        if backend == "postgresql":
            self._pg = psycopg.connect(request.getfixturevalue("postgresql_url"), autocommit=True)
            self.integrity_error: type[Exception] = psycopg.IntegrityError
        else:
            self._sqlite = sqlite3.connect(request.getfixturevalue("db_path"), isolation_level=None)
            self.integrity_error = sqlite3.IntegrityError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (none for a statement that returns none)."""
        if self._pg is not None:
            cur = self._pg.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
        assert self._sqlite is not None
        return self._sqlite.execute(sql, params).fetchall()

    def dump(self) -> str:
        """Every row of every table, as text (to prove what is not stored anywhere)."""
        if self._sqlite is not None:
            return "\n".join(self._sqlite.iterdump())
        tables = self.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        )
        return "\n".join(
            f"{table}: {self.execute(f'SELECT * FROM {table}')!r}" for (table,) in tables
        )

    def close(self) -> None:
        for conn in (self._pg, self._sqlite):
            if conn is not None:
                conn.close()


@pytest.fixture
def raw_db(
    request: pytest.FixtureRequest, store_backend: str, store: Store
) -> Iterator[RawDatabase]:
    """Plain SQL on the test store's database (opened and migrated by then)."""
    raw = RawDatabase(store_backend, request)
    try:
        yield raw
    finally:
        raw.close()


@pytest.fixture
async def store(request: pytest.FixtureRequest, store_backend: str) -> AsyncIterator[Store]:
    s = STORE_BACKENDS[store_backend](request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def state(store: Store) -> ServiceState:
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

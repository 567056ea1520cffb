"""Start-up shared by every command: the config, the plugin registry and the store.

`cli` and `server` both build on this module and nothing here imports either of them. Every
start-up failure is a `StartupError` whose message is shown on stderr as it stands, and the
command exits non-zero (see `run_reporting_failures`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from queue_service.config import CONFIG_ENV, ConfigError, ServiceConfig, load_config
from queue_service.plugins import Registry
from queue_service.plugins import load as load_plugins
from queue_service.store import Store, StoreError, create_store

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "StartupError",
    "display_db",
    "load_registry",
    "open_store",
    "read_config",
    "resolve_config_path",
    "resolve_db",
    "run_reporting_failures",
]

DEFAULT_DB = "queue-service.db"
DB_ENV = "QUEUE_SERVICE_DB"


class StartupError(Exception):
    """A failure to report on stderr, without a traceback, exiting non-zero."""


def resolve_db(given: str | None) -> str:
    """The database a command uses: `--db`, else $QUEUE_SERVICE_DB, else ./queue-service.db."""
    return str(given or os.environ.get(DB_ENV) or DEFAULT_DB)


def display_db(db: str) -> str:
    """`db` as it may be printed or logged: a URL's password is replaced by ***."""
    if "://" not in db:
        return db
    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def resolve_config_path(given: str | None) -> str | None:
    """The config file a command uses: `--config`, else $QUEUE_SERVICE_CONFIG, else none."""
    value = given or os.environ.get(CONFIG_ENV)
    return str(value) if value else None


def read_config(path: str | None) -> ServiceConfig:
    """The validated config (defaults when `path` is None), or a StartupError naming bad keys."""
    if path is not None and not Path(path).is_file():
        raise StartupError(f"config file {path} does not exist")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def load_registry(config: ServiceConfig) -> Registry:
    """The plugins under the configured plugin_dirs, checked against their config."""
    return load_plugins(
        config.service.plugin_dirs, {name: s.config for name, s in config.plugins.items()}
    )


async def open_store(db: str, *, must_exist: bool = False, **options: Any) -> Store:
    """Open the store named by `db` (a `--db` value), migrating it.

    The store itself comes from `store.create_store`, the one place a store is made from a
    `--db` value. A missing SQLite file is created, unless `must_exist` (commands that only
    read): then it is refused, naming the path and how to point at another. Store errors at
    opening become StartupError.
    """
    file = db.removeprefix("sqlite://")
    path = None if "://" in file else Path(file)  # another backend's URL is not a file
    if path is not None and path.is_dir():
        raise StartupError(f"--db {db} is a directory; give a file path")
    if must_exist and path is not None and not path.exists():
        raise StartupError(
            f"no database at {db}: pass --db PATH or set {DB_ENV} to an existing "
            "queue-service database (`queue-service migrate --db PATH` creates one)"
        )
    try:
        store = create_store(db, **options)
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    try:
        await store.open()
    except StoreError as exc:
        await store.close()
        raise StartupError(str(exc)) from None
    return store


def run_reporting_failures(command: Callable[[], int]) -> int:
    """Run a command and return its exit status. A StartupError or StoreError becomes its
    message on stderr and status 1; an interrupt (Ctrl-C) is status 130."""
    try:
        return command()
    except (StartupError, StoreError) as exc:
        # A store failure (read-only database, full disk) is an answer, not a crash.
        print(f"queue-service: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

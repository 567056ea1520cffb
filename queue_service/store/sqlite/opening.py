"""Opening an SQLite database: identify it, migrate it, or serve it read-only when it
cannot be written (a read-only mount, an unwritable folder) and its schema is current."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

from queue_service.store.errors import NotADatabase, StoreError, StoreUnavailable
from queue_service.store.sqlite import migrations
from queue_service.store.sqlite.errors import is_busy, prefixed, translate_error
from queue_service.store.types import Migration

log = logging.getLogger("queue_service.store")


class Opening:
    """The opening steps of `Database`, run on its writer thread."""

    path: str
    busy_timeout_ms: int
    write_timeout_s: float
    read_only: str | None
    _read_only_uri: str | None

    def _thread_conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _drop_thread_conn(self) -> None:
        raise NotImplementedError

    def _setup(self, migrate: bool) -> list[Migration]:
        give_up = time.monotonic() + self.write_timeout_s
        while True:
            try:
                return self._setup_read_write(migrate)
            except NotADatabase as exc:
                raise NotADatabase(prefixed(self.path, exc)) from exc.__cause__
            except StoreUnavailable as error:
                self._drop_thread_conn()
                # Other processes writing at the same moment must not fail a start.
                if is_busy(error) and time.monotonic() < give_up:
                    time.sleep(0.01)
                    continue
                unwritable = self._unwritable()
                if unwritable is None or not Path(self.path).is_file():
                    raise self._cannot_open(error) from error
                self._open_read_only(unwritable)
                return []

    def _setup_read_write(self, migrate: bool) -> list[Migration]:
        self._create_private()
        self._identify()
        conn = self._thread_conn()
        try:
            if migrate:
                applied = migrations.migrate(conn)
            else:
                migrations.refuse_newer(
                    migrations.applied_version(conn), migrations.latest_version()
                )
                applied = []
            migrations.probe_write(conn)
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        self._warn_if_readable()
        return applied

    def _create_private(self) -> None:
        """Create a missing database file readable by its owner only (0600): it holds every
        payload, result, plugin state and stderr tail. SQLite gives the -wal and -shm files
        the database file's mode."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError:
            return  # it exists, or the folder is unwritable (the read-only path explains)
        os.close(fd)

    def _warn_if_readable(self) -> None:
        """Warn about a queue-service database that others can read."""
        path = Path(self.path)
        mode = path.stat().st_mode
        if mode & 0o044:
            log.warning(
                "%s is readable by %s (mode %o): it holds every payload and result; "
                "restrict it with chmod 600 (and its -wal and -shm files)",
                path,
                "everyone" if mode & 0o004 else "its group",
                mode & 0o777,
            )

    def _identify(self) -> None:
        """Refuse a file that is not a queue-service database before anything changes it:
        switching to WAL rewrites the file header, even of another application's database."""
        path = Path(self.path).absolute()
        if not path.is_file():
            return
        try:
            conn = sqlite3.connect(
                f"file:{urllib.parse.quote(str(path))}?mode=ro",
                uri=True,
                timeout=self.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        try:
            migrations.applied_version(conn)
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from exc
        finally:
            conn.close()

    def _unwritable(self) -> str | None:
        """What keeps the database from being written, per the OS, or None. No path in it:
        the reason is also every refused write's answer, and API callers need no paths."""
        path = Path(self.path).absolute()
        if not os.access(path.parent, os.W_OK):
            return "its directory is not writable"
        if path.exists() and not os.access(path, os.W_OK):
            return "the file is not writable"
        return self._read_only_reason_from_sqlite()

    def _read_only_reason_from_sqlite(self) -> str | None:
        """SQLite may find a file read-only that access(2) allows (a read-only mount seen
        through an overlay, say): ask it, with a connection of its own."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.5)
        except sqlite3.Error:
            return None
        try:
            migrations.probe_write(conn)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
                return "SQLite can only read the file"
            return None
        finally:
            conn.close()
        return None

    def _cannot_open(self, error: StoreUnavailable) -> StoreUnavailable:
        path = Path(self.path).absolute()
        if not path.exists() and not os.access(path.parent, os.W_OK):
            return StoreUnavailable(
                f"cannot create the database {path}: its directory is not writable"
            )
        return error

    def _open_read_only(self, why: str) -> None:
        """Serve reads from a database that cannot be written, if its schema is current."""
        path = Path(self.path).absolute()
        base = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        # mode=ro still needs the -shm file, which an unwritable directory cannot get.
        # immutable=1 reads the file alone, which is right only while no write-ahead log
        # holds committed pages; with one, refuse rather than serve stale rows.
        wal = Path(f"{path}-wal")
        candidates = [base]
        if not (wal.exists() and wal.stat().st_size > 0):
            candidates.append(base + "&immutable=1")
        version: int | None = None
        failure: StoreError | None = None
        for uri in candidates:
            self._read_only_uri = uri
            try:
                version = migrations.applied_version(self._thread_conn())
                break
            except NotADatabase as exc:
                raise NotADatabase(prefixed(self.path, exc)) from exc.__cause__
            except sqlite3.Error as exc:
                failure = translate_error(exc, self.path)
            except StoreError as exc:
                failure = exc
            self._drop_thread_conn()
        if version is None:
            self._read_only_uri = None
            if len(candidates) == 1:
                raise StoreUnavailable(
                    f"{path} cannot be opened: {why}, and its write-ahead log {wal} "
                    "cannot be read without writing beside it; make the directory writable"
                )
            assert failure is not None
            raise failure
        latest = migrations.latest_version()
        migrations.refuse_newer(version, latest)
        if version < latest:
            self._drop_thread_conn()
            self._read_only_uri = None
            raise StoreUnavailable(
                f"{path} is read-only ({why}) and its schema (version {version}) must be "
                f"migrated to version {latest} first; make it writable and start again"
            )
        self.read_only = (
            f"the database is read-only ({why}); writes are refused until it is writable "
            "and the service is restarted"
        )

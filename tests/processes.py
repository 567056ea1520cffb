"""Real processes for the tests that need them: `queue-service serve` and `worker` (and any
helper script) started with their output in log files, waited on through what they show
(a file, a database row, an answer on /healthz), and always stopped. Not a test module.

Every other module starts its processes through `Processes` and waits with `wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import httpx

from queue_service.store import NewJob, Store, create_store

REPO = Path(__file__).resolve().parents[1]
#: The test plugins (tests/plugins/); the sample plugin shipped with the project is in REPO/plugins.
PLUGINS = Path(__file__).resolve().parent / "plugins"
#: Plugins start with `#!/usr/bin/env python3`. Put this interpreter's folder first on PATH
#: so that they find a real interpreter rather than a slow shim (pyenv's costs ~0.1 s a run).
ENV = {
    **os.environ,
    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    "PYTHONUNBUFFERED": "1",
}
T = TypeVar("T")
R = TypeVar("R")


class Processes:
    """Starts processes with their output (stdout and stderr) in `<name>.log` under `logs`
    (or stdout alone in `<name>.out`, with `separate_stdout`), and stops every one of them
    in `stop_all`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.terminals: list[Terminal] = []

    def start(
        self, name: str, *args: str, cwd: Path = REPO, separate_stdout: bool = False
    ) -> subprocess.Popen[bytes]:
        """`queue-service ARGS…` (run as `python -m queue_service`)."""
        argv = [sys.executable, "-m", "queue_service", *args]
        return self.start_command(name, argv, cwd=cwd, separate_stdout=separate_stdout)

    def start_command(
        self, name: str, argv: list[str], *, cwd: Path = REPO, separate_stdout: bool = False
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        out = (self.logs / f"{name}.out").open("wb") if separate_stdout else None
        with log.open("wb") as sink, out or contextlib.nullcontext():
            proc = subprocess.Popen(
                argv,
                stdout=out or sink,
                stderr=sink,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=ENV,
            )
        self.procs.append((proc, log))
        return proc

    def start_in_terminal(
        self, *args: str, columns: int = 160, lines: int = 40, term: str = "xterm-256color"
    ) -> tuple[subprocess.Popen[bytes], Terminal]:
        """`queue-service ARGS…` with a pseudo-terminal of `columns` x `lines` (of type
        `term`) as its stdin, stdout and stderr, as an operator's shell would run it."""
        controller, attached = os.openpty()
        fcntl.ioctl(attached, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = {k: v for k, v in ENV.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = term
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "queue_service", *args],
                stdin=attached,
                stdout=attached,
                stderr=attached,
                cwd=REPO,
                env=env,
                start_new_session=True,  # its own session: the pty becomes its terminal
            )
        finally:
            os.close(attached)
        terminal = Terminal(controller, self.logs / f"terminal-{proc.pid}.log")
        self.terminals.append(terminal)
        self.procs.append((proc, terminal.log))
        return proc, terminal

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for candidate, log in self.procs:
            if candidate is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def tails(self, chars: int = 3000) -> str:
        """The end of every log, for a failure message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for _, log in self.procs
        )

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            stop(proc)
        for terminal in self.terminals:
            terminal.close()


#: Control sequences (colours, cursor moves) that a terminal interprets rather than shows.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Terminal:
    """The controlling side of a pseudo-terminal: what the program wrote to it, as raw bytes
    and as the text a person sees (control sequences removed)."""

    def __init__(self, fd: int, log: Path) -> None:
        self.fd = fd
        self.raw = b""
        self.log = log  # the same bytes, for Processes.tails()
        log.write_bytes(b"")

    @property
    def text(self) -> str:
        return _CONTROL.sub("", self.raw.decode("utf-8", errors="replace"))

    def read(self, within: float = 0.05) -> bool:
        """Take what the program wrote in the next `within` s; False once it closed the pty."""
        ready, _, _ = select.select([self.fd], [], [], within)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the pty has exited
            return False
        self.raw += chunk
        with self.log.open("ab") as sink:
            sink.write(chunk)
        return bool(chunk)

    def wait_for(self, what: str, check: Callable[[str], bool], within: float = 20) -> None:
        """Read until `check(text written since this call)` holds; TimeoutError naming `what`
        and showing the screen otherwise."""
        start = len(self.raw)
        deadline = time.monotonic() + within
        while not check(_CONTROL.sub("", self.raw[start:].decode("utf-8", errors="replace"))):
            if time.monotonic() > deadline or not self.read():
                raise TimeoutError(f"waiting for {what}; the terminal shows:\n{self.text[-3000:]}")

    def drain(self, within: float = 5) -> None:
        """Read until the program closes the pty (it exited) or `within` s passed."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and self.read():
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def stop(proc: subprocess.Popen[bytes], within: float = 15) -> int:
    """SIGTERM (if still running), wait for the exit, SIGKILL after `within` s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def wait_until(
    check: Callable[[], T | None], what: str, within: float, procs: Processes | None = None
) -> T:
    """Poll `check` until it returns something other than None/False, and return that;
    raise TimeoutError naming `what` (with the processes' logs) after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            logs = f"\n{procs.tails()}" if procs is not None else ""
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}{logs}")
        time.sleep(0.05)


def healthy(port: int) -> bool:
    """True when a server on 127.0.0.1:`port` answers /healthz with 200."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_healthy(
    proc: subprocess.Popen[bytes], port: int, procs: Processes, within: float = 30
) -> None:
    """Wait until `proc` answers /healthz; fail at once, with its log, if it exits first."""

    def answered() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{procs.log_of(proc)}")
        return healthy(port)

    wait_until(answered, f"the server on port {port} to answer /healthz", within, procs)


def write_config(folder: Path, text: str, plugin_dir: Path = PLUGINS) -> Path:
    """A config file whose [service] section loads `plugin_dir` and then holds `text`."""
    path = folder / "queue-service.toml"
    path.write_text(f'[service]\nplugin_dirs = ["{plugin_dir}"]\n' + text)
    return path


def worker(
    processes: Processes, name: str, db: Path | str, config: Path
) -> subprocess.Popen[bytes]:
    return processes.start(name, "worker", "--db", str(db), "--config", str(config))


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_quietly(pids: Iterable[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


# --- the database the processes share, through the store ----------------------------------


def with_store(db: Path | str, action: Callable[[Store], Awaitable[R]]) -> R:
    """Open the store on `db` (an SQLite file or a PostgreSQL URL; migrating it), run
    `action`, close it."""

    async def main() -> R:
        store = create_store(str(db))
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def enqueue_many(db: Path | str, jobs: list[NewJob]) -> list[str]:
    return [r.job_id for r in with_store(db, lambda s: s.enqueue_many(jobs))]

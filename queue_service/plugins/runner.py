"""Run one plugin command as a real subprocess, speaking ductile plugin protocol 2.

The process:
- runs the manifest's entrypoint with no arguments, in the plugin folder, in a new
  session (so its whole process group can be signalled), with a minimal allowlisted
  environment (`ENV_ALLOWLIST`); secrets travel only in the stdin request;
- gets one JSON request on stdin and must answer with one JSON object on stdout.

Nothing here blocks the event loop: the process is driven by asyncio pipe transports
and output is collected in callbacks. Memory stays bounded: stdout is accumulated up
to `stdout_cap` (the rest is discarded and the process group is stopped), and only
the last `stderr_cap` bytes of stderr are kept.

How an attempt ends (`AttemptOutcome.kind`):
- `succeeded`: a well-formed response with `status: ok`. The response decides even
  when the exit code is non-zero (ductile does the same); the code is recorded.
- `failed`: a well-formed `status: error` response; or exit code 78 without an ok
  response; or the entrypoint could not be started.
- `protocol_error`: no well-formed response (empty or non-JSON stdout, missing
  `status`, `ok` without `result`, `error` without `error`, wrong field types, or
  stdout over the cap). `error` names the violation.
- `timed_out`: the deadline passed while the process was still running. It gets
  SIGTERM, `kill_grace` seconds, then SIGKILL (the whole group). A process that has
  already exited when the timer is handled is not timed out: its result wins.

`retry_allowed` is False for exit code 78, for `"retry": false` on an error
response and for stdout over the cap; True otherwise (whether a retry happens is the worker's call).

Cancelling the task that awaits `run_command` (job canceled, service shutdown)
stops the process group the same way (SIGTERM, grace, SIGKILL) and re-raises
CancelledError. Whatever ends the run, leftover members of the process group are
SIGKILLed, so a plugin never leaves orphans behind; the child watcher reaps the
leader, so no zombie is left either. After a normal exit, descendants still holding
the output pipes get `kill_grace` seconds before that SIGKILL. (A descendant that
starts a session of its own has left the group and is out of reach.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from subprocess import PIPE
from types import MappingProxyType
from typing import Any, Final, cast

from queue_service.plugins.registry import Plugin
from queue_service.timeutil import format_ts, utcnow

PROTOCOL_VERSION: Final = 2

#: Per-command default timeouts in seconds; any other command gets FALLBACK_TIMEOUT.
DEFAULT_TIMEOUTS: Final[Mapping[str, float]] = MappingProxyType(
    {"poll": 60.0, "handle": 120.0, "health": 10.0}
)
#: Timeout for any command not in DEFAULT_TIMEOUTS.
FALLBACK_TIMEOUT: Final = 60.0
#: Seconds between SIGTERM and SIGKILL.
KILL_GRACE: Final = 5.0
#: Largest accepted stdout (the response), in bytes.
STDOUT_CAP: Final = 1024 * 1024
#: How much of the end of stderr is kept, in bytes.
STDERR_TAIL: Final = 64 * 1024
#: Exit code meaning "configuration error, do not retry".
EXIT_CONFIG_ERROR: Final = 78
#: Longest error message an outcome carries; longer plugin errors are cut.
ERROR_MESSAGE_CAP: Final = 4096
#: The event type a `handle` request carries unless the caller says otherwise.
API_TRIGGER_EVENT: Final = "api.trigger"
#: An API-triggered event's `timestamp`: ductile serializes its unset time this way.
UNSET_EVENT_TIMESTAMP: Final = "0001-01-01T00:00:00Z"

#: Environment variables a plugin inherits from the service, when set (ductile's list).
#: Nothing else is passed unless `[service] plugin_env_passthrough` names it.
ENV_ALLOWLIST: Final = frozenset(
    {
        "PATH",
        "HOME",
        "TZ",
        "LANG",
        "LANGUAGE",
        "TMPDIR",
        "LC_ALL",
        "LC_CTYPE",
        "LC_NUMERIC",
        "LC_TIME",
        "LC_COLLATE",
        "LC_MONETARY",
        "LC_MESSAGES",
        "LC_PAPER",
        "LC_NAME",
        "LC_ADDRESS",
        "LC_TELEPHONE",
        "LC_MEASUREMENT",
        "LC_IDENTIFICATION",
    }
)
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# A plugin runs in its own session (so timeouts can signal its whole group), which also
# means it would outlive a worker that is SIGKILLed and keep running while another
# process retries the job. util-linux's setpriv sets PR_SET_PDEATHSIG before exec, so the
# kernel kills the plugin when its worker dies. (preexec_fn would do the same in-process,
# but is unsafe in a process with threads.) Where setpriv is missing, lease expiry still
# recovers the job; only the overlap guard is lost.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()
# After the group has been SIGKILLed, how long to wait for the pipes to report EOF.
# Only a descendant that left the process group could still hold them open.
_SETTLE_AFTER_KILL = 2.0


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    PROTOCOL_ERROR = "protocol_error"


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one run of a plugin command produced. Immutable.

    - `result`: the response's `result` (any JSON value) when succeeded, else None.
    - `error`: one message naming what went wrong, None when succeeded.
    - `exit_code`: the process's exit status; negative means killed by that signal;
      None when the process never started.
    - `stderr_tail`: the last bytes of stderr (at most the stderr cap), decoded as
      UTF-8 with replacement.
    - `events`, `logs`: as the response gave them (on ok and on error responses),
      None when the response has no such key: `[]` stays an empty tuple.
    - `state_updates`: as the response gave them, `{}` when absent. Whether
      error-time state updates are applied is the caller's decision.
    - `duration`: seconds from spawn to the end of the run, kill time included.
    """

    kind: OutcomeKind
    result: Any = None
    error: str | None = None
    retry_allowed: bool = True
    exit_code: int | None = None
    stderr_tail: str = ""
    events: tuple[dict[str, Any], ...] | None = None
    state_updates: dict[str, Any] = field(default_factory=dict)
    logs: tuple[dict[str, Any], ...] | None = None
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.kind is OutcomeKind.SUCCEEDED


def default_timeout(command: str) -> float:
    """The default timeout for `command`: DEFAULT_TIMEOUTS, else FALLBACK_TIMEOUT."""
    return DEFAULT_TIMEOUTS.get(command, FALLBACK_TIMEOUT)


def plugin_environment(passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The environment a plugin runs with: ENV_ALLOWLIST plus `passthrough` names,
    taken from this process's environment when set. PATH always has a value."""
    names = ENV_ALLOWLIST | frozenset(passthrough)
    env = {name: value for name, value in os.environ.items() if name in names}
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


def build_request(
    command: str,
    *,
    plugin_name: str,
    job_id: str,
    payload: Any,
    config: Mapping[str, Any],
    state: Mapping[str, Any],
    deadline_at: str,
    secrets: Mapping[str, str] | None = None,
    event_type: str = API_TRIGGER_EVENT,
) -> dict[str, Any]:
    """The protocol 2 request object, with ductile's fields and presence rules.

    - `config`, `state` and `context` (`{"ductile_plugin": NAME}`) are always sent;
    - `secrets` only when there are any (never merged into `config`);
    - `payload` when it is a non-empty object; for `handle` it is the whole event
      envelope `{type, payload, timestamp}`, which is also sent as `event`.
    """
    request: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "command": command,
        "config": dict(config),
        "state": dict(state),
        "context": {"ductile_plugin": plugin_name},
        "deadline_at": deadline_at,
    }
    if secrets:
        request["secrets"] = dict(secrets)
    if command == "handle":
        event = {"type": event_type, "payload": payload, "timestamp": UNSET_EVENT_TIMESTAMP}
        request["event"] = event
        request["payload"] = dict(event)
    elif isinstance(payload, dict) and payload:
        request["payload"] = payload
    return request


async def run_command(
    plugin: Plugin,
    command: str,
    *,
    job_id: str,
    payload: Any = None,
    state: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    timeout_seconds: float | None = None,
    kill_grace: float = KILL_GRACE,
    stdout_cap: int = STDOUT_CAP,
    stderr_cap: int = STDERR_TAIL,
    secrets: Mapping[str, str] | None = None,
    event_type: str = API_TRIGGER_EVENT,
    env_passthrough: Iterable[str] = (),
    on_spawn: Callable[[int], None] | None = None,
) -> AttemptOutcome:
    """Run `command` of `plugin` once and report how it ended.

    `config` defaults to the plugin's configured table, `state` to `{}`, `timeout_seconds`
    to `default_timeout(command)`; `secrets` are sent as the request's `secrets` (see
    `build_request`), `env_passthrough` names are added to the environment. `on_spawn`
    is called with the process id (which is also its process group id) right after the
    process starts.

    Never raises for anything the plugin does: every plugin behaviour becomes an
    AttemptOutcome. Raises ValueError for an invalid plugin, bad limits, or a request
    that cannot be encoded as JSON; re-raises CancelledError after stopping the
    process group.
    """
    if plugin.manifest is None or not plugin.valid:
        raise ValueError(f"plugin {plugin.name!r} is invalid: {plugin.error}")
    effective_timeout = default_timeout(command) if timeout_seconds is None else timeout_seconds
    if effective_timeout <= 0 or kill_grace < 0 or stdout_cap <= 0 or stderr_cap <= 0:
        raise ValueError("timeout and caps must be positive and kill_grace not negative")

    deadline_at = format_ts(utcnow() + timedelta(seconds=effective_timeout))
    request = build_request(
        command,
        plugin_name=plugin.name,
        job_id=job_id,
        payload=payload,
        config=plugin.config if config is None else config,
        state=state or {},
        deadline_at=deadline_at,
        secrets=secrets,
        event_type=event_type,
    )
    try:
        request_bytes = json.dumps(request, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"request for job {job_id} is not JSON-serializable: {exc}") from None

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        transport, proto = await loop.subprocess_exec(
            lambda: _PluginProtocol(loop, stdout_cap, stderr_cap),
            *_DIE_WITH_PARENT,
            str(plugin.entrypoint),
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            cwd=str(plugin.folder),
            env=plugin_environment(env_passthrough),
            start_new_session=True,
        )
    except OSError as exc:
        return AttemptOutcome(
            kind=OutcomeKind.FAILED,
            error=f"could not start plugin entrypoint {plugin.manifest.entrypoint!r}: "
            f"{exc.strerror or exc}",
            duration=loop.time() - started,
        )

    pgid = transport.get_pid()
    end = _End.EXITED
    stop = ""
    try:
        if on_spawn is not None:
            on_spawn(pgid)
        stdin = cast("asyncio.WriteTransport | None", transport.get_pipe_transport(0))
        if stdin is not None:
            # A plugin that exits (or closes stdin) without reading its request is not an
            # error here; its outcome says what happened. asyncio swallows EPIPE on write;
            # uvloop raises RuntimeError or a ConnectionError instead.
            with contextlib.suppress(RuntimeError, ConnectionError):
                stdin.write(request_bytes)
            stdin.close()  # flushes, then closes
        end = await _supervise(proto, pgid, started + effective_timeout)
        if end is _End.EXITED:
            # Give descendants still writing to our pipes the grace period to finish.
            await _wait_for(proto.output_done, kill_grace)
        else:
            stop = await _terminate(proto, pgid, kill_grace)
        _signal_group(pgid, signal.SIGKILL)  # stragglers of a finished process
        await _wait_for(proto.output_done, _SETTLE_AFTER_KILL)
    except BaseException:
        # CancelledError (job canceled, shutdown) or a bug: never leave the group behind.
        await _terminate(proto, pgid, kill_grace)
        raise
    finally:
        transport.close()

    if end is _End.EXITED and proto.overflowed.done():
        # The cap was crossed by output read after the exit notice.
        end = _End.OVERFLOW
    return _outcome(
        end,
        proto,
        exit_code=transport.get_returncode(),
        timeout=effective_timeout,
        stop=stop,
        stdout_cap=stdout_cap,
        duration=loop.time() - started,
        entrypoint=plugin.manifest.entrypoint,
    )


class _End(enum.Enum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    OVERFLOW = "overflow"


class _TailBuffer:
    """Keeps the last `cap` bytes written to it."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._data = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self._cap
        if excess > 0:
            del self._data[:excess]
            self.dropped += excess

    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace")


class _PluginProtocol(asyncio.SubprocessProtocol):
    """Collects output in callbacks: no reader tasks and no back-pressure, so a chatty
    plugin can never stall on a full pipe while memory stays bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stdout_cap: int, stderr_cap: int) -> None:
        self._stdout_cap = stdout_cap
        self.stdout = bytearray()
        self.stderr = _TailBuffer(stderr_cap)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.overflowed: asyncio.Future[None] = loop.create_future()
        self.output_done: asyncio.Future[None] = loop.create_future()
        self._open_outputs = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        if fd == 2:
            self.stderr.feed(chunk)
        elif fd == 1 and not self.overflowed.done():
            if len(self.stdout) + len(chunk) > self._stdout_cap:
                _resolve(self.overflowed)
            else:
                self.stdout += chunk

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_outputs.discard(fd)
        if not self._open_outputs:
            _resolve(self.output_done)

    def process_exited(self) -> None:
        _resolve(self.exited)

    def connection_lost(self, exc: Exception | None) -> None:
        _resolve(self.exited)
        _resolve(self.output_done)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait_for(future: asyncio.Future[None], seconds: float) -> bool:
    """Wait up to `seconds` without cancelling `future`; True if it is done."""
    if not future.done() and seconds > 0:
        await asyncio.wait({future}, timeout=seconds)
    return future.done()


async def _supervise(proto: _PluginProtocol, pid: int, deadline: float) -> _End:
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    if remaining > 0:
        await asyncio.wait(
            {proto.exited, proto.overflowed},
            timeout=remaining,
            return_when=asyncio.FIRST_COMPLETED,
        )
    if proto.overflowed.done():
        return _End.OVERFLOW
    if proto.exited.done():
        return _End.EXITED
    if _has_exited(pid):
        # It exited just as the timer fired and the watcher has not told us yet:
        # its result wins. The exit notice follows promptly.
        await proto.exited
        return _End.OVERFLOW if proto.overflowed.done() else _End.EXITED
    return _End.TIMED_OUT


def _has_exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (that is the child watcher's job)."""
    waitid = getattr(os, "waitid", None)  # macOS has it only from Python 3.13
    if waitid is None:
        return False
    try:
        status = waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # already reaped by the watcher
    return status is not None


async def _terminate(proto: _PluginProtocol, pgid: int, grace: float) -> str:
    """SIGTERM the group, wait up to `grace` for the leader, then SIGKILL the group.

    Returns how the leader was stopped, for the error message. The SIGKILL is sent
    even if this coroutine is cancelled during the grace period.
    """
    how = "it had already exited"
    try:
        if not proto.exited.done():
            _signal_group(pgid, signal.SIGTERM)
            how = "stopped by SIGTERM"
            if not await _wait_for(proto.exited, grace):
                how = f"killed by SIGKILL after a {grace:g}s grace period"
    finally:
        _signal_group(pgid, signal.SIGKILL)
    await _wait_for(proto.exited, _SETTLE_AFTER_KILL)
    return how


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # group already gone
        os.killpg(pgid, sig)


class _Violation(Exception):
    """The response breaks protocol 2; the message names how."""


@dataclass(frozen=True, slots=True)
class _Response:
    ok: bool
    result: Any
    error: str | None
    retry: bool
    events: tuple[dict[str, Any], ...] | None
    state_updates: dict[str, Any]
    logs: tuple[dict[str, Any], ...] | None


def parse_response(stdout: bytes) -> _Response:
    """Decode and check one protocol 2 response. Raises _Violation naming the problem."""
    text = stdout.strip()
    if not text:
        raise _Violation("empty stdout")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Violation(f"stdout is not JSON ({_first_line(str(exc))})") from None
    if not isinstance(doc, dict):
        raise _Violation(f"response must be a JSON object, got {type(doc).__name__}")
    if "status" not in doc:
        raise _Violation("response has no status")
    status = doc["status"]
    if status not in ("ok", "error"):
        raise _Violation(f"status must be 'ok' or 'error', got {_short(status)}")
    result = doc.get("result")
    error = doc.get("error")
    if status == "ok" and result is None:
        raise _Violation("status ok without result")
    if status == "error" and (error is None or error == ""):
        raise _Violation("status error without error")
    retry = doc.get("retry", True)
    if not isinstance(retry, bool):
        raise _Violation(f"retry must be true or false, got {_short(retry)}")
    return _Response(
        ok=status == "ok",
        result=result if status == "ok" else None,
        error=None if status == "ok" else _message(error),
        retry=retry,
        events=_objects(doc, "events", required="type"),
        state_updates=_state_updates(doc),
        logs=_objects(doc, "logs", required="message"),
    )


def _objects(
    doc: Mapping[str, Any], key: str, *, required: str
) -> tuple[dict[str, Any], ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Violation(f"{key} must be a list")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get(required), str):
            raise _Violation(f"{key}[{index}] must be an object with a text {required}")
        items.append(item)
    return tuple(items)


def _state_updates(doc: Mapping[str, Any]) -> dict[str, Any]:
    value = doc.get("state_updates")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Violation("state_updates must be an object")
    return value


def _outcome(
    end: _End,
    proto: _PluginProtocol,
    *,
    exit_code: int | None,
    timeout: float,
    stop: str,
    stdout_cap: int,
    duration: float,
    entrypoint: str,
) -> AttemptOutcome:
    common: dict[str, Any] = {
        "exit_code": exit_code,
        "stderr_tail": proto.stderr.text(),
        "duration": duration,
    }
    if end is _End.OVERFLOW:
        return AttemptOutcome(
            kind=OutcomeKind.PROTOCOL_ERROR,
            error=f"protocol violation: stdout exceeded the {stdout_cap}-byte cap",
            retry_allowed=False,  # the same input would overflow the same way
            **common,
        )
    if end is _End.TIMED_OUT:
        return AttemptOutcome(
            kind=OutcomeKind.TIMED_OUT, error=f"timed out after {timeout:g}s; {stop}", **common
        )
    stderr = common["stderr_tail"]
    if _SETPRIV and exit_code in (126, 127) and not proto.stdout and "setpriv:" in stderr:
        # setpriv could not exec the entrypoint: the same failure as an OSError at spawn.
        reason = stderr.strip().splitlines()[-1].split(": ", 2)[-1]
        return AttemptOutcome(
            kind=OutcomeKind.FAILED,
            error=f"could not start plugin entrypoint {entrypoint!r}: {reason}",
            **{**common, "exit_code": None},  # the plugin itself never ran
        )
    try:
        response = parse_response(bytes(proto.stdout))
    except _Violation as violation:
        if exit_code == EXIT_CONFIG_ERROR:
            return AttemptOutcome(
                kind=OutcomeKind.FAILED,
                error=f"exit code 78 (configuration error; no valid response: {violation})",
                retry_allowed=False,
                **common,
            )
        return AttemptOutcome(
            kind=OutcomeKind.PROTOCOL_ERROR,
            error=f"protocol violation: {violation}{_exit_note(exit_code)}",
            **common,
        )
    details: dict[str, Any] = {
        "events": response.events,
        "state_updates": response.state_updates,
        "logs": response.logs,
        **common,
    }
    if response.ok:
        return AttemptOutcome(kind=OutcomeKind.SUCCEEDED, result=response.result, **details)
    error = response.error or ""
    if exit_code == EXIT_CONFIG_ERROR:
        error = f"{error} (exit code 78: configuration error)"
    return AttemptOutcome(
        kind=OutcomeKind.FAILED,
        error=_cap(error),
        retry_allowed=response.retry and exit_code != EXIT_CONFIG_ERROR,
        **details,
    )


def _exit_note(exit_code: int | None) -> str:
    if exit_code is None or exit_code == 0:
        return ""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f" (killed by {name})"
    return f" (exit code {exit_code})"


def _message(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cap(text: str) -> str:
    if len(text) <= ERROR_MESSAGE_CAP:
        return text
    return text[: ERROR_MESSAGE_CAP - 15] + "… (truncated)"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text

"""Running plugin commands as real subprocesses (protocol 2), with the plugins in
tests/plugins. Timeouts and grace periods are small so the file stays fast."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from queue_service.plugins import (
    DEFAULT_TIMEOUTS,
    ENV_ALLOWLIST,
    AttemptOutcome,
    OutcomeKind,
    Plugin,
    Registry,
    default_timeout,
    load,
    plugin_environment,
    run_command,
)
from queue_service.timeutil import parse_rfc3339, utcnow

pytestmark = pytest.mark.anyio

PLUGINS = Path(__file__).parent / "plugins"
GRACE = 0.3
# Long enough for a plugin to start even on a loaded machine, short enough to be quick.
DEADLINE = 1.5
# Slack for timing upper bounds on a loaded machine.
SLACK = 3.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load([PLUGINS], {"introspect": {"token": "from-config"}})


def plugin(registry: Registry, name: str) -> Plugin:
    found = registry.get(name)
    assert found is not None and found.valid, found
    return found


async def run(
    registry: Registry, name: str, command: str = "poll", **kwargs: Any
) -> AttemptOutcome:
    kwargs.setdefault("job_id", "job-1")
    kwargs.setdefault("kill_grace", GRACE)
    return await run_command(plugin(registry, name), command, **kwargs)


def proc_state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, Z, ...), or None if there is no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (orphans are reaped by init, not us)."""
    return proc_state(pid) not in (None, "Z")


async def wait_until_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        await asyncio.sleep(0.02)
    return not is_running(pid)


def pid_in(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def read_pid(path: Path, seconds: float = 5.0) -> int:
    """Wait for a plugin to write its pid file (a tiny local read; blocking is fine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = pid_in(path)
        if pid is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was never written")


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Pids reported by on_spawn; whatever is left is killed so a failure never leaks."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if is_running(pid):
            os.killpg(pid, 9)


# --- success and the request ----------------------------------------------------------


async def test_ok_returns_payload_as_result(registry: Registry, spawned: list[int]) -> None:
    outcome = await run(registry, "ok", payload={"hello": "world"}, on_spawn=spawned.append)
    assert outcome.kind is OutcomeKind.SUCCEEDED and outcome.succeeded
    assert outcome.result == {"hello": "world"}
    assert outcome.error is None and outcome.retry_allowed is True
    assert outcome.exit_code == 0
    assert outcome.logs == ({"level": "info", "message": "ok plugin ran poll"},)
    assert outcome.events is None and outcome.state_updates == {}
    assert 0 < outcome.duration < 5
    # The leader has been reaped: no zombie left behind.
    assert len(spawned) == 1 and proc_state(spawned[0]) is None


async def test_outcome_is_immutable(registry: Registry) -> None:
    outcome = await run(registry, "ok", payload={})
    with pytest.raises(AttributeError):
        outcome.kind = OutcomeKind.FAILED  # type: ignore[misc]


async def test_request_shape_for_poll(registry: Registry) -> None:
    before = utcnow()
    outcome = await run(
        registry,
        "introspect",
        job_id="job-42",
        payload={"n": 1},
        state={"cursor": "abc"},
        timeout_seconds=7,
    )
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome
    request = outcome.result["request"]
    assert set(request) == {
        "protocol",
        "job_id",
        "command",
        "config",
        "state",
        "context",
        "payload",
        "deadline_at",
    }
    assert request["context"] == {"ductile_plugin": "introspect"}
    assert request["protocol"] == 2
    assert request["job_id"] == "job-42"
    assert request["command"] == "poll"
    assert request["payload"] == {"n": 1}
    assert request["state"] == {"cursor": "abc"}
    assert request["config"] == {"token": "from-config"}  # the plugin's configured table
    deadline = parse_rfc3339(request["deadline_at"])
    assert before + timedelta(seconds=7) <= deadline <= utcnow() + timedelta(seconds=7)


async def test_handle_carries_the_event_envelope_as_event_and_payload(registry: Registry) -> None:
    outcome = await run(registry, "introspect", "handle", payload={"msg": "hi"}, config={})
    request = outcome.result["request"]
    envelope = {
        "type": "api.trigger",
        "payload": {"msg": "hi"},
        "timestamp": "0001-01-01T00:00:00Z",
    }
    assert request["event"] == envelope
    assert request["payload"] == envelope, "ductile sends the whole queued envelope as payload"
    assert request["context"] == {"ductile_plugin": "introspect"}
    assert request["command"] == "handle" and request["config"] == {}
    assert "secrets" not in request

    echoed = await run(registry, "ok", "handle", payload={"msg": "hi"})
    assert echoed.result == {"msg": "hi"}

    custom = await run(registry, "introspect", "handle", payload={}, event_type="schedule.tick")
    assert custom.result["request"]["event"]["type"] == "schedule.tick"
    assert custom.result["request"]["event"]["payload"] == {}


async def test_empty_payload_is_left_out_and_context_is_always_sent(registry: Registry) -> None:
    for command in ("poll", "health"):
        request = (await run(registry, "introspect", command, payload={})).result["request"]
        assert "payload" not in request, "ductile omits an empty payload"
        assert request["context"] == {"ductile_plugin": "introspect"}
        assert request["config"] == {"token": "from-config"} and request["state"] == {}


async def test_secrets_travel_top_level_only_when_there_are_some(registry: Registry) -> None:
    secrets = {"webhook": "https://hooks.example/abc"}
    request = (await run(registry, "introspect", payload={}, secrets=secrets)).result["request"]
    assert request["secrets"] == secrets
    assert "webhook" not in request["config"], "secrets are never merged into config"
    request = (await run(registry, "introspect", payload={}, secrets={})).result["request"]
    assert "secrets" not in request


async def test_sandbox_argv_cwd_session_and_env_allowlist(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QS_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    monkeypatch.setenv("QS_PASSED", "visible")
    monkeypatch.setenv("TZ", "UTC")
    target = plugin(registry, "introspect")
    outcome = await run_command(
        target, "poll", job_id="j", payload={}, env_passthrough=["QS_PASSED"]
    )
    info = outcome.result
    assert info["argv"] == [str(target.entrypoint)]  # no arguments, nothing secret in argv
    assert info["cwd"] == str(target.folder.resolve())
    assert info["pid"] == info["pgid"] == info["sid"]  # its own session and process group
    env = info["env"]
    assert "QS_TEST_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "hunter2" not in json.dumps(env)
    assert env["QS_PASSED"] == "visible" and env["TZ"] == "UTC"
    assert env["PATH"]
    # What the runner hands to exec is exactly the allowlist plus the passthrough. (The
    # child may see a few more variables that its launcher, e.g. a pyenv shim, sets.)
    given = plugin_environment(["QS_PASSED"])
    assert set(given) <= ENV_ALLOWLIST | {"QS_PASSED"}
    assert given["TZ"] == "UTC" and "QS_TEST_SECRET" not in given
    for name, value in given.items():
        if name == "PATH":
            assert env[name].endswith(value)  # a shim may prepend its own directories
        else:
            assert env[name] == value


async def test_state_updates_events_and_logs_pass_through(registry: Registry) -> None:
    outcome = await run(registry, "stateful", job_id="job-7", payload={}, state={"counter": 41})
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.result == {"counter": 42}
    assert outcome.state_updates == {"counter": 42, "last_job_id": "job-7"}
    assert outcome.events == (
        {"type": "counter.incremented", "payload": {"counter": 42}, "dedupe_key": "counter:42"},
    )
    assert outcome.logs == ({"level": "info", "message": "counter is now 42"},)


# --- failures ------------------------------------------------------------------------


async def test_error_response_fails_with_retry_allowed(registry: Registry) -> None:
    outcome = await run(registry, "error", payload={"message": "disk full"})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "disk full"
    assert outcome.retry_allowed is True
    assert outcome.result is None and outcome.exit_code == 0
    assert outcome.stderr_tail == "about to fail\n"
    # Kept on error responses too; the worker decides whether to apply them.
    assert outcome.state_updates == {"last_error": "disk full"}
    assert outcome.logs == ({"level": "error", "message": "disk full"},)


async def test_retry_false_forbids_retry(registry: Registry) -> None:
    outcome = await run(registry, "noretry", payload={})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "permanent failure: bad input"
    assert outcome.retry_allowed is False


async def test_exit_78_without_response_fails_without_retry(registry: Registry) -> None:
    outcome = await run(registry, "exit78", payload={})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.retry_allowed is False
    assert outcome.exit_code == 78
    assert outcome.error is not None and outcome.error.startswith("exit code 78")
    assert "empty stdout" in outcome.error
    assert outcome.stderr_tail == "missing api_key in config\n"


async def test_exit_78_overrides_retry_true_in_response(registry: Registry) -> None:
    outcome = await run(registry, "exit78", payload={"respond": True})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.retry_allowed is False
    assert outcome.error == "missing api_key (exit code 78: configuration error)"


async def test_unstartable_entrypoint_fails(tmp_path: Path) -> None:
    shutil.copytree(PLUGINS / "ok", tmp_path / "ok")
    script = tmp_path / "ok" / "run.py"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    broken = load([tmp_path]).get("ok")
    assert broken is not None and broken.valid
    outcome = await run_command(broken, "poll", job_id="j", payload={})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None and outcome.error.startswith(
        "could not start plugin entrypoint 'run.py'"
    )
    assert outcome.exit_code is None


async def test_invalid_plugin_or_limits_are_refused(registry: Registry) -> None:
    invalid = Plugin(name="x", folder=PLUGINS, manifest=None, error="broken")
    with pytest.raises(ValueError, match="plugin 'x' is invalid: broken"):
        await run_command(invalid, "poll", job_id="j")
    ok = plugin(registry, "ok")
    loser = Plugin(name="ok", folder=ok.folder, manifest=ok.manifest, error="duplicate")
    with pytest.raises(ValueError, match="plugin 'ok' is invalid: duplicate"):
        await run_command(loser, "poll", job_id="j")
    with pytest.raises(ValueError, match="positive"):
        await run(registry, "ok", payload={}, timeout_seconds=0)
    with pytest.raises(ValueError, match="not JSON-serializable"):
        await run(registry, "ok", payload={"when": object()})


# --- protocol violations -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("empty", "protocol violation: empty stdout"),
        ("whitespace", "protocol violation: empty stdout"),
        ("not_object", "protocol violation: response must be a JSON object, got list"),
        ("no_status", "protocol violation: response has no status"),
        ("bad_status", "protocol violation: status must be 'ok' or 'error', got 'maybe'"),
        ("ok_no_result", "protocol violation: status ok without result"),
        ("ok_null_result", "protocol violation: status ok without result"),
        ("error_no_error", "protocol violation: status error without error"),
        ("bad_retry", "protocol violation: retry must be true or false, got 'no'"),
        ("bad_events", "protocol violation: events[0] must be an object with a text type"),
        ("bad_state_updates", "protocol violation: state_updates must be an object"),
        ("bad_logs", "protocol violation: logs must be a list"),
        ("two_objects", "protocol violation: stdout is not JSON (Extra data"),
    ],
)
async def test_protocol_violations_are_named(registry: Registry, mode: str, message: str) -> None:
    outcome = await run(registry, "violations", payload={"mode": mode})
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error is not None and outcome.error.startswith(message), outcome.error
    assert outcome.retry_allowed is True
    assert outcome.result is None and outcome.state_updates == {} and outcome.events is None


async def test_garbage_stdout_is_not_json(registry: Registry) -> None:
    outcome = await run(registry, "garbage", payload={})
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error is not None
    assert outcome.error.startswith("protocol violation: stdout is not JSON (Expecting value")


async def test_crash_names_the_violation_and_exit_code(registry: Registry) -> None:
    outcome = await run(registry, "violations", payload={"mode": "crash"})
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error == "protocol violation: empty stdout (exit code 1)"
    assert outcome.exit_code == 1
    assert "RuntimeError: plugin crashed" in outcome.stderr_tail


async def test_well_formed_ok_wins_over_nonzero_exit(registry: Registry) -> None:
    outcome = await run(registry, "violations", payload={"mode": "ok_exit_1"})
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.result == "done anyway" and outcome.exit_code == 1


async def test_stdout_over_cap_is_a_protocol_error(registry: Registry) -> None:
    outcome = await run(registry, "huge", payload={"bytes": 3 * 1024 * 1024})
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error == "protocol violation: stdout exceeded the 1048576-byte cap"
    assert outcome.retry_allowed is False, "the same input would overflow the same way"
    # The same valid response under a bigger cap succeeds: it was the cap that failed it.
    bigger = await run(registry, "huge", payload={"bytes": 65536}, stdout_cap=200_000)
    assert bigger.kind is OutcomeKind.SUCCEEDED and len(bigger.result) == 65536


@pytest.mark.parametrize("block_loop", [False, True])
async def test_small_output_over_a_small_cap(registry: Registry, block_loop: bool) -> None:
    def on_spawn(pid: int) -> None:
        if block_loop:
            time.sleep(0.5)  # exit notice and output are both pending when it resumes

    outcome = await run(registry, "instant", payload={}, stdout_cap=10, on_spawn=on_spawn)
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error == "protocol violation: stdout exceeded the 10-byte cap"


async def test_endless_stdout_is_cut_at_the_cap_and_the_process_stopped(
    registry: Registry, spawned: list[int]
) -> None:
    started = time.monotonic()
    outcome = await run(
        registry,
        "huge",
        payload={"forever": True},
        stdout_cap=256 * 1024,
        timeout_seconds=20,
        on_spawn=spawned.append,
    )
    assert outcome.kind is OutcomeKind.PROTOCOL_ERROR
    assert outcome.error == "protocol violation: stdout exceeded the 262144-byte cap"
    assert time.monotonic() - started < 10  # stopped at the cap, not at the 20 s timeout
    assert outcome.exit_code is not None and outcome.exit_code < 0  # killed by a signal
    assert proc_state(spawned[0]) is None


# --- stderr ---------------------------------------------------------------------------


async def test_stderr_keeps_only_the_tail(registry: Registry) -> None:
    outcome = await run(registry, "stderr_flood", payload={"bytes": 1024 * 1024})
    assert outcome.kind is OutcomeKind.SUCCEEDED  # a flood never stalls the plugin
    assert outcome.result["stderr_bytes"] >= 1024 * 1024
    tail = outcome.stderr_tail.encode()
    assert len(tail) == 64 * 1024
    assert outcome.stderr_tail.endswith("noise \nEND-OF-STDERR\n")


async def test_stderr_tail_cap_is_configurable(registry: Registry) -> None:
    outcome = await run(registry, "stderr_flood", payload={"bytes": 10_000}, stderr_cap=100)
    assert len(outcome.stderr_tail.encode()) == 100
    assert outcome.stderr_tail.endswith("END-OF-STDERR\n")


# --- timeouts -------------------------------------------------------------------------


def test_default_timeouts() -> None:
    assert dict(DEFAULT_TIMEOUTS) == {"poll": 60, "handle": 120, "health": 10}
    assert default_timeout("poll") == 60 and default_timeout("health") == 10
    assert default_timeout("anything_else") == 60
    with pytest.raises(TypeError):
        DEFAULT_TIMEOUTS["poll"] = 1  # type: ignore[index]


async def test_timeout_sigterms_the_group(
    registry: Registry, tmp_path: Path, spawned: list[int]
) -> None:
    child_file = tmp_path / "child.pid"
    started = time.monotonic()
    outcome = await run(
        registry,
        "sleepy",
        payload={"seconds": 30, "child_pid_file": str(child_file)},
        timeout_seconds=DEADLINE,
        on_spawn=spawned.append,
    )
    elapsed = time.monotonic() - started
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.error == f"timed out after {DEADLINE:g}s; stopped by SIGTERM"
    assert outcome.retry_allowed is True
    assert outcome.exit_code == -15
    assert outcome.stderr_tail == "sleeping\n"
    assert DEADLINE <= elapsed < DEADLINE + SLACK
    assert proc_state(spawned[0]) is None
    assert await wait_until_gone(int(child_file.read_text()))  # the grandchild died too


async def test_timeout_sigkills_a_process_that_ignores_sigterm(
    registry: Registry, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "stubborn.pid"
    started = time.monotonic()
    outcome = await run(
        registry,
        "stubborn",
        payload={"pid_file": str(pid_file)},
        timeout_seconds=DEADLINE,
        on_spawn=spawned.append,
    )
    elapsed = time.monotonic() - started
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.error == (
        f"timed out after {DEADLINE:g}s; killed by SIGKILL after a {GRACE:g}s grace period"
    )
    assert outcome.exit_code == -9
    assert "ignoring SIGTERM" in outcome.stderr_tail
    assert DEADLINE + GRACE <= elapsed < DEADLINE + GRACE + SLACK
    assert proc_state(int(pid_file.read_text())) is None


async def test_result_wins_when_the_process_finished_as_the_timer_fired(
    registry: Registry,
) -> None:
    def block_the_loop(pid: int) -> None:
        # Hold the event loop, past the deadline, until the plugin has answered and
        # exited: when the loop looks again, the timer and the exit are both due.
        started = time.monotonic()
        while proc_state(pid) not in (None, "Z") and time.monotonic() - started < 20:
            time.sleep(0.01)
        time.sleep(max(0.0, 0.3 - (time.monotonic() - started)))

    outcome = await run(
        registry, "instant", payload={}, timeout_seconds=0.2, on_spawn=block_the_loop
    )
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome
    assert outcome.result == "instant"


async def test_a_finished_plugin_leaves_no_process_behind(
    registry: Registry, tmp_path: Path
) -> None:
    orphan_file = tmp_path / "orphan.pid"
    child_file = tmp_path / "child.pid"
    outcome = await run(
        registry,
        "sleepy",
        payload={"seconds": 0, "orphan_pid_file": str(orphan_file)},
    )
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert await wait_until_gone(int(orphan_file.read_text()))

    # A leftover child that holds stdout open: the result is still collected, after
    # the grace period, and the child is killed.
    started = time.monotonic()
    held = await run(registry, "sleepy", payload={"seconds": 0, "child_pid_file": str(child_file)})
    assert held.kind is OutcomeKind.SUCCEEDED and held.result == {"slept": 0}
    assert time.monotonic() - started < GRACE + SLACK
    assert await wait_until_gone(int(child_file.read_text()))


# --- cancellation ---------------------------------------------------------------------


async def test_cancel_terminates_the_process_group(
    registry: Registry, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "leader.pid"
    child_file = tmp_path / "child.pid"
    task = asyncio.create_task(
        run(
            registry,
            "sleepy",
            payload={"seconds": 30, "pid_file": str(pid_file), "child_pid_file": str(child_file)},
            timeout_seconds=60,
            on_spawn=spawned.append,
        )
    )
    leader = await read_pid(pid_file)
    child = await read_pid(child_file)
    assert is_running(leader) and is_running(child)
    assert spawned == [leader]

    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert time.monotonic() - started < GRACE + SLACK
    assert proc_state(leader) is None  # gone and reaped, not a zombie
    assert await wait_until_gone(child)


async def test_cancel_kills_a_process_that_ignores_sigterm(
    registry: Registry, tmp_path: Path
) -> None:
    pid_file = tmp_path / "stubborn.pid"
    task = asyncio.create_task(
        run(registry, "stubborn", payload={"pid_file": str(pid_file)}, timeout_seconds=60)
    )
    pid = await read_pid(pid_file)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert GRACE <= time.monotonic() - started < GRACE + SLACK
    assert proc_state(pid) is None


async def test_cancel_through_a_timeout_scope(registry: Registry, spawned: list[int]) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await run(
                registry,
                "sleepy",
                payload={"seconds": 30},
                timeout_seconds=60,
                on_spawn=spawned.append,
            )
    assert len(spawned) == 1 and proc_state(spawned[0]) is None


# --- the event loop stays free ---------------------------------------------------------


async def test_runs_do_not_block_the_loop_and_run_concurrently(
    registry: Registry, tmp_path: Path
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    pid_files = [tmp_path / f"{i}.pid" for i in range(4)]
    runs = asyncio.gather(
        *(
            run(registry, "sleepy", job_id=f"j{i}", payload={"seconds": 2, "pid_file": str(f)})
            for i, f in enumerate(pid_files)
        )
    )
    pids = [await read_pid(f, seconds=10) for f in pid_files]
    # All four plugins are alive at the same moment: they run concurrently.
    assert all(is_running(pid) for pid in pids)
    outcomes = await runs
    ticking.cancel()
    assert all(o.kind is OutcomeKind.SUCCEEDED for o in outcomes)
    assert ticks >= 50  # the loop kept running while the plugins slept for 2 s


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_the_plugin_dies_with_a_sigkilled_worker(tmp_path: Path) -> None:
    """A worker killed with SIGKILL cannot stop its plugin; the kernel must (PDEATHSIG), or the
    job would run twice at once after its lease is recovered elsewhere."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "plugin.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from queue_service.plugins import load\n"
            "from queue_service.plugins.runner import run_command\n"
            f"plugin = load([{str(PLUGINS)!r}]).get('sleepy')\n"
            "asyncio.run(run_command(plugin, 'poll', job_id='j', "
            f"payload={{'seconds': 60, 'pid_file': {str(pid_file)!r}}}))\n",
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 20
        while pid_in(pid_file) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        plugin_pid = pid_in(pid_file)
        assert plugin_pid is not None, "the plugin never started"
        assert is_running(plugin_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while is_running(plugin_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_running(plugin_pid), "the plugin outlived its SIGKILLed worker"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()

"""Debian's Chromium, headless, driven over the Chrome DevTools Protocol on a websocket, for the
dashboard tests and bench/ui_screenshots.py. Not a test module.

No WebDriver: the browser speaks CDP itself, so one websocket client (`websockets`) is the whole
driver, and the same connection reports what a WebDriver would hide (console messages, CSP
violations, every URL the page requests).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.processes import Processes, stop, wait_until

#: The browser: Debian's `chromium` package (.ci/run installs it when missing).
CHROMIUM = shutil.which("chromium")
#: How long one DevTools command may take.
COMMAND_TIMEOUT_S = 30.0


class DevToolsError(RuntimeError):
    pass


class Page:
    """One browser tab: send commands, keep every event that arrives meanwhile."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.events: list[dict[str, Any]] = []
        self._last_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        command_id = self._last_id
        self.socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.0, deadline - time.monotonic())))
            if message.get("id") == command_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise DevToolsError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, what: str, within: float = 15.0) -> None:
        """Poll `expression` until it is truthy (in JavaScript's sense)."""

        def check() -> bool:
            return self.evaluate(f"!!({expression})") is True

        try:
            wait_until(check, what, within)
        except TimeoutError as exc:
            body = self.evaluate("document.body ? document.body.innerText : ''")
            raise TimeoutError(f"{exc}\nthe page shows:\n{body}\nproblems: {self.problems()}")

    def open(self, url: str) -> None:
        """Load `url` and wait for its scripts to have run."""
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", f"{url} to load")

    def problems(self) -> list[str]:
        """Every error or warning the page reported: console messages, uncaught exceptions,
        and what the browser logs itself (a CSP violation, a resource that failed to load)."""
        self.call("Runtime.evaluate", expression="0")  # collect the events sent so far
        found = []
        for event in self.events:
            params = event["params"]
            if event["method"] == "Log.entryAdded" and params["entry"]["level"] in (
                "error",
                "warning",
            ):
                entry = params["entry"]
                found.append(f"{entry['source']}: {entry['text']}")
            elif event["method"] == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "warning",
                "assert",
            ):
                found.append(f"console.{params['type']}: {params['args']}")
        return found

    def requested_urls(self) -> list[str]:
        """Every URL the page has requested (documents, scripts, fetches)."""
        self.call("Runtime.evaluate", expression="0")
        return [
            event["params"]["request"]["url"]
            for event in self.events
            if event["method"] == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path, height: int | None = None) -> None:
        """The page as a PNG: all of it, or its top `height` pixels."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": size["width"],
            "height": min(size["height"], height or size["height"]),
            "scale": 1,
        }
        shot = self.call(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, port: int) -> None:
        self.port = port

    @contextlib.contextmanager
    def new_page(self, width: int = 1360, height: int = 860) -> Iterator[Page]:
        """A fresh tab (its own sessionStorage) that reports console, network and log events,
        closed on exit."""
        target = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=10)
        target.raise_for_status()
        with connect(target.json()["webSocketDebuggerUrl"], max_size=None) as socket:
            page = Page(socket)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.call(f"{domain}.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            try:
                yield page
            finally:
                with contextlib.suppress(Exception):
                    page.call("Page.close")


@contextlib.contextmanager
def chromium(processes: Processes, profile: Path) -> Iterator[Browser]:
    """Headless Chromium with a fresh profile in `profile`, stopped on exit."""
    assert CHROMIUM is not None, "chromium is not installed"
    profile.mkdir(parents=True, exist_ok=True)
    proc = processes.start_command(
        "chromium",
        [
            CHROMIUM,
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--font-render-hinting=none",
            "about:blank",
        ],
    )
    # With port 0 the browser picks a free port and writes it to this file.
    active = profile / "DevToolsActivePort"

    def port() -> int | None:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}:\n{processes.tails()}")
        lines = active.read_text().splitlines() if active.exists() else []
        return int(lines[0]) if len(lines) >= 2 else None

    try:
        yield Browser(wait_until(port, "chromium's DevTools port", 30, processes))
    finally:
        stop(proc)

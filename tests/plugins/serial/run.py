#!/usr/bin/env python3
"""Test plugin: appends "start" and "end" lines (pid, wall time) to payload.trace around
a short sleep, so a test can see whether two runs overlapped."""

import json
import os
import sys
import time


def note(path: str, what: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


request = json.load(sys.stdin)
payload = request.get("payload") or {}
note(payload["trace"], "start")
time.sleep(float(payload.get("seconds", 0.3)))
note(payload["trace"], "end")
json.dump({"status": "ok", "result": {"pid": os.getpid()}}, sys.stdout)

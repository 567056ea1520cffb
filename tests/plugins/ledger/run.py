#!/usr/bin/env python3
"""Test plugin: appends job_id to the file named by payload.ledger or config.ledger (followed
by the worker's pid when payload.with_worker_pid is true). With payload.gate, it first waits
until the file named by payload.gate exists."""

import json
import os
import sys
import time

request = json.load(sys.stdin)
command = request["command"]
payload = (
    (request.get("event") or {}).get("payload") if command == "handle" else request.get("payload")
)
payload = payload or {}
path = payload.get("ledger") or (request.get("config") or {}).get("ledger")
if not path:
    json.dump(
        {"status": "error", "error": "no ledger path in payload or config", "retry": False},
        sys.stdout,
    )
    sys.exit(0)
while payload.get("gate") and not os.path.exists(payload["gate"]):
    time.sleep(0.01)
if payload.get("sleep"):
    time.sleep(float(payload["sleep"]))
# One O_APPEND write per line: concurrent writers never interleave within a line.
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
try:
    line = request["job_id"]
    if payload.get("with_worker_pid"):
        line += " " + str(os.getppid())  # the worker process that started this run
    os.write(fd, (line + "\n").encode())
    os.fsync(fd)
finally:
    os.close(fd)
json.dump({"status": "ok", "result": {"appended": request["job_id"]}}, sys.stdout)

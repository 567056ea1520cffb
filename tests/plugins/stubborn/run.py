#!/usr/bin/env python3
"""Test plugin: ignores SIGTERM and sleeps forever; only SIGKILL stops it."""

import json
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
request = json.load(sys.stdin)
payload = request.get("payload") or {}
if payload.get("pid_file"):
    with open(payload["pid_file"], "w") as handle:
        handle.write(str(os.getpid()))
print("ignoring SIGTERM", file=sys.stderr, flush=True)
while True:
    time.sleep(1)

#!/usr/bin/env python3
"""Test plugin: optionally starts grandchildren and writes pids to files, sleeps, answers ok."""

import json
import os
import subprocess
import sys
import time

request = json.load(sys.stdin)
payload = request.get("payload") or {}
if payload.get("child_pid_file"):
    # A grandchild in the same process group; it must die with the group.
    child = subprocess.Popen(["sleep", "300"])
    with open(payload["child_pid_file"], "w") as handle:
        handle.write(str(child.pid))
if payload.get("orphan_pid_file"):
    # A grandchild that does not hold our pipes; it must not outlive the run.
    orphan = subprocess.Popen(
        ["sleep", "300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(payload["orphan_pid_file"], "w") as handle:
        handle.write(str(orphan.pid))
if payload.get("pid_file"):
    with open(payload["pid_file"], "w") as handle:
        handle.write(str(os.getpid()))
print("sleeping", file=sys.stderr, flush=True)
time.sleep(float(payload.get("seconds", 30)))
json.dump({"status": "ok", "result": {"slept": payload.get("seconds", 30)}}, sys.stdout)

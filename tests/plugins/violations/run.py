#!/usr/bin/env python3
"""Test plugin: writes the protocol violation named by payload.mode (empty, no_status, ...)."""

import json
import sys

request = json.load(sys.stdin)
mode = (request.get("payload") or {}).get("mode", "empty")
responses = {
    "empty": "",
    "whitespace": "  \n\n ",
    "not_object": "[1, 2, 3]",
    "no_status": json.dumps({"result": "fine"}),
    "bad_status": json.dumps({"status": "maybe", "result": "fine"}),
    "ok_no_result": json.dumps({"status": "ok"}),
    "ok_null_result": json.dumps({"status": "ok", "result": None}),
    "error_no_error": json.dumps({"status": "error"}),
    "bad_retry": json.dumps({"status": "error", "error": "x", "retry": "no"}),
    "bad_events": json.dumps({"status": "ok", "result": 1, "events": [{"payload": {}}]}),
    "bad_state_updates": json.dumps({"status": "ok", "result": 1, "state_updates": [1]}),
    "bad_logs": json.dumps({"status": "ok", "result": 1, "logs": "hello"}),
    "two_objects": json.dumps({"status": "ok", "result": 1})
    + json.dumps({"status": "ok", "result": 2}),
    "ok_exit_1": json.dumps({"status": "ok", "result": "done anyway"}),
    "crash": None,
}
if mode == "crash":
    raise RuntimeError("plugin crashed")
response = responses[mode]
assert response is not None
sys.stdout.write(response)
sys.stdout.flush()
if mode == "ok_exit_1":
    sys.exit(1)

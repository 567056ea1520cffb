#!/usr/bin/env python3
"""Test plugin: increments state.counter and returns state_updates, events and logs."""

import json
import sys

request = json.load(sys.stdin)
counter = int((request.get("state") or {}).get("counter", 0)) + 1
json.dump(
    {
        "status": "ok",
        "result": {"counter": counter},
        "state_updates": {"counter": counter, "last_job_id": request["job_id"]},
        "events": [
            {
                "type": "counter.incremented",
                "payload": {"counter": counter},
                "dedupe_key": "counter:" + str(counter),
            }
        ],
        "logs": [{"level": "info", "message": "counter is now " + str(counter)}],
    },
    sys.stdout,
)

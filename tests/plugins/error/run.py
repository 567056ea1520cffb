#!/usr/bin/env python3
"""Test plugin: answers status error with retry true."""

import json
import sys

request = json.load(sys.stdin)
message = (request.get("payload") or {}).get("message", "something went wrong")
print("about to fail", file=sys.stderr)
json.dump(
    {
        "status": "error",
        "error": message,
        "retry": True,
        "state_updates": {"last_error": message},
        "logs": [{"level": "error", "message": message}],
    },
    sys.stdout,
)

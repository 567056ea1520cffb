#!/usr/bin/env python3
"""Test plugin: answers ok, echoing the payload (the event payload for handle)."""

import json
import sys
from typing import Any


def payload_of(request: dict[str, Any]) -> Any:
    if request.get("command") == "handle":
        return (request.get("event") or {}).get("payload")
    return request.get("payload")


request = json.load(sys.stdin)
payload = payload_of(request)
json.dump(
    {
        "status": "ok",
        "result": payload if payload is not None else {},
        "logs": [{"level": "info", "message": "ok plugin ran " + request["command"]}],
    },
    sys.stdout,
)

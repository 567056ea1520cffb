#!/usr/bin/env python3
"""echo: a ductile protocol 2 plugin that returns its payload as the result.

Reads one JSON request on stdin, writes one JSON response on stdout.
Standard library only.
"""

import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    command = request.get("command")
    state = request.get("state") or {}
    runs = int(state.get("runs", 0)) + 1

    if command == "health":
        result = {"healthy": True}
    elif command == "handle":
        result = (request.get("event") or {}).get("payload")
    elif command == "poll":
        result = request.get("payload")
    else:
        json.dump(
            {"status": "error", "error": f"unknown command {command!r}", "retry": False}, sys.stdout
        )
        return 0

    prefix = (request.get("config") or {}).get("prefix")
    if prefix is not None:
        result = {"prefix": prefix, "echo": result}
    if result is None:
        result = {}
    json.dump(
        {
            "status": "ok",
            "result": result,
            "state_updates": {"runs": runs},
            "logs": [{"level": "info", "message": f"{command} echoed (run {runs})"}],
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

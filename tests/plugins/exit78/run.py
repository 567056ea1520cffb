#!/usr/bin/env python3
"""Test plugin: exits 78, with an error response when payload.respond is true, else silently."""

import json
import sys

request = json.load(sys.stdin)
print("missing api_key in config", file=sys.stderr)
if (request.get("payload") or {}).get("respond"):
    json.dump({"status": "error", "error": "missing api_key", "retry": True}, sys.stdout)
sys.exit(78)

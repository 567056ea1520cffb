#!/usr/bin/env python3
"""Test plugin: writes payload.reply as its response and exits with payload.exit_code,
like real ductile plugins that print an error response and then exit 1."""

import json
import sys

payload = json.load(sys.stdin).get("payload") or {}
json.dump(payload.get("reply", {"status": "ok", "result": "no reply given"}), sys.stdout)
sys.stdout.flush()
sys.exit(payload.get("exit_code", 0))

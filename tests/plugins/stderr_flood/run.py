#!/usr/bin/env python3
"""Test plugin: writes payload.bytes of stderr ending in END-OF-STDERR, then answers ok."""

import json
import sys

request = json.load(sys.stdin)
size = int((request.get("payload") or {}).get("bytes", 1024 * 1024))
line = "noise " * 16 + "\n"
written = 0
while written < size:
    sys.stderr.write(line)
    written += len(line)
sys.stderr.write("END-OF-STDERR\n")
sys.stderr.flush()
json.dump({"status": "ok", "result": {"stderr_bytes": written}}, sys.stdout)

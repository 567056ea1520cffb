#!/usr/bin/env python3
"""Test plugin: a valid but oversized response (payload.bytes), or endless output (payload.forever)."""

import json
import sys

request = json.load(sys.stdin)
payload = request.get("payload") or {}
block = "x" * 65536
out = sys.stdout
if payload.get("forever"):
    while True:
        out.write(block)
size = int(payload.get("bytes", 4 * 1024 * 1024))
out.write('{"status": "ok", "result": "')
for _ in range(size // len(block)):
    out.write(block)
out.write('"}')

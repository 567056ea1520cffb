#!/usr/bin/env python3
"""Test plugin: answers ok; its manifest declares a strict input_schema."""

import json
import sys

request = json.load(sys.stdin)
json.dump({"status": "ok", "result": {"command": request["command"]}}, sys.stdout)

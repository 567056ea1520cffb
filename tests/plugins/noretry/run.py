#!/usr/bin/env python3
"""Test plugin: answers status error with retry false (do not retry)."""

import json
import sys

json.load(sys.stdin)
json.dump({"status": "error", "error": "permanent failure: bad input", "retry": False}, sys.stdout)

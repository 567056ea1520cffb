#!/usr/bin/env python3
"""Test plugin: answers ok and exits without reading its request."""

import json
import sys

sys.stdout.write(json.dumps({"status": "ok", "result": "instant"}))

#!/usr/bin/env python3
"""Test plugin: writes non-JSON to stdout and exits 0."""

import sys

sys.stdin.read()
print("<html>this is not JSON</html>")

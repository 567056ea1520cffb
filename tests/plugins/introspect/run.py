#!/usr/bin/env python3
"""Test plugin: reports what it was given, so tests can check the request and the sandbox."""

import json
import os
import sys

request = json.load(sys.stdin)
json.dump(
    {
        "status": "ok",
        "result": {
            "request": request,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "argv": sys.argv,
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "sid": os.getsid(0),
        },
    },
    sys.stdout,
)

"""A small HTTP/1.1 load generator: concurrent keep-alive connections to 127.0.0.1 only.

Run as its own process so it does not share the server's interpreter:

    BENCH_TOKEN=qs_... python bench/_loadgen.py --port P --paths paths.json \
        --connections 32 --warmup 2 --duration 10 --max-requests 300000

Each connection sends GET requests for the paths in turn (each connection starts at a
different offset) and waits for each response before sending the next; with `--body FILE`
the requests are POSTs of that JSON body. The load is bounded by --duration seconds and
--max-requests, whichever comes first. Prints one JSON object: requests, status counts,
requests/s, client-side latency percentiles and the client's own CPU use (near 1.0 means
the client, not the server, was the limit). `answered` counts every response, warm-up
included (what a server must have stored after POSTs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path

HOST = "127.0.0.1"


class Load:
    def __init__(self, requests: list[bytes], max_requests: int) -> None:
        self.requests = requests
        self.max_requests = max_requests
        self.recording = False
        self.stopped = False
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()  # warm-up included
        self.latencies: list[float] = []
        self.body_bytes = 0
        self.errors: Counter[str] = Counter()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """(status, body length) of one response with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status, length


async def connection(load: Load, port: int, offset: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    index = offset
    try:
        while not load.stopped:
            if load.recording and load.sent >= load.max_requests:
                break
            request = load.requests[index % len(load.requests)]
            index += 1
            recording = load.recording
            started = time.perf_counter()
            writer.write(request)
            try:
                status, length = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                load.errors[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            load.answered[status] += 1
            if recording and load.recording:
                load.sent += 1
                load.latencies.append(time.perf_counter() - started)
                load.statuses[status] += 1
                load.body_bytes += length
    finally:
        writer.close()


async def run(args: argparse.Namespace, requests: list[bytes]) -> dict[str, object]:
    load = Load(requests, args.max_requests)
    tasks = [
        asyncio.create_task(connection(load, args.port, i * max(1, len(requests) // 97 + 1)))
        for i in range(args.connections)
    ]
    await asyncio.sleep(args.warmup)
    cpu0 = time.process_time()
    load.recording = True
    started = time.perf_counter()
    deadline = started + args.duration
    while time.perf_counter() < deadline and load.sent < args.max_requests:
        await asyncio.sleep(0.02)
        if all(t.done() for t in tasks):
            break
    load.recording = False
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    load.stopped = True
    await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(t.exception()) for t in tasks if t.done() and t.exception() is not None]
    ms = sorted(x * 1000 for x in load.latencies)

    def pct(p: float) -> float:
        if not ms:
            return float("nan")
        return round(ms[min(len(ms) - 1, max(0, round(p / 100 * len(ms) + 0.5) - 1))], 3)

    return {
        "requests": load.sent,
        "seconds": round(elapsed, 3),
        "rps": round(load.sent / elapsed, 1) if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "answered": {str(k): v for k, v in sorted(load.answered.items())},
        "errors": dict(load.errors),
        "connection_failures": failures[:3],
        "mean_body_bytes": round(load.body_bytes / load.sent) if load.sent else 0,
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": pct(100)},
        "client_cpu": round(cpu / elapsed, 2) if elapsed else 0.0,
        "connections": args.connections,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", type=Path, required=True, help="JSON list of request paths")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=300_000)
    parser.add_argument("--body", type=Path, help="POST this JSON body instead of GET")
    args = parser.parse_args()
    if not 1 <= args.connections <= 256 or args.duration > 120 or args.max_requests > 2_000_000:
        parser.error("keep the load bounded: 1-256 connections, <= 120 s, <= 2M requests")
    token = os.environ.get("BENCH_TOKEN", "")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    paths = json.loads(args.paths.read_text())
    method, body = "GET", b""
    if args.body is not None:
        body = args.body.read_bytes()
        method = "POST"
        auth += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    requests = [
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{args.port}\r\n{auth}\r\n".encode() + body
        for path in paths
    ]
    result = asyncio.run(run(args, requests))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

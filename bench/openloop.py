"""An open-loop load generator: requests sent on a fixed schedule, latency from the schedule.

    .venv/bin/python bench/openloop.py URL --rate 350 --duration 10 --warmup 2 \\
        --connections 64 --body FILE --header "Authorization: Bearer …" > results.json

Request ``i`` is due at ``start + i / rate``, whatever happened to the others: a server that
stalls does not slow the sender down (a closed-loop client such as ``hey -q`` waits for an answer
before it sends again, and so hides the stall: coordinated omission). Its latency is counted from
when it was due, not from when a connection was free to send it, so time spent queued behind a
slow answer counts, as ``wrk2`` counts it. At most ``--connections`` requests are in flight on
as many kept-alive connections; a request due while all are busy waits for the first one free.

The generator shares a core with the mock provider (and, in PostgreSQL mode, with the database
and Redis), so its own CPU is part of what every request waits for there: it sends the same
request bytes, prepared once, over plain asyncio protocols and reads answers with httptools
(C): about 260 µs of CPU a request at 350/s, where an aiohttp client took 710 µs, a quarter of
the load core, and its own queueing showed as the server's latency (the mock's p50 from 4.2 ms
to 1.1 ms on a busy machine).

Prints one JSON object: the achieved rate, the latency percentiles (ms) of the requests due
after the warm-up, the statuses, and how late the sender itself ran (its own lag, so a sender
that could not keep its schedule shows instead of passing for a slow server).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httptools


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    rank = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[rank]


class Results:
    """What the connections report: latencies (ms) and statuses of the counted requests."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.done = 0

    def add(self, due: float, counted: bool, status: str) -> None:
        self.done += 1
        if counted:
            self.latencies.append((time.perf_counter() - due) * 1000)
            self.statuses[status] = self.statuses.get(status, 0) + 1


class Connection(asyncio.Protocol):
    """One kept-alive connection: sends a request when handed one, reads its answer, then takes
    the next request waiting in ``queue`` or goes back to ``idle``."""

    def __init__(self, request: bytes, pool: Pool) -> None:
        self.request = request
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current: tuple[float, bool] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish("BadResponse")
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.current is not None:
            self._finish("ConnectionLost")

    # -- httptools callbacks
    def on_message_complete(self) -> None:
        self._finish(str(self.parser.get_status_code()))
        if not self.parser.should_keep_alive():
            self._close()

    def send(self, due: float, counted: bool) -> None:
        assert self.transport is not None
        self.current = (due, counted)
        self.transport.write(self.request)

    def _finish(self, status: str) -> None:
        current, self.current = self.current, None
        if current is not None:
            self.pool.finished(self, *current, status)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Up to ``size`` connections; requests due while every one is busy wait in order."""

    def __init__(self, host: str, port: int, request: bytes, size: int) -> None:
        self.host, self.port, self.request, self.size = host, port, request, size
        self.idle: collections.deque[Connection] = collections.deque()
        self.waiting: collections.deque[tuple[float, bool]] = collections.deque()
        self.results = Results()
        self.opening = 0
        self.count = 0

    def submit(self, due: float, counted: bool) -> None:
        while self.idle:
            connection = self.idle.popleft()
            if connection.transport is not None:
                connection.send(due, counted)
                return
            self.count -= 1
        self.waiting.append((due, counted))
        if self.count + self.opening < self.size:
            asyncio.get_running_loop().create_task(self._open())

    def finished(self, connection: Connection, due: float, counted: bool, status: str) -> None:
        self.results.add(due, counted, status)
        if connection.transport is None or connection.transport.is_closing():
            self.count -= 1
            if self.waiting and self.count + self.opening < self.size:
                asyncio.get_running_loop().create_task(self._open())
        elif self.waiting:
            connection.send(*self.waiting.popleft())
        else:
            self.idle.append(connection)

    async def _open(self) -> None:
        self.opening += 1
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(self.request, self), self.host, self.port
            )
        except OSError as exc:
            self.opening -= 1
            if self.waiting:
                self.results.add(*self.waiting.popleft(), type(exc).__name__)
            return
        self.opening -= 1
        self.count += 1
        if self.waiting:
            connection.send(*self.waiting.popleft())
        else:
            self.idle.append(connection)


def request_bytes(url: str, headers: dict[str, str], body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    body = open(args.body, "rb").read() if args.body else b""  # noqa: SIM115
    host, port, request = request_bytes(args.url, headers, body)
    total = int(args.rate * (args.warmup + args.duration))
    pool = Pool(host, port, request, args.connections)
    lags: list[float] = []
    start = time.perf_counter() + 0.2
    for i in range(total):
        due = start + i / args.rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        counted = i >= args.rate * args.warmup
        if counted:
            lags.append(max(0.0, (time.perf_counter() - due) * 1000))
        pool.submit(due, counted)
    deadline = time.perf_counter() + args.timeout
    while pool.results.done < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    results = pool.results
    unanswered = sum(1 for i in range(total) if i >= args.rate * args.warmup) - len(
        results.latencies
    )
    if unanswered > 0:  # no answer within the timeout after the last was sent
        results.statuses["TimeoutError"] = unanswered
    latencies = sorted(results.latencies)
    lags.sort()
    return {
        "rate_target": args.rate,
        "rate_achieved": round(len(latencies) / args.duration, 1),
        "samples": len(latencies),
        "statuses": results.statuses,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
        "sender_lag_p99_ms": percentile(lags, 99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=350.0, help="requests/s (350)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds counted (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent, not counted (2)")
    parser.add_argument("--connections", type=int, default=64, help="in flight at most (64)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the last answers (10)"
    )
    parser.add_argument("--body", help="a file with the request body")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

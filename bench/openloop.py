"""An open-loop load generator: requests sent on a fixed schedule, latency from the schedule.

    .venv/bin/python bench/openloop.py URL --rate 350 --duration 10 --warmup 2 \\
        --connections 64 --body FILE --header "Authorization: Bearer …" > results.json

Request ``i`` is due at ``start + i / rate``, whatever happened to the others: a server that
stalls does not slow the sender down (a closed-loop client such as ``hey -q`` waits for an answer
before it sends again, and so hides the stall: coordinated omission). Its latency is counted from
when it was due, not from when a connection was free to send it, so time spent queued behind a
slow answer counts, as ``wrk2`` counts it. At most ``--connections`` requests are in flight on
as many kept-alive connections; a request due while all are busy waits for one.

Prints one JSON object: the achieved rate, the latency percentiles (ms) of the requests due
after the warm-up, the statuses, and how late the sender itself ran (its own lag, so a sender
that could not keep its schedule shows instead of passing for a slow server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

import aiohttp


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    rank = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[rank]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    body = open(args.body, "rb").read() if args.body else b""  # noqa: SIM115
    total = int(args.rate * (args.warmup + args.duration))
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lags: list[float] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.2
        pending: set[asyncio.Task[None]] = set()

        async def one(due: float, counted: bool) -> None:
            try:
                async with session.post(args.url, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except Exception as exc:  # a failed request is a result, not a crash
                status = type(exc).__name__
            if counted:
                latencies.append((time.perf_counter() - due) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        for i in range(total):
            due = start + i / args.rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            counted = i >= args.rate * args.warmup
            if counted:
                lags.append(max(0.0, (time.perf_counter() - due) * 1000))
            task = asyncio.create_task(one(due, counted))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    latencies.sort()
    lags.sort()
    return {
        "rate_target": args.rate,
        "rate_achieved": round(len(latencies) / args.duration, 1),
        "samples": len(latencies),
        "statuses": statuses,
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
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds (10)")
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

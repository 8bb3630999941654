"""Clients that leave a stream half-way, at a fixed rate, for ``bench/run.sh --soak``.

    python bench/disconnects.py URL --rate R --body FILE --token T --progress FILE

Every 1/R s a new connection POSTs the body (a slow stream: the gateway is still relaying it
when the client goes), reads the status line and the first content event, and closes the
socket with the rest unread (the kernel answers the gateway's next write with a reset). wrk
cannot do this: it reads every answer to the end. Runs until SIGTERM or SIGINT, then prints
one JSON line of counts; ``--progress`` is rewritten every second with the same counts.

Counts: ``left`` (a 200 and at least one content event, then closed: the case measured),
``other_status`` (an answer that was not 200), ``ended`` (the stream finished before one
content event arrived: the body is not slow enough), ``errors`` (connection failures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

counts = {"started": 0, "left": 0, "other_status": 0, "ended": 0, "errors": 0}


async def leave_mid_stream(host: str, port: int, request: bytes) -> None:
    counts["started"] += 1
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        status_line = await reader.readline()
        if b" 200 " not in status_line:
            counts["other_status"] += 1
            return
        while True:
            line = await reader.readline()
            if not line:
                counts["ended"] += 1
                return
            if (
                line.startswith(b"data: ")
                and b'"content":"' in line
                and b'"content":""' not in line
            ):
                counts["left"] += 1
                return
    except (OSError, asyncio.IncompleteReadError):
        counts["errors"] += 1
    finally:
        if writer is not None:
            writer.transport.abort()  # close now, the rest of the stream unread


async def main_async(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = Path(args.body).read_bytes()
    request = (
        f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {args.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    last_progress = 0.0
    sent = 0
    while not stop.is_set():
        due = start + sent / args.rate  # open loop: the schedule does not wait for answers
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            break
        task = asyncio.create_task(leave_mid_stream(host, port, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
        if args.progress and time.monotonic() - last_progress >= 1.0:
            last_progress = time.monotonic()
            _write_progress(Path(args.progress))
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    if args.progress:
        _write_progress(Path(args.progress))
    print(json.dumps(counts), flush=True)


def _write_progress(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="new streams a second")
    parser.add_argument("--body", required=True, help="a file with the JSON body (a stream)")
    parser.add_argument("--token", required=True)
    parser.add_argument("--progress", help="a file rewritten every second with the counts")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

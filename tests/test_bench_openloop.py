"""``bench/openloop.py``: requests on a schedule over kept-alive connections, latency counted
from when each was due, every answer's status counted, a stall seen as a stall."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MOCK_KEY, MockProvider

ROOT = Path(__file__).resolve().parent.parent
OPENLOOP = [sys.executable, str(ROOT / "bench" / "openloop.py")]
BODY = b'{"model":"gpt-5.5","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'


def run_openloop(url: str, tmp_path: Path, *extra: str) -> dict[str, object]:
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    done = subprocess.run(
        [*OPENLOOP, url, "--body", str(body), "--warmup", "0.2", *extra],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_request_is_sent_on_schedule_and_answered(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    url = f"{mock_provider.url}/v1/chat/completions"
    ok = run_openloop(url, tmp_path, "--rate", "200", "--duration", "1",
                      "--header", f"Authorization: Bearer {MOCK_KEY}")  # fmt: skip
    assert ok["statuses"] == {"200": 200}
    assert ok["samples"] == 200 and ok["rate_achieved"] == 200.0
    assert 0 < ok["p50_ms"] <= ok["p99_ms"] <= ok["max_ms"] < 1000  # type: ignore[operator]
    refused = run_openloop(url, tmp_path, "--rate", "100", "--duration", "0.5",
                           "--header", "Authorization: Bearer wrong")  # fmt: skip
    assert refused["statuses"] == {"401": 50}


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """An HTTP server that answers at once, except that it answers nothing from 0.5 s to
    0.8 s after its first request (then everything held)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    first: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            now = time.monotonic()
            if not first:
                first.append(now)
            if 0.5 <= now - first[0] < 0.8:
                await asyncio.sleep(0.8 - (now - first[0]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    async def serve() -> None:
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"


def test_a_stall_counts_for_every_request_due_during_it(
    stalling_server: str, tmp_path: Path
) -> None:
    """Coordinated omission: a closed-loop client would send little during the 300 ms stall
    and report a fast server; here the ~60 requests due in it each wait up to 300 ms."""
    result = run_openloop(stalling_server, tmp_path, "--rate", "200", "--duration", "1.5")
    assert result["statuses"] == {"200": 300}
    assert result["max_ms"] >= 250  # type: ignore[operator]
    assert result["p90_ms"] >= 50  # type: ignore[operator]  (a tenth of them waited)
    assert result["p50_ms"] < 50  # type: ignore[operator]

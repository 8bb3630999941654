"""What an unauthenticated or misbehaving client can make the gateway hold: metric series, header
bytes, connections that never finish their head or body.

Label values must come from bounded sets (route templates, status codes, the config's names), so
odd paths and unknown model names leave ``/metrics`` as it was. The HTTP layer bounds a request
head's size (431) and the time its head and body may take (408), so a slow or endless client
costs a bounded amount of memory for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayProcess, MockProvider, serve_gateway
from tests.sdk_helpers import config_with

#: The routes whose requests are counted by route (the LLM routes).
ROUTE_TEMPLATES = {
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
}
_ROUTE_LABEL = re.compile(r'route="([^"]*)"')


def metrics_text(gateway: GatewayProcess) -> str:
    return httpx.get(f"{gateway.url}/metrics", timeout=10).text


def test_metric_labels_stay_bounded_under_odd_paths_and_unknown_names(gateway) -> None:
    marker = uuid.uuid4().hex[:12]
    chat = {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for slashes in range(1, 40):
            for route in ROUTE_TEMPLATES:
                http.post(route + "/" * slashes, json=chat)  # unauthenticated
        authed = {**gateway.headers, "x-custos-metadata": f'{{"k": "{marker}"}}'}
        for n in range(20):
            for route in ROUTE_TEMPLATES:
                body = {**chat, "model": f"{marker}-{n}", "max_tokens": 5, "input": "x"}
                assert http.post(route, json=body, headers=authed).status_code == 404
    text = metrics_text(gateway)
    assert marker not in text
    assert set(_ROUTE_LABEL.findall(text)) <= ROUTE_TEMPLATES


# -- bounds on heads and bodies -------------------------------------------------------------------

HEADER_LIMIT = 8192
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


def bounded_config(mock_url: str) -> str:
    def set_limits(config: dict[str, Any]) -> None:
        config["gateway"].update(
            max_header_bytes=HEADER_LIMIT,
            header_timeout_s=HEADER_TIMEOUT_S,
            body_timeout_s=BODY_TIMEOUT_S,
        )

    return config_with(mock_url, set_limits)


@pytest.fixture(scope="module")
def bounded(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(bounded_config(mock_provider.url), tmp_path_factory.mktemp("bounded"))


def connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, bool]:
    """What the gateway sent until it closed the connection (True) or ``within_s`` passed."""
    received = b""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def request_head(path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: gateway", "content-type: application/json", *headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_error_in_protocol(path: str, body: bytes, code: str) -> None:
    error = json.loads(body)
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["message"], error
    else:
        assert error["error"]["code"] == code, error


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/nowhere"])
def test_a_head_that_never_ends_is_431_and_closed(bounded, path) -> None:
    with connect(bounded) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: gateway\r\nx-pad: ".encode())
        sent = 0
        with contextlib.suppress(OSError):  # the gateway may close while we still send
            while sent < 64 * HEADER_LIMIT:
                sock.sendall(b"a" * 4096)
                sent += 4096
        raw, closed = read_until_closed(sock, 5)
    assert closed
    status, headers, body = parse_response(raw)
    assert status == 431 and headers["connection"] == "close"
    assert_error_in_protocol(path, body, "request_header_too_large")


def test_many_headers_past_the_limit_are_431(bounded) -> None:
    pads = [f"x-pad-{n}: {'b' * 64}" for n in range(HEADER_LIMIT // 64)]
    with connect(bounded) as sock:
        sock.sendall(request_head("/v1/chat/completions", *pads, length=2) + b"{}")
        raw, closed = read_until_closed(sock, 5)
    assert closed and parse_response(raw)[0] == 431


def test_a_head_within_the_limit_is_served(bounded) -> None:
    pad = "c" * (HEADER_LIMIT - 1024)
    body = json.dumps(
        {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "x"}]}
    )
    response = httpx.post(
        f"{bounded.base_url}/chat/completions",
        content=body,
        headers={**bounded.headers, "content-type": "application/json", "x-pad": pad},
    )
    assert response.status_code == 200, response.text


def answer_then_close(gateway: GatewayProcess, sent: bytes, deadline_s: float) -> bytes:
    """Send a request that stops short; what the gateway answers once ``deadline_s`` has
    passed, and closes the connection with (within a margin)."""
    with connect(gateway) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        raw, closed = read_until_closed(sock, deadline_s + 5)
        took = time.monotonic() - started
    assert closed and took < deadline_s + 3
    return raw


def assert_timed_out(raw: bytes, path: str) -> None:
    status, headers, body = parse_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert_error_in_protocol(path, body, "request_timeout")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_head_that_stalls_is_408_and_closed(bounded, path) -> None:
    stalled = f"POST {path} HTTP/1.1\r\nhost: gate".encode()
    assert_timed_out(answer_then_close(bounded, stalled, HEADER_TIMEOUT_S), path)


def test_a_head_sent_a_byte_at_a_time_still_times_out(bounded) -> None:
    head = request_head("/v1/chat/completions", f"authorization: Bearer {bounded.token}")
    with connect(bounded) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in head[:-4]:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > HEADER_TIMEOUT_S + 3:
                    break
        raw, closed = read_until_closed(sock, 3)
    assert closed and parse_response(raw)[0] == 408


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/admin/v1/users"])
def test_a_body_that_never_arrives_is_408_in_the_callers_protocol(bounded, path) -> None:
    auth = f"authorization: Bearer {bounded.token}"
    stalled = request_head(path, auth, length=1000) + b'{"model": '
    assert_timed_out(answer_then_close(bounded, stalled, BODY_TIMEOUT_S), path)


def test_a_body_trickling_after_the_answer_does_not_keep_the_connection(bounded) -> None:
    """Unauthenticated: answered 401 before the body is read; the rest never matters."""
    with connect(bounded) as sock:
        sock.sendall(request_head("/v1/chat/completions", length=100_000) + b"{")
        started = time.monotonic()
        received = b""
        closed = False
        while not closed and time.monotonic() - started < BODY_TIMEOUT_S + 5:
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            more, closed = read_until_closed(sock, 0.2)
            received += more
        took = time.monotonic() - started
    assert closed and took < BODY_TIMEOUT_S + 3
    assert parse_response(received)[0] == 401


def test_a_body_in_slow_pieces_within_the_deadline_is_served(bounded) -> None:
    body = json.dumps(
        {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "slow"}]}
    ).encode()
    auth = f"authorization: Bearer {bounded.token}"
    with connect(bounded) as sock:
        sock.sendall(request_head("/v1/chat/completions", auth, length=len(body)))
        for piece in (body[:10], body[10:20], body[20:]):
            time.sleep(BODY_TIMEOUT_S / 5)
            sock.sendall(piece)
        raw, _ = read_until_closed(sock, 2)
    status, _, reply = parse_response(raw)
    assert status == 200, raw
    assert json.loads(reply)["choices"][0]["message"]["content"]


# -- the memory test ------------------------------------------------------------------------------

FLOOD_REQUESTS = 10_000
#: What the flood may add, measured from after a warm-up of the same kinds of request. Before the
#: bounds, 4,000 odd paths added 17 MB to /metrics and three endless heads 190 MB of RSS.
RSS_GROWTH_BOUND = 40 * 1024 * 1024
METRICS_GROWTH_BOUND = 4 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def flood_request(n: int, token: str) -> bytes:
    """Request ``n`` of the flood: odd paths on every route, unauthenticated, and unknown model
    names and metadata values with a valid token; every one distinct."""
    kind = n % 5
    body = json.dumps(
        {
            "model": f"unknown-model-{n}",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 1,
            "input": "x",
        }
    ).encode()
    method = "POST"
    if kind == 0:
        path, auth = "/v1/chat/completions" + "/" * (1 + n // 5 % 400), ""
    elif kind == 1:
        path, auth = f"/v1/messages/{n}", ""
    elif kind == 2:
        method, path, auth = "GET", f"/admin/v1/users/u{n}", ""
    elif kind == 3:
        path, auth = f"/{uuid.uuid4().hex}?q={n}", ""
    else:
        route = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings")[n % 3]
        path = route + "/" * (n % 7)
        auth = f'authorization: Bearer {token}\r\nx-custos-metadata: {{"m": "v{n}"}}\r\n'
    return (
        f"{method} {path} HTTP/1.1\r\nhost: gateway\r\n{auth}content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_flood(port: int, requests: list[bytes], connections: int = 8) -> list[int]:
    """Send every request over a few keep-alive connections; the statuses, in any order."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    statuses: list[int] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                writer.write(queue.get_nowait())
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    int(line.split(":", 1)[1])
                    for line in lines
                    if line.lower().startswith("content-length:")
                )
                await reader.readexactly(length)
                statuses.append(int(lines[0].split(" ")[1]))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


class Misbehaving(threading.Thread):
    """A client that, until stopped, opens connections that each do one bad thing: a head sent a
    byte at a time, a head that never ends, or a declared body that never arrives."""

    def __init__(self, gateway: GatewayProcess, kind: str) -> None:
        super().__init__(daemon=True)
        self.gateway, self.kind = gateway, kind
        self.stopping = threading.Event()
        self.connections = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(OSError), connect(self.gateway) as sock:
                self.connections += 1
                self.misbehave(sock)

    def misbehave(self, sock: socket.socket) -> None:
        if self.kind == "endless_head":
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nx-pad: ")
            for _ in range(64 * 1024 * 1024 // 65536):
                sock.sendall(b"p" * 65536)
        elif self.kind == "slow_head":
            for byte in b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-slow: 1":
                sock.sendall(bytes([byte]))
                if self.stopping.wait(0.1):
                    return
        else:
            sock.sendall(request_head("/v1/chat/completions", length=1 << 20) + b"{")
        read_until_closed(sock, 10)


class HealthWatch(threading.Thread):
    """Asks /healthz every 50 ms and keeps every answer's status (0: none within 2 s)."""

    def __init__(self, gateway: GatewayProcess) -> None:
        super().__init__(daemon=True)
        self.url = f"{gateway.url}/healthz"
        self.stopping = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self.stopping.wait(0.05):
                try:
                    self.statuses.append(http.get(self.url).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)


def test_floods_and_misbehaving_connections_leave_memory_and_metrics_bounded(bounded) -> None:
    pid = bounded.process.pid
    warm_up = [flood_request(n, bounded.token) for n in range(-1000, 0)]
    assert set(asyncio.run(send_flood(bounded.port, warm_up))) == {401, 404}
    rss_before, metrics_before = rss_bytes(pid), len(metrics_text(bounded))

    health = HealthWatch(bounded)
    clients = [
        Misbehaving(bounded, kind)
        for kind in ("endless_head", "slow_head", "endless_body")
        for _ in range(3)
    ]
    for thread in (health, *clients):
        thread.start()
    flood = [flood_request(n, bounded.token) for n in range(FLOOD_REQUESTS)]
    statuses = asyncio.run(send_flood(bounded.port, flood))
    rss_peak = rss_bytes(pid)
    time.sleep(HEADER_TIMEOUT_S + BODY_TIMEOUT_S)  # the misbehaving connections keep coming
    for thread in (health, *clients):
        thread.stopping.set()
    for thread in (health, *clients):
        thread.join(15)

    assert len(statuses) == FLOOD_REQUESTS and set(statuses) == {401, 404}
    assert all(client.connections >= 2 for client in clients), "each was cut off and came back"
    assert health.statuses and set(health.statuses) == {200}, health.statuses
    rss_after = max(rss_peak, rss_bytes(pid))
    assert rss_after - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_after)
    metrics_after = metrics_text(bounded)
    assert len(metrics_after) - metrics_before < METRICS_GROWTH_BOUND
    assert "unknown-model" not in metrics_after and "v9999" not in metrics_after

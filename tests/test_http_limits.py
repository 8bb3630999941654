"""What an unauthenticated or misbehaving client can make the gateway hold: metric series, header
bytes, connections that never finish their head or body.

Label values must come from bounded sets (route templates, status codes, the config's names), so
odd paths and unknown model names leave ``/metrics`` as it was. The HTTP layer bounds a request
head's size (431) and the time its head and body may take (408), so a slow or endless client
costs a bounded amount of memory for a bounded time.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayProcess, MockProvider
from tests.sdk_helpers import config_with

ROUTE_TEMPLATES = {"/v1/chat/completions", "/v1/embeddings", "/v1/messages"}
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
    process = GatewayProcess(bounded_config(mock_provider.url), tmp_path_factory.mktemp("bounded"))
    yield process
    process.stop()


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


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_head_that_stalls_is_408_and_closed(bounded, path) -> None:
    with connect(bounded) as sock:
        started = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: gate".encode())
        raw, closed = read_until_closed(sock, HEADER_TIMEOUT_S + 5)
        took = time.monotonic() - started
    assert closed and took < HEADER_TIMEOUT_S + 3
    status, headers, body = parse_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert_error_in_protocol(path, body, "request_timeout")


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
    with connect(bounded) as sock:
        started = time.monotonic()
        sock.sendall(request_head(path, auth, length=1000) + b'{"model": ')
        raw, closed = read_until_closed(sock, BODY_TIMEOUT_S + 5)
        took = time.monotonic() - started
    assert closed and took < BODY_TIMEOUT_S + 3
    status, headers, body = parse_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert_error_in_protocol(path, body, "request_timeout")


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

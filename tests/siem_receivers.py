"""Local SIEM receivers for the sink tests: a syslog listener (TCP or TLS, RFC 6587 octet
counting) and a Splunk HEC endpoint (aiohttp), each on a fixed loopback port so that it can be
stopped (an outage: connections refused) and started again where the gateway expects it."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def split_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet-counted frames (``LEN SP MSG``) back into messages; refuses anything
    else (a trailing partial frame included)."""
    messages, pos = [], 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space].decode("ascii"))
        start = space + 1
        if start + length > len(data):
            raise ValueError("a partial frame")
        messages.append(data[start : start + length])
        pos = start + length
    return messages


class SyslogReceiver:
    """Accepts connections, reads each to its end, keeps the messages, closes (over TLS:
    answers close_notify). ``stop`` closes the listener; ``start`` opens it again."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.messages: list[bytes] = []
        self.connections = 0
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(*tls)
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self._context is None:
                self._keep(_read_all(conn))
            else:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    self._keep(_read_all(tls))
                    tls.unwrap()  # answer the sender's close_notify: the batch is received
        except (OSError, ssl.SSLError):
            return  # a broken connection: the sender sees no acknowledgement and sends again
        finally:
            conn.close()

    def _keep(self, data: bytes) -> None:
        # Kept before the connection is closed: the sender sends the next batch only then.
        with self._lock:
            self.connections += 1
            self.messages.extend(split_frames(data))


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


class HECReceiver:
    """``POST /services/collector/event`` on aiohttp, in a thread of its own. Checks the token,
    keeps every event; ``busy`` makes it answer 503 (as a collector whose queue is full)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.refused = 0
        self.busy = False
        #: (body bytes, events) of each request taken.
        self.batches: list[tuple[int, int]] = []
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _collect(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Splunk {self.token}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        if self.busy:
            self.refused += 1
            return web.json_response({"text": "Server is busy", "code": 9}, status=503)
        text = await request.text()
        decoder, pos, batch = json.JSONDecoder(), 0, []
        while pos < len(text):
            event, pos = decoder.raw_decode(text, pos)
            batch.append(event)
        self.events.extend(batch)
        self.batches.append((len(text.encode()), len(batch)))
        return web.json_response({"text": "Success", "code": 0})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/collector/event", self._collect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)

"""Serving the mock: ``run`` (foreground, for the CLI) and ``serve_in_background`` (for tests).

Both use the same uvicorn settings; this module is the only place that picks the server.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from .app import MockProvider, create_app

_UVICORN = {"loop": "uvloop", "http": "httptools", "log_level": "warning", "access_log": False}


def run(host: str = "127.0.0.1", port: int = 9999, api_key: str = "mock-key") -> None:
    """Serve the mock provider in the foreground until interrupted."""
    uvicorn.run(create_app(api_key), host=host, port=port, **_UVICORN)  # type: ignore[arg-type]


@dataclass
class BackgroundMock:
    """A mock provider served from a daemon thread; ``stop()`` shuts it down."""

    app: MockProvider
    host: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Root URL: Anthropic's ``base_url`` and Azure's ``azure_endpoint``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


def serve_in_background(
    host: str = "127.0.0.1", port: int = 0, api_key: str = "mock-key", timeout: float = 10.0
) -> BackgroundMock:
    """Start the mock on ``host:port`` (0 = a free port) in a thread; returns once it listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    app = create_app(api_key)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **_UVICORN))  # type: ignore[arg-type]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="mock-provider", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("mock provider did not start")
        time.sleep(0.01)
    return BackgroundMock(app, host, sock.getsockname()[1], server, thread)

"""uvicorn's httptools protocol with bounds on what a client can make a connection hold.

uvicorn has no setting for these with httptools: a request head may grow without limit (the
parser keeps a partial header value in memory until it ends), and a head or a declared body that
never finishes keeps its connection open for as long as the client sends a byte now and then. The
subclass adds three bounds, from the config's ``gateway`` section:

- ``max_header_bytes``: bytes received while a request head is incomplete. Over it, 431.
- ``header_timeout_s``: from a head's first bytes to its end. Past it, 408.
- ``body_timeout_s``: from the end of the head to the end of the body. The application's own
  read of the body has the same deadline (``custos.http.requests.read_body``) and answers 408 in
  the caller's protocol; here, past it, a connection whose answer has gone out stops waiting for
  the rest of the body and closes, so a trickle after the answer cannot keep it open.

Each refusal closes the connection: what is left of the request cannot be framed any more.
Timers are armed only while a head or body is incomplete after a read, so a request that arrives
in one read, the common case, arms none. A connection idle before its first request is closed
after the keep-alive time, as uvicorn closes one idle between requests.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from custos.errors import GatewayError, error_body
from custos.telemetry import metrics


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        #: The size of the read being parsed.
        self._reading = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_expired = False
        #: The current request was refused at its head: its body is dropped, the app not run.
        self._refused = False

    # -- connection events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response; arm it for the first request
        # too, so a connection that never sends a byte is closed like an idle one.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._reading = len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head:
            # Counted per read: a read that also ends the previous request counts whole, which
            # can only overstate the head by that request's tail.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse("header_too_large")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout_s, self._head_timed_out
                )
        elif self._in_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._refused = True, 0, False

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        limit = self.limits.max_header_bytes
        # What was read for this head bounds its size: only a head that may be over is measured.
        if self._head_bytes + self._reading > limit and _head_size(self.url, self.headers) > limit:
            # Its last read took it over the limit: the request never reaches the app.
            self._refused = True
            self._refuse("header_too_large")
            return
        self._in_body, self._body_expired = True, False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._stop_body_timer()
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body and self._body_expired and not self.transport.is_closing():
            self.transport.close()

    # -- the bounds --------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse("header_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        metrics.child(metrics.HTTP_REFUSED, "body_timeout").inc()
        if self.cycle is not None and self.cycle.response_complete:
            self.transport.close()  # answered already: stop waiting for the rest of the body
        else:
            # The application is answering; its read of the body has the same deadline.
            self._body_expired = True

    def _refuse(self, reason: str) -> None:
        """Answer 431 or 408 and close, or, while an earlier response on this connection is
        still going out (a pipelined head), close once it has."""
        metrics.child(metrics.HTTP_REFUSED, reason).inc()
        self._stop_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(_refusal(reason, self.url))
        self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The bytes of a parsed head: request line and header lines (method and version are at
    most a few bytes; 16 covers them)."""
    return 16 + len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with these limits."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


_REFUSALS = {
    "header_too_large": GatewayError(
        431,
        "request_header_too_large",
        "The request line and headers are larger than this gateway accepts.",
    ),
    "header_timeout": GatewayError(
        408, "request_timeout", "The request headers did not arrive in time."
    ),
}


def _refusal(reason: str, url: bytes) -> bytes:
    """The whole response, in the protocol of the route the request line names (when it got
    that far): Anthropic's error shape on /v1/messages, OpenAI's elsewhere."""
    err = _REFUSALS[reason]
    protocol = "anthropic" if url.startswith(b"/v1/messages") else "openai"
    body = error_body(protocol, err)
    phrase = http.HTTPStatus(err.status).phrase
    head = (
        f"HTTP/1.1 {err.status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body

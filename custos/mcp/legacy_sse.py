"""The older MCP transport, HTTP+SSE (specification 2024-11-05), for servers that speak only it.

The client opens one ``GET`` event stream; its first event, ``endpoint``, names the URL to POST
messages to (it must be on the server's own origin: another is refused). Every POST is
answered ``202``; answers and the server's notifications all come on the one stream. So one
reader task per upstream session reads the stream and hands each response to the request
waiting for its id, and each progress notification to the request that sent its progress token;
other notifications are dropped. When the stream ends or breaks, every waiting request fails
(``broken``) and the session is opened again by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import orjson

from custos.config.mcp import McpServerSettings
from custos.providers.sse import SSEDecoder
from custos.providers.transport import (
    Transport,
    UpstreamRequestFailed,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from custos.providers.upstream import UpstreamRequest

log = logging.getLogger("custos.mcp")

PROTOCOL_VERSION: Final = "2024-11-05"
#: A message that ends a request's wait: the stream broke, or the request was closed.
_BROKEN: Final = {"__broken__": True}
_IDS = itertools.count(1_000_000_000)


class LegacyFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class LegacySession:
    settings: McpServerSettings
    credential: str | None
    stream: UpstreamResponse | None = None
    endpoint: str | None = None
    reader: asyncio.Task[None] | None = None
    ready: bool = False
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Request id → where its messages go; progress token → the same queue.
    waiting: dict[Any, asyncio.Queue[dict[str, Any]]] = field(default_factory=dict)
    progress: dict[Any, asyncio.Queue[dict[str, Any]]] = field(default_factory=dict)

    def close(self) -> None:
        self.closed = True
        if self.reader is not None:
            self.reader.cancel()
        if self.stream is not None:
            self.stream.close()
        for queue in {*self.waiting.values(), *self.progress.values()}:
            queue.put_nowait(_BROKEN)
        self.waiting.clear()
        self.progress.clear()


class LegacySseClient:
    def __init__(self, transport: Transport, client_version: str) -> None:
        self.transport = transport
        self.client_version = client_version

    async def open(self, session: LegacySession) -> None:
        """Open the stream, learn the endpoint, initialize (under the session's lock)."""
        settings = session.settings
        headers = {"accept": "text/event-stream", **self._auth(session)}
        request = UpstreamRequest("GET", settings.url, headers, b"")
        try:
            stream = await self.transport.open(request, connect_s=settings.timeouts.connect_s,
                                               read_s=settings.timeouts.call_s + 60,
                                               total_s=None)  # fmt: skip
        except UpstreamTimeout:
            raise LegacyFailed("timeout") from None
        except (UpstreamUnreachable, UpstreamRequestFailed):
            raise LegacyFailed("unreachable") from None
        if stream.status != 200:
            stream.close()
            raise LegacyFailed(f"status_{stream.status}")
        session.stream = stream
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        session.reader = asyncio.create_task(self._read(session, found), name="custos-mcp-sse")
        try:
            async with asyncio.timeout(settings.timeouts.connect_s + 5):
                endpoint = await found
        except TimeoutError:
            session.close()
            raise LegacyFailed("timeout") from None
        except LegacyFailed:
            session.close()
            raise
        session.endpoint = endpoint
        upstream_id = next(_IDS)
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                  "clientInfo": {"name": "custos", "version": self.client_version}}  # fmt: skip
        answers = await self.request(session, upstream_id, "initialize", params)
        async for message in answers:
            if not isinstance(message.get("result"), dict):
                raise LegacyFailed("malformed")
        await self.post(session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        session.ready = True

    async def request(
        self, session: LegacySession, upstream_id: int, method: str, params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a request; the messages for it (progress, then the response) as they come."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        session.waiting[upstream_id] = queue
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None:
            session.progress[token] = queue
        try:
            await self.post(session, {"jsonrpc": "2.0", "id": upstream_id, "method": method,
                                      "params": params})  # fmt: skip
        except BaseException:
            self._forget(session, upstream_id, token)
            raise
        return self._answers(session, queue, upstream_id, token)

    async def _answers(
        self,
        session: LegacySession,
        queue: asyncio.Queue[dict[str, Any]],
        upstream_id: int,
        token: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                message = await queue.get()
                if message is _BROKEN:
                    raise LegacyFailed("broken")
                yield message
                if message.get("id") == upstream_id and "method" not in message:
                    return
        finally:
            self._forget(session, upstream_id, token)

    @staticmethod
    def stop(session: LegacySession, upstream_id: int) -> None:
        """Stop waiting for a request (it was cancelled)."""
        queue = session.waiting.get(upstream_id)
        if queue is not None:
            queue.put_nowait(_BROKEN)

    @staticmethod
    def _forget(session: LegacySession, upstream_id: int, token: Any) -> None:
        session.waiting.pop(upstream_id, None)
        if token is not None:
            session.progress.pop(token, None)

    async def post(self, session: LegacySession, message: dict[str, Any]) -> None:
        assert session.endpoint is not None
        settings = session.settings
        headers = {"content-type": "application/json", **self._auth(session)}
        request = UpstreamRequest("POST", session.endpoint, headers, orjson.dumps(message))
        try:
            response = await self.transport.open(request, connect_s=settings.timeouts.connect_s,
                                                 read_s=settings.timeouts.connect_s + 25,
                                                 total_s=None)  # fmt: skip
        except UpstreamTimeout:
            raise LegacyFailed("timeout") from None
        except (UpstreamUnreachable, UpstreamRequestFailed):
            raise LegacyFailed("unreachable") from None
        status = response.status
        with contextlib.suppress(UpstreamTimeout, UpstreamUnreachable):
            await response.read_prefix(4096)
        response.close()
        if status >= 400:
            if status == 404:  # the server forgot the session: open another next time
                session.close()
            raise LegacyFailed(f"status_{status}")

    async def _read(self, session: LegacySession, found: asyncio.Future[str]) -> None:
        assert session.stream is not None
        decoder = SSEDecoder()
        try:
            async for chunk in session.stream.chunks():
                for event in decoder.feed(chunk):
                    if event.event == "endpoint":
                        if not found.done():
                            found.set_result(self._endpoint(session, event.data))
                    elif event.event in (None, "message") and event.data.strip():
                        self._dispatch(session, event.data)
        except (UpstreamTimeout, UpstreamUnreachable, ValueError) as exc:
            log.info("mcp: the event stream of %s broke (%s)", session.settings.url, exc)
        except LegacyFailed as exc:
            if not found.done():
                found.set_exception(exc)
        finally:
            if not found.done():
                found.set_exception(LegacyFailed("broken"))
            session.reader = None
            session.close()

    def _endpoint(self, session: LegacySession, data: bytes) -> str:
        url = session.settings.url
        endpoint = urljoin(url, data.decode("utf-8", "replace").strip())
        ours, theirs = urlsplit(url), urlsplit(endpoint)
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            raise LegacyFailed("malformed")  # a POST endpoint on another origin is refused
        return endpoint

    @staticmethod
    def _dispatch(session: LegacySession, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        if "method" not in message:
            queue = session.waiting.get(message.get("id"))
        elif message.get("method") == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            queue = session.progress.get(token)
        else:
            queue = None  # other notifications, and requests to the client, are not relayed
        if queue is not None:
            queue.put_nowait(message)

    @staticmethod
    def _auth(session: LegacySession) -> dict[str, str]:
        settings = session.settings
        token = settings.auth.token if settings.auth.type == "bearer" else session.credential
        if not token:
            return {}
        name, value = settings.auth.header_for(token)
        return {name: value}

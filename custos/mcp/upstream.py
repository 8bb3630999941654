"""The gateway as the client of the tool servers: MCP Streamable HTTP by hand.

The official SDK's client is a session object that owns an anyio task group and answers each
request inside it; a proxy instead relays single messages, keeping their ids, forwarding
progress as it arrives and cancelling by id. So this speaks the transport directly
(MCP specification 2025-06-18, "Transports"), over the gateway's pooled HTTP client
(``custos.providers.transport``):

- a request is a POST of one JSON-RPC message with ``Accept: application/json,
  text/event-stream``; the answer is either one JSON message or an event stream carrying
  notifications (progress) and, last, the response;
- a session is opened with ``initialize`` (its ``Mcp-Session-Id`` answer header is sent back
  with every later message, with ``MCP-Protocol-Version``) and ``notifications/initialized``;
  one is kept per (client session, server, credential) in this process, opened on first use,
  and opened again when the server answers 404 (its session ended);
- requests the server sends the client inside a call (sampling, elicitation) are answered with
  a JSON-RPC error: the gateway does not relay them.

A server with ``transport: sse`` (the older HTTP+SSE transport) is spoken to by
``custos.mcp.legacy_sse`` instead, behind the same ``send`` and ``notify``.

Request ids towards a server are the gateway's own (a counter), so that calls of several
clients never collide on one server session; ``Exchange.upstream_id`` is the id to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from custos.config.mcp import McpServerSettings
from custos.mcp.legacy_sse import LegacyFailed, LegacySession, LegacySseClient
from custos.providers.sse import SSEDecoder
from custos.providers.transport import (
    Transport,
    UpstreamRequestFailed,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from custos.providers.upstream import UpstreamRequest

log = logging.getLogger("custos.mcp")

#: The protocol version the gateway asks tool servers for.
PROTOCOL_VERSION: Final = "2025-06-18"
#: Upstream sessions kept per process (the least recently used is dropped beyond).
MAX_SESSIONS: Final = 10_000
_ERROR_BODY_BYTES: Final = 4096
_IDS = itertools.count(1)


def auth_headers(settings: McpServerSettings, credential: str | None) -> dict[str, str]:
    """The header that authenticates the gateway to the server: the configured bearer token,
    or the call's credential (the caller's JWT, or their own per-user credential)."""
    token = settings.auth.token if settings.auth.type == "bearer" else credential
    if not token:
        return {}
    name, value = settings.auth.header_for(token)
    return {name: value}


class McpUpstreamError(Exception):
    """The tool server could not be used: ``reason`` is ``unreachable``, ``timeout``,
    ``status_NNN``, ``malformed``, ``too_large`` or ``broken`` (the stream ended early)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Session:
    settings: McpServerSettings
    credential: str | None = field(default=None, repr=False)
    id: str | None = None
    protocol_version: str = PROTOCOL_VERSION
    ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class Exchange:
    """A request's answer: one message, or ``messages`` (notifications, then the response)."""

    upstream_id: int
    message: dict[str, Any] | None = None
    messages: AsyncIterator[dict[str, Any]] | None = None
    close: Callable[[], None] = lambda: None


SessionKey = tuple[str, str, str]


class McpUpstream:
    def __init__(self, transport: Transport, client_version: str = "0") -> None:
        self.transport = transport
        self.client_version = client_version
        self._sessions: OrderedDict[SessionKey, _Session] = OrderedDict()
        self.legacy = LegacySseClient(transport, client_version)
        self._legacy: OrderedDict[SessionKey, LegacySession] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def key(
        client_session: str, server: str, settings: McpServerSettings, credential: str | None
    ) -> SessionKey:
        """One upstream session per client session, server (as configured: a reload that moves
        it opens another) and credential."""
        held = hashlib.sha256(credential.encode()).hexdigest() if credential else ""
        return (client_session, f"{server}|{settings.transport}|{settings.url}", held)

    def forget(self, client_session: str) -> None:
        """Drop this process's upstream sessions of a client session (``DELETE``); the
        servers are told (their own ``DELETE``), in the background."""
        for key in [k for k in self._sessions if k[0] == client_session]:
            self._terminate(self._sessions.pop(key))
        for key in [k for k in self._legacy if k[0] == client_session]:
            self._legacy.pop(key).close()

    # -- requests ----------------------------------------------------------------------------

    async def send(
        self,
        server: str,
        settings: McpServerSettings,
        client_session: str,
        method: str,
        params: dict[str, Any],
        credential: str | None,
        upstream_id: int | None = None,
    ) -> Exchange:
        """Send one request (under ``upstream_id`` when given: ``next_id()``, drawn before so
        that a call can be cancelled while it is being sent); raises ``McpUpstreamError``."""
        key = self.key(client_session, server, settings, credential)
        if upstream_id is None:
            upstream_id = next_id()
        if settings.transport == "sse":
            return await self._send_legacy(key, settings, method, params, credential, upstream_id)
        for attempt in (0, 1):
            session = await self._session(key, settings, credential)
            if attempt:
                upstream_id = next_id()
            message = {"jsonrpc": "2.0", "id": upstream_id, "method": method, "params": params}
            response = await self._post(settings, session, message, credential)
            if response.status == 404 and session.id is not None and attempt == 0:
                response.close()  # the server ended our session: open another, once
                self._sessions.pop(key, None)
                continue
            return await self._answer(settings, session, response, upstream_id, credential)
        raise McpUpstreamError("status_404")  # not reached: the second attempt returns

    async def notify(
        self,
        server: str,
        settings: McpServerSettings,
        client_session: str,
        method: str,
        params: dict[str, Any],
        credential: str | None,
    ) -> None:
        """Send a notification on an open session (nothing when there is none)."""
        key = self.key(client_session, server, settings, credential)
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if settings.transport == "sse":
            legacy = self._legacy.get(key)
            if legacy is not None and legacy.ready and not legacy.closed:
                try:
                    await self.legacy.post(legacy, message)
                except LegacyFailed as exc:
                    log.info("mcp: notification %s to %s not delivered (%s)", method, server,
                             exc.reason)  # fmt: skip
            return
        session = self._sessions.get(key)
        if session is None or not session.ready:
            return
        try:
            response = await self._post(settings, session, message, credential)
            response.close()
        except McpUpstreamError as exc:
            log.info("mcp: notification %s to %s not delivered (%s)", method, server, exc.reason)

    # -- the legacy transport ------------------------------------------------------------------

    async def _send_legacy(
        self,
        key: SessionKey,
        settings: McpServerSettings,
        method: str,
        params: dict[str, Any],
        credential: str | None,
        upstream_id: int,
    ) -> Exchange:
        session = await self._legacy_session(key, settings, credential)
        try:
            answers = await self.legacy.request(session, upstream_id, method, params)
        except LegacyFailed as exc:
            raise McpUpstreamError(exc.reason) from None

        def stop() -> None:
            LegacySseClient.stop(session, upstream_id)

        return Exchange(upstream_id, messages=_legacy_messages(answers), close=stop)

    async def _legacy_session(
        self, key: SessionKey, settings: McpServerSettings, credential: str | None
    ) -> LegacySession:
        session = self._legacy.get(key)
        if session is None or session.closed:
            session = self._legacy[key] = LegacySession(settings, credential)
            while len(self._legacy) > MAX_SESSIONS:
                self._legacy.popitem(last=False)[1].close()
        else:
            self._legacy.move_to_end(key)
        if session.ready:
            return session
        async with session.lock:
            if not session.ready:
                try:
                    await self.legacy.open(session)
                except LegacyFailed as exc:
                    session.close()
                    self._legacy.pop(key, None)
                    raise McpUpstreamError(exc.reason) from None
        return session

    def close(self) -> None:
        """Close the legacy sessions' streams (the gateway stops)."""
        for session in self._legacy.values():
            session.close()
        self._legacy.clear()

    # -- sessions ----------------------------------------------------------------------------

    async def _session(
        self, key: SessionKey, settings: McpServerSettings, credential: str | None
    ) -> _Session:
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(settings, credential)
            while len(self._sessions) > MAX_SESSIONS:
                self._terminate(self._sessions.popitem(last=False)[1])
        else:
            self._sessions.move_to_end(key)
        if session.ready:
            return session
        async with session.lock:
            if not session.ready:
                try:
                    await self._initialize(settings, session, credential)
                except BaseException:
                    self._sessions.pop(key, None)
                    raise
        return session

    async def _initialize(
        self, settings: McpServerSettings, session: _Session, credential: str | None
    ) -> None:
        upstream_id = next(_IDS)
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                  "clientInfo": {"name": "custos", "version": self.client_version}}  # fmt: skip
        message = {"jsonrpc": "2.0", "id": upstream_id, "method": "initialize", "params": params}
        response = await self._post(settings, session, message, credential)
        session.id = response.headers.get("mcp-session-id")
        exchange = await self._answer(settings, session, response, upstream_id, credential)
        answer = await final(exchange)
        result = answer.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            raise McpUpstreamError("malformed")
        session.protocol_version = result["protocolVersion"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        (await self._post(settings, session, note, credential)).close()
        session.ready = True

    def _terminate(self, session: _Session) -> None:
        """End a server's session we no longer use, so the server can free it."""
        if session.id is None or not session.ready:
            return
        task = asyncio.ensure_future(self._delete(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, session: _Session) -> None:
        settings = session.settings
        headers = {"mcp-session-id": session.id or "",
                   "mcp-protocol-version": session.protocol_version}  # fmt: skip
        headers.update(auth_headers(settings, session.credential))
        request = UpstreamRequest("DELETE", settings.url, headers, b"")
        wait = settings.timeouts.connect_s
        # A server that does not answer forgets the session in its own time.
        with contextlib.suppress(UpstreamTimeout, UpstreamUnreachable, UpstreamRequestFailed):
            response = await self.transport.open(
                request, connect_s=wait, read_s=wait, total_s=wait * 2
            )
            response.close()

    # -- HTTP --------------------------------------------------------------------------------

    async def _post(
        self,
        settings: McpServerSettings,
        session: _Session,
        message: dict[str, Any],
        credential: str | None,
    ) -> UpstreamResponse:
        headers = {"content-type": "application/json",
                   "accept": "application/json, text/event-stream"}  # fmt: skip
        if session.id is not None:
            headers["mcp-session-id"] = session.id
        if session.ready:
            headers["mcp-protocol-version"] = session.protocol_version
        headers.update(auth_headers(settings, credential))
        request = UpstreamRequest("POST", settings.url, headers, orjson.dumps(message))
        timeouts = settings.timeouts
        try:
            return await self.transport.open(
                request, connect_s=timeouts.connect_s, read_s=timeouts.call_s, total_s=None
            )
        except UpstreamTimeout:
            raise McpUpstreamError("timeout") from None
        except (UpstreamUnreachable, UpstreamRequestFailed):
            raise McpUpstreamError("unreachable") from None

    async def _answer(
        self,
        settings: McpServerSettings,
        session: _Session,
        response: UpstreamResponse,
        upstream_id: int,
        credential: str | None,
    ) -> Exchange:
        if response.status >= 400:
            await _drain(response)
            raise McpUpstreamError(f"status_{response.status}")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                body = await response.read(settings.max_response_bytes)
            except UpstreamTooLarge:
                raise McpUpstreamError("too_large") from None
            except (UpstreamTimeout, UpstreamUnreachable):
                raise McpUpstreamError("broken") from None
            message = _parse(body)
            if message.get("id") != upstream_id:
                raise McpUpstreamError("malformed")
            return Exchange(upstream_id, message=message)
        if kind == "text/event-stream":
            events = self._events(settings, session, response, upstream_id, credential)
            return Exchange(upstream_id, messages=events, close=response.close)
        response.close()
        raise McpUpstreamError("malformed")

    async def _events(
        self,
        settings: McpServerSettings,
        session: _Session,
        response: UpstreamResponse,
        upstream_id: int,
        credential: str | None,
    ) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        try:
            async for chunk in response.chunks():
                for event in decoder.feed(chunk):
                    if not event.data.strip() or event.event not in (None, "message"):
                        continue
                    message = _parse(event.data)
                    if "method" in message and "id" in message:  # the server asks the client
                        refusal = {"jsonrpc": "2.0", "id": message["id"], "error": {
                            "code": -32601, "message": "not relayed by the gateway"}}  # fmt: skip
                        (await self._post(settings, session, refusal, credential)).close()
                        continue
                    yield message
                    if message.get("id") == upstream_id and "method" not in message:
                        response.release()
                        return
        except (UpstreamTimeout, TimeoutError):
            raise McpUpstreamError("timeout") from None
        except UpstreamUnreachable:
            raise McpUpstreamError("broken") from None
        except ValueError:  # an event past the decoder's bound
            raise McpUpstreamError("too_large") from None
        finally:
            response.close()
        raise McpUpstreamError("broken")


def next_id() -> int:
    """A request id of the gateway's own towards tool servers."""
    return next(_IDS)


async def _legacy_messages(
    answers: AsyncIterator[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for message in answers:
            yield message
    except LegacyFailed as exc:
        raise McpUpstreamError(exc.reason) from None


async def final(exchange: Exchange) -> dict[str, Any]:
    """The response of an exchange (notifications before it dropped)."""
    if exchange.message is not None:
        return exchange.message
    assert exchange.messages is not None
    async for message in exchange.messages:
        if message.get("id") == exchange.upstream_id and "method" not in message:
            return message
    raise McpUpstreamError("broken")


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise McpUpstreamError("malformed") from None
    if not isinstance(message, dict):
        raise McpUpstreamError("malformed")
    return message


async def _drain(response: UpstreamResponse) -> None:
    with contextlib.suppress(UpstreamTimeout, UpstreamUnreachable):
        await response.read_prefix(_ERROR_BODY_BYTES)
    response.close()

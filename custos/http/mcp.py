"""``/mcp/{name}``: the MCP Streamable HTTP endpoint of a tool server or a virtual server.

What a client sends (MCP specification 2025-06-18, "Transports"; 2024-11-05, 2025-03-26 and
2025-11-25 are accepted too):

- ``POST`` one JSON-RPC message. ``initialize`` opens a session: the answer carries
  ``Mcp-Session-Id`` (signed by the gateway: ``custos.mcp.sessions``), which every later message
  must send (400 without it; 404 when it is not one of ours, has expired, belongs to another
  endpoint or to another caller: the client then opens a new one). ``tools/list`` answers the
  tools the caller may call; ``tools/call`` runs the governance chain of a tool call
  (``Gateway.mcp_chain``), answered as the tool server answered (JSON, or an event stream with
  its progress notifications); ``ping`` answers ``{}``; notifications and responses are
  accepted with 202 (``notifications/cancelled`` cancels the call it names); other methods are
  ``-32601``.
- ``DELETE`` ends a session on this replica (its upstream sessions are closed): 204.
- ``GET`` (a stream for messages the server starts) is not offered: 405.

Every message is authenticated as on the model routes (``Authorization: Bearer`` with a
gateway token or an IdP JWT): 401 with a JSON-RPC error otherwise. Refusals of a request are
JSON-RPC errors (HTTP 200) naming the rule, guardrail or policy (``custos.mcp.jsonrpc``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from custos import __version__
from custos.context import RequestContext
from custos.errors import GatewayError
from custos.gateway import Gateway
from custos.http.requests import (
    ClientGone,
    bearer,
    check_content_type,
    parse_json_object,
    with_credential,
)
from custos.http.requests import read_body as read_request_body
from custos.identity.principal import AuthFailure, Principal
from custos.mcp import jsonrpc
from custos.mcp.call import ToolCall
from custos.mcp.catalog import McpEndpoint
from custos.mcp.sessions import McpSession
from custos.policy.metadata import HEADER_NAMES
from custos.stage import GatewayResponse
from custos.telemetry import metrics

log = logging.getLogger("custos.http.mcp")

PREFIX: Final = "/mcp/"
ROUTE: Final = "/mcp/{name}"
SUPPORTED_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION: Final = "2025-11-25"
#: The longest tool name taken (MCP names tools in 1 to 128 characters; a virtual server's
#: ``server__tool`` adds a server's id).
MAX_TOOL_NAME: Final = 256

_SESSION_ERRORS: Final = frozenset({"missing_session", "unknown_session"})

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Relay = Callable[[Send, Receive, GatewayResponse], Awaitable[None]]


class _Head:
    """The headers an MCP request is read by, in one pass."""

    __slots__ = ("content_length", "content_type", "metadata", "protocol", "session", "token")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.token: str | AuthFailure | None = None
        self.metadata: tuple[tuple[bytes, bytes], ...] = ()
        self.session: str | None = None
        self.protocol: str | None = None
        self.content_type: bytes | None = None
        self.content_length: int | None = None
        for name, value in headers:
            if name == b"authorization":
                credential = bearer(value)
                if credential is not None:
                    self.token = with_credential(self.token, credential)
            elif name == b"mcp-session-id":
                self.session = value.decode("latin-1")
            elif name == b"mcp-protocol-version":
                self.protocol = value.decode("latin-1")
            elif name in HEADER_NAMES:
                self.metadata += ((name, value),)
            elif name == b"content-type":
                self.content_type = value
            elif name == b"content-length" and value.isdigit():
                self.content_length = int(value)


class McpRoutes:
    def __init__(
        self,
        gateway: Gateway,
        *,
        new_id: Callable[[], str],
        relay: Relay,
        auth_failed: Callable[[dict[str, Any], GatewayError, str], None],
        body_timeout_s: float,
    ) -> None:
        self.gateway = gateway
        self.new_id = new_id
        self.relay = relay
        self.auth_failed = auth_failed
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        request_id = self.new_id()
        status = await self._serve(scope, receive, send, request_id)
        metrics.child(metrics.REQUESTS, ROUTE, str(status)).inc()

    async def _serve(
        self, scope: dict[str, Any], receive: Receive, send: Send, request_id: str
    ) -> int:
        method = scope["method"]
        name = scope["path"][len(PREFIX) :].rstrip("/")
        runtime = self.gateway.runtime
        head = _Head(scope["headers"])
        endpoint = self.gateway.mcp.catalog(runtime).endpoints.get(name)
        try:
            if method == "GET":
                err = GatewayError(405, "method_not_allowed", "This endpoint offers no stream "
                                   "of its own: POST messages to it.")  # fmt: skip
                err.headers["allow"] = "POST, DELETE"
                raise err
            if method not in ("POST", "DELETE"):
                err = GatewayError(405, "method_not_allowed", "MCP endpoints take POST and DELETE.")
                err.headers["allow"] = "POST, DELETE"
                raise err
            try:
                principal = await self.gateway.authenticate.principal_for(head.token, runtime.jwt)
            except GatewayError as err:
                if err.status == 401:
                    self.auth_failed(scope, err, request_id)
                    err.headers["www-authenticate"] = "Bearer"
                raise
            # After authentication: an unauthenticated caller learns nothing of the servers.
            if endpoint is None:
                raise GatewayError(404, "unknown_route", f"No MCP server '{name[:64]}' here.")
            if head.protocol is not None and head.protocol not in SUPPORTED_VERSIONS:
                raise GatewayError(
                    400,
                    "unsupported_protocol_version",
                    f"MCP protocol version {head.protocol[:32]!r} is not supported; use one of "
                    f"{', '.join(SUPPORTED_VERSIONS)}.",
                )
            if method == "DELETE":
                session = self._session(head, endpoint, principal)
                self.gateway.mcp.upstream.forget(session.nonce)
                await _send(send, 204, [], b"", request_id)
                return 204
            check_content_type(head.content_type)
            limit = runtime.config.gateway.max_body_bytes
            raw = await read_request_body(receive, head.content_length, limit, self.body_timeout_s)
            message = jsonrpc.check_message(_json(raw))
        except ClientGone:
            return 499
        except GatewayError as err:
            await _send_error(send, err, None, request_id, status=err.status)
            return err.status
        return await self._message(scope, receive, send, request_id, head, endpoint, principal,
                                   message, raw)  # fmt: skip

    async def _message(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        request_id: str,
        head: _Head,
        endpoint: McpEndpoint,
        principal: Principal,
        message: dict[str, Any],
        raw: bytes,
    ) -> int:
        method = message.get("method")
        message_id = message.get("id")
        try:
            if method == "initialize" and jsonrpc.is_request(message):
                return await self._initialize(send, request_id, endpoint, principal, message)
            session = self._session(head, endpoint, principal)
            if not jsonrpc.is_request(message):  # a notification, or a response to us
                if method == "notifications/cancelled":
                    self._cancelled(session, message)
                await _send(send, 202, [], b"", request_id)
                return 202
            if method == "ping":
                await _send_json(send, jsonrpc.result(message_id, {}), request_id, session)
                return 200
            if method == "tools/list":
                return await self._tools_list(send, request_id, endpoint, session, principal, head,
                                              message_id)  # fmt: skip
            if method == "tools/call":
                return await self._tools_call(scope, receive, send, request_id, endpoint, session,
                                              head, message, raw)  # fmt: skip
            raise GatewayError(
                400, "method_not_found", f"The method {method!r} is not offered by the gateway."
            )
        except GatewayError as err:
            # A session refusal is the transport's (400, 404: the client opens a new session);
            # a request's refusal is its JSON-RPC error, with HTTP 200.
            transport = err.code in _SESSION_ERRORS or message_id is None
            status = err.status if transport else 200
            await _send_error(send, err, message_id, request_id, status=status)
            return status

    def _session(self, head: _Head, endpoint: McpEndpoint, principal: Principal) -> McpSession:
        codec = self.gateway.mcp.codec
        if head.session is None:
            raise GatewayError(400, "missing_session", "Send the Mcp-Session-Id that initialize "
                               "answered with.")  # fmt: skip
        session = codec.open(head.session) if codec is not None else None
        if (session is None or session.endpoint != endpoint.name
                or session.token_id != principal.token_id):  # fmt: skip
            raise GatewayError(404, "unknown_session", "This session is unknown or has expired: "
                               "initialize a new one.")  # fmt: skip
        return session

    async def _initialize(
        self,
        send: Send,
        request_id: str,
        endpoint: McpEndpoint,
        principal: Principal,
        message: dict[str, Any],
    ) -> int:
        codec = self.gateway.mcp.codec
        if codec is None:
            raise GatewayError(503, "not_ready", "The gateway is starting; try again shortly.")
        params = message.get("params") or {}
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED_VERSIONS else LATEST_VERSION
        session = codec.issue(endpoint.name, principal.token_id, version)
        info: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": f"custos/{endpoint.name}", "version": __version__},
        }
        if endpoint.description:
            info["instructions"] = endpoint.description
        await _send_json(send, jsonrpc.result(message["id"], info), request_id, session)
        return 200

    def _cancelled(self, session: McpSession, message: dict[str, Any]) -> None:
        params = message.get("params") or {}
        cancel = self.gateway.mcp.in_flight.get((session.nonce, params.get("requestId")))
        if cancel is not None:
            reason = params.get("reason")
            cancel(reason if isinstance(reason, str) else None)

    async def _tools_list(
        self,
        send: Send,
        request_id: str,
        endpoint: McpEndpoint,
        session: McpSession,
        principal: Principal,
        head: _Head,
        message_id: Any,
    ) -> int:
        token = head.token if isinstance(head.token, str) else None
        tools = await self.gateway.mcp.list_tools(
            self.gateway.runtime, endpoint, session, principal, token
        )
        body = jsonrpc.result(message_id, {"tools": [t.definition for t in tools]})
        await _send_json(send, body, request_id, session)
        return 200

    async def _tools_call(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        request_id: str,
        endpoint: McpEndpoint,
        session: McpSession,
        head: _Head,
        message: dict[str, Any],
        raw: bytes,
    ) -> int:
        service = self.gateway.mcp
        runtime = self.gateway.runtime
        ctx = RequestContext(
            request_id=request_id,
            protocol="mcp",
            operation="tool_call",
            runtime=runtime,
            token=head.token,
            metadata_headers=head.metadata,
        )
        params = message.get("params") or {}
        # (A name longer than any tool's is refused below; the record keeps its start only.)
        called = str(params.get("name"))[:MAX_TOOL_NAME]
        ctx.mcp = call = ToolCall(endpoint.name, session, message["id"], called)

        async def read_request(ctx: RequestContext) -> None:
            name, arguments = params.get("name"), params.get("arguments", {})
            if not isinstance(name, str) or not 0 < len(name) <= MAX_TOOL_NAME:
                raise GatewayError(400, "invalid_params", "tools/call needs params.name (1 to "
                                   f"{MAX_TOOL_NAME} characters).", param="name")  # fmt: skip
            if not isinstance(arguments, dict):
                raise GatewayError(400, "invalid_params", "params.arguments is an object.",
                                   param="arguments")  # fmt: skip
            token = ctx.token if isinstance(ctx.token, str) else None
            assert ctx.principal is not None
            call.server, call.tool = await service.resolve(
                runtime, endpoint, session, ctx.principal, token, name
            )
            call.params = {"name": call.tool, "arguments": arguments}
            if isinstance(params.get("_meta"), dict):
                call.params["_meta"] = params["_meta"]
            call.arguments_json = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
            ctx.raw_body, ctx.body = raw, call.params

        try:
            response = await self.gateway.mcp_chain.handle(ctx, read_request)
        except GatewayError as err:
            status = 401 if err.status == 401 else 200
            await _send_error(send, err, call.message_id, request_id, status=status)
            return status
        except Exception:
            log.exception("tool call %s failed inside the gateway", request_id)
            err = GatewayError(
                500, "internal_error", f"The gateway failed on request {request_id}."
            )
            await _send_error(send, err, call.message_id, request_id, status=200)
            return 500
        response.headers += [(b"x-custos-request-id", request_id.encode()),
                             (b"mcp-session-id", session.id.encode())]  # fmt: skip
        if response.stream is None:
            await _send(send, response.status, response.headers, response.body, None)
        else:
            await self.relay(send, receive, response)
        return response.status


def _json(raw: bytes) -> Any:
    """The body as JSON (an array too: ``check_message`` refuses batches by name)."""
    if raw.lstrip()[:1] == b"[":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return parse_json_object(raw)


async def _send(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
    request_id: str | None,
) -> None:  # fmt: skip
    if request_id is not None:
        headers = [*headers, (b"x-custos-request-id", request_id.encode())]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, body: bytes, request_id: str, session: McpSession) -> None:
    headers = [*jsonrpc.JSON_HEADERS, (b"mcp-session-id", session.id.encode())]
    await _send(send, 200, headers, body, request_id)


async def _send_error(
    send: Send, err: GatewayError, message_id: Any, request_id: str, *, status: int
) -> None:
    headers = [*jsonrpc.JSON_HEADERS]
    headers.extend((k.encode(), v.encode()) for k, v in err.headers.items())
    await _send(send, status, headers, jsonrpc.error(message_id, err, request_id), request_id)

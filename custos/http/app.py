"""The ASGI application: OpenAI- and Anthropic-compatible routes, health, readiness and metrics.

Plain ASGI, no framework: a dict of routes, each an async function of (scope, receive, send).
The LLM routes read and check the request (``custos.http.requests``), hand a ``RequestContext``
to the governance chain of the revision being served (``custos.chain``), and write what it
returns — a body, or a stream relayed chunk by chunk while watching for the client to go away,
and closed in every case (closing it settles the request). Every error leaves in the caller's
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from custos.console.app import Console
from custos.console.web import PREFIX as CONSOLE_PREFIX
from custos.context import RequestContext
from custos.errors import GatewayError, error_body
from custos.gateway import Gateway
from custos.http.admin import AdminAPI
from custos.http.mcp import PREFIX as MCP_PREFIX
from custos.http.mcp import McpRoutes
from custos.http.models import ONE_MODEL_PREFIX, client_protocol, models_list, one_model
from custos.http.requests import (
    ClientGone,
    bearer,
    check_content_type,
    parse_json_object,
    require_model,
    validate,
    with_credential,
)
from custos.http.requests import read_body as read_request_body
from custos.identity.principal import AuthFailure
from custos.policy.metadata import HEADER_NAMES
from custos.providers.client_headers import PASSED_HEADERS, checked_client_headers
from custos.stage import GatewayResponse
from custos.telemetry import metrics
from custos.wire import ApiProtocol, Operation

log = logging.getLogger("custos.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Endpoint:
    #: The route's path as the gateway names it: the ``route`` label of its metrics (never the
    #: path a client sent, which can differ in trailing slashes and would make a series each).
    route: str
    methods: frozenset[str]
    handler: Handler
    protocol: ApiProtocol


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: Read at start, as the HTTP protocol's bounds are (``custos.http.protocol``).
        self.body_timeout_s = gateway.runtime.config.gateway.body_timeout_s
        self.admin = AdminAPI(
            gateway.admin_deps,
            model_names=lambda: gateway.runtime.routes.keys(),
            on_auth_failure=self.auth_failed,
            budgets=gateway.limiter,
            body_timeout_s=self.body_timeout_s,
        )
        #: The web console at /ui, over the admin API's own service (``custos.console``).
        self.console = Console(
            gateway, self.admin.service_and_directory, on_auth_failure=self.auth_failed
        )
        endpoints = [
            self._llm("/v1/chat/completions", "openai", "chat"),
            self._llm("/v1/embeddings", "openai", "embeddings"),
            self._llm("/v1/messages", "anthropic", "messages"),
            self._llm("/v1/messages/count_tokens", "anthropic", "count_tokens"),
            self._llm("/v1/responses", "openai", "responses"),
            Endpoint("/v1/models", frozenset({"GET"}), self.models, "openai"),
            Endpoint(ONE_MODEL_PREFIX + "{id}", frozenset({"GET"}), self.model, "openai"),
            Endpoint("/healthz", frozenset({"GET"}), self.healthz, "openai"),
            Endpoint("/readyz", frozenset({"GET"}), self.readyz, "openai"),
            Endpoint("/metrics", frozenset({"GET"}), self.metrics, "openai"),
        ]
        self.routes: dict[str, Endpoint] = {e.route: e for e in endpoints}
        self.mcp = McpRoutes(
            gateway,
            new_id=new_request_id,
            relay=relay_stream,
            auth_failed=self.auth_failed,
            body_timeout_s=self.body_timeout_s,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.dispatch(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/admin/") or path == "/admin":
            await self.admin(scope, receive, send)
            return
        if path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
            await self.console(scope, receive, send)
            return
        if path.startswith(MCP_PREFIX):
            await self.mcp(scope, receive, send)
            return
        endpoint = self.routes.get(path) or self.routes.get(path.rstrip("/"))
        if (
            endpoint is None
            and path.startswith(ONE_MODEL_PREFIX)
            and len(path) > len(ONE_MODEL_PREFIX)
        ):
            endpoint = self.routes[ONE_MODEL_PREFIX + "{id}"]
        if endpoint is None:
            protocol: ApiProtocol = "anthropic" if path.startswith("/v1/messages") else "openai"
            err = GatewayError(
                404, "unknown_route", f"No route {scope['method']} {path} on this gateway."
            )
            await send_error(send, protocol, err, new_request_id())
            return
        if scope["method"] not in endpoint.methods:
            allowed = ", ".join(sorted(endpoint.methods))
            err = GatewayError(405, "method_not_allowed", f"{path} accepts {allowed} only.")
            err.headers["allow"] = allowed
            await send_error(send, endpoint.protocol, err, new_request_id())
            return
        await endpoint.handler(scope, receive, send)

    # -- the LLM routes ------------------------------------------------------------------------

    def _llm(self, route: str, protocol: ApiProtocol, operation: Operation) -> Endpoint:
        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            await self.llm(scope, receive, send, route, protocol, operation)

        return Endpoint(route, frozenset({"POST"}), handler, protocol)

    async def llm(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        protocol: ApiProtocol,
        operation: Operation,
    ) -> None:
        request_id = new_request_id()
        head = RequestHead.of(scope)
        ctx = RequestContext(
            request_id=request_id,
            protocol=protocol,
            operation=operation,
            runtime=self.gateway.runtime,
            token=head.token,
            metadata_headers=head.metadata,
        )

        async def read_request(ctx: RequestContext) -> None:
            check_content_type(head.content_type)
            limit = ctx.runtime.config.gateway.max_body_bytes
            raw = await read_request_body(receive, head.content_length, limit, self.body_timeout_s)
            fill_request(ctx, raw)
            ctx.client_headers = checked_client_headers(head.provider)

        try:
            response = await self.gateway.chain.handle(ctx, read_request)
        except ClientGone:
            return
        except GatewayError as err:
            metrics.child(metrics.REQUESTS, route, str(err.status)).inc()
            await send_error(send, protocol, err, request_id)
            return
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            metrics.child(metrics.REQUESTS, route, "500").inc()
            err = GatewayError(
                500, "internal_error", f"The gateway failed on request {request_id}."
            )
            await send_error(send, protocol, err, request_id)
            return
        response.headers.append((b"x-custos-request-id", request_id.encode()))
        if response.stream is None:
            await send_body(send, response.status, response.headers, response.body)
        else:
            await relay_stream(send, receive, response)
        metrics.child(metrics.REQUESTS, route, str(ctx.status)).inc()
        metrics.child(metrics.LATENCY, route).observe(ctx.latency_ms / 1000)

    # -- the other routes ----------------------------------------------------------------------

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._models(scope, None, send)

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._models(scope, scope["path"][len(ONE_MODEL_PREFIX) :], send)

    async def _models(self, scope: Scope, name: str | None, send: Send) -> None:
        """The model list, or one model (``name``), in the caller's protocol."""
        protocol = client_protocol(scope["headers"])
        runtime = self.gateway.runtime
        try:
            token = RequestHead.of(scope).token
            principal = await self.gateway.authenticate.principal_for(token, runtime.jwt)
            if name is None:
                body = models_list(runtime, principal, protocol, scope["query_string"])
            else:
                body = one_model(runtime, principal, protocol, name)
        except GatewayError as err:
            request_id = new_request_id()
            if err.status == 401:
                self.auth_failed(scope, err, request_id)
            await send_error(send, protocol, err, request_id)
            return
        await send_body(send, 200, [_JSON], body)

    def auth_failed(self, scope: Scope, err: GatewayError, request_id: str | None = None) -> None:
        """Record a refused credential outside the LLM routes (an ``auth.failure`` event)."""
        audit = self.gateway.audit
        if audit is not None:
            client = scope.get("client")
            audit.auth_failure(
                request_id=request_id or new_request_id(),
                route=scope["path"],
                method=scope["method"],
                code=err.code,
                client=client[0] if client else None,
            )

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_body(send, 200, [_JSON], b'{"status":"ok"}')

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.gateway.ready
        body = orjson.dumps(
            {"status": "ready" if ready else "starting", "revision": self.gateway.runtime.revision}
        )
        await send_body(send, 200 if ready else 503, [_JSON], body)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = metrics.exposition()
        await send_body(send, 200, [(b"content-type", content_type.encode())], body)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the gateway reads from a request's headers, in one pass over them."""

    #: The API key presented, or why the keys presented cannot be taken (two that differ).
    token: str | AuthFailure | None
    #: Every metadata header as sent (name, value): the policy decides what several mean.
    metadata: tuple[tuple[bytes, bytes], ...]
    content_type: bytes | None
    content_length: int | None
    #: The provider headers a client may pass on (``custos.providers.client_headers``).
    provider: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def of(cls, scope: Scope) -> RequestHead:
        token: str | AuthFailure | None = None
        content_type = None
        content_length = None
        metadata: tuple[tuple[bytes, bytes], ...] = ()
        provider: tuple[tuple[bytes, bytes], ...] = ()
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = bearer(value)
                if credential is not None:
                    token = with_credential(token, credential)
            elif name == b"x-api-key":
                credential = value.strip().decode("latin-1")
                if credential:
                    token = with_credential(token, credential)
            elif name in HEADER_NAMES:
                metadata += ((name, value),)
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
            elif name in PASSED_HEADERS:
                provider += ((name, value),)
        return cls(token, metadata, content_type, content_length, provider)


def fill_request(ctx: RequestContext, raw: bytes) -> None:
    """Parse and check the body into the context."""
    body = parse_json_object(raw)
    ctx.model = require_model(body)
    validate(ctx.operation, body)
    ctx.raw_body, ctx.body = raw, body
    ctx.stream = body.get("stream") is True and ctx.operation != "count_tokens"
    options = body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    # Anthropic streams and Responses streams always carry usage; chat streams when asked.
    always = ctx.protocol == "anthropic" or ctx.operation == "responses"
    ctx.client_wants_usage = ctx.stream and (always or asked)


def new_request_id() -> str:
    """24 hex digits: a random prefix drawn once per process, then a counter.

    Unique across replicas (the prefix has 48 random bits) without a random-number system call
    per request, which showed at 3% of the hot path.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


async def send_body(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, protocol: ApiProtocol, err: GatewayError, request_id: str) -> None:
    headers = [_JSON, (b"x-custos-request-id", request_id.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in err.headers.items())
    if protocol == "anthropic":
        headers.append((b"request-id", request_id.encode()))
    await send_body(send, err.status, headers, error_body(protocol, err, request_id))


async def relay_stream(send: Send, receive: Receive, response: GatewayResponse) -> None:
    """Send a stream while watching for the client to leave; if it does, stop the stream.
    The stream is closed however this ends (sent, client gone, the pump never started), which
    closes the upstream request and settles the call."""
    stream = response.stream
    assert stream is not None

    async def pump() -> None:
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response.headers}
        )
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        try:
            for task in (pumping, watching):
                if not task.done():
                    task.cancel()
            for task in (pumping, watching):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

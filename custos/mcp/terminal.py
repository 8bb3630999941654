"""The MCP terminal: a governed ``tools/call`` proxied to the tool server (the chain's second
terminal, beside the LLM router; ``custos.stage`` has the contract).

``prepare`` checks the server is still configured and settles what the gateway presents to it
(``auth: passthrough``: the caller's own JWT). ``call`` sends the call on the client session's
upstream session and answers as the server did: one JSON message, or an event stream whose
notifications (progress, log messages) are relayed as they come and whose last event is the
response, passed through the chain's ``on_chunk`` (the post-invoke guardrails), after the
request is settled, as the LLM terminal does with a stream's last chunk.

The call is registered on this replica under (client session, client request id) while it
runs: a ``notifications/cancelled`` naming it sends the server its own cancellation and, once
the server answers with a stream, closes it and ends the client's stream without a response
(the specification's rule); before that (the call being sent, or a plain answer awaited) it
stops the wait, and the client's request gets the error ``cancelled``.
A client that goes away cancels the call the same way. Whatever the server does (a refused
connection, an error status, a stream broken mid-call, no answer within ``timeouts.call_s``),
the client gets a JSON-RPC error and the call its ``mcp.tool_call`` record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from custos.context import RequestContext
from custos.errors import GatewayError
from custos.mcp import jsonrpc
from custos.mcp.call import ToolCall
from custos.mcp.service import McpGateway, upstream_failed
from custos.mcp.upstream import Exchange, McpUpstreamError, next_id
from custos.stage import GatewayResponse, StreamCloser

log = logging.getLogger("custos.mcp")


class McpTerminal:
    def __init__(self, service: McpGateway) -> None:
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()

    def prepare(self, ctx: RequestContext) -> None:
        call: ToolCall = ctx.mcp
        settings = ctx.runtime.config.mcp_servers.get(call.server)
        if settings is None:  # a reload removed it since the call was resolved
            raise GatewayError(404, "tool_not_found", f"No MCP server '{call.server}'.")
        call.region = settings.region
        token = ctx.token if isinstance(ctx.token, str) else None
        assert ctx.principal is not None
        call.credential = self.service.credential(settings, call.server, ctx.principal, token)

    async def call(self, ctx: RequestContext, chain: StreamCloser) -> GatewayResponse:
        call: ToolCall = ctx.mcp
        settings = ctx.runtime.config.mcp_servers[call.server]
        deadline = asyncio.get_running_loop().time() + settings.timeouts.call_s
        call.upstream_id = next_id()
        key = (call.session.nonce, call.message_id)
        # Until the server starts answering, a cancellation cancels this wait.
        waiting = asyncio.current_task()
        self.service.in_flight[key] = lambda reason: self._cancel_wait(ctx, waiting, reason)
        try:
            async with asyncio.timeout_at(deadline):
                exchange = await self.service.upstream.send(
                    call.server, settings, call.session.nonce, "tools/call", call.params,
                    call.credential, call.upstream_id,
                )  # fmt: skip
        except McpUpstreamError as exc:
            raise _failed(ctx, exc.reason) from None
        except TimeoutError:
            self._cancel(ctx, None, "timed out at the gateway")
            raise _failed(ctx, "timeout") from None
        except asyncio.CancelledError:
            if not call.cancelled or waiting is None:
                raise
            waiting.uncancel()
            cancelled = GatewayError(499, "cancelled", "The call was cancelled.", stage="client")
            raise cancelled from None
        finally:
            self.service.in_flight.pop(key, None)
        call.upstream_id = exchange.upstream_id  # another, if the server's session was renewed
        if exchange.message is not None:
            ctx.status = 200
            return GatewayResponse(200, list(jsonrpc.JSON_HEADERS), _answer(ctx, exchange.message))
        self.service.in_flight[key] = lambda reason: self._cancel(ctx, exchange, reason)
        response = GatewayResponse(200, list(jsonrpc.SSE_HEADERS))
        response.stream = self._relay(ctx, exchange, chain, deadline)
        response.on_close = lambda: self._closed(ctx, exchange)
        return response

    def _cancel_wait(
        self, ctx: RequestContext, waiting: asyncio.Task[Any] | None, reason: str | None
    ) -> None:
        """A cancellation while the call is sent or its plain answer awaited."""
        if ctx.mcp.cancelled:
            return
        self._cancel(ctx, None, reason)
        if waiting is not None:
            waiting.cancel()

    async def _relay(
        self, ctx: RequestContext, exchange: Exchange, chain: StreamCloser, deadline: float
    ) -> AsyncIterator[bytes]:
        call: ToolCall = ctx.mcp
        hooks = chain.on_chunk if chain.chunk_hooks else None
        assert exchange.messages is not None
        messages = exchange.messages.__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await anext(messages)
                except StopAsyncIteration:
                    raise McpUpstreamError("broken") from None
                if message.get("id") == exchange.upstream_id and "method" not in message:
                    if call.cancelled:  # the server's answer to the cancellation: not relayed
                        raise McpUpstreamError("cancelled")
                    last = jsonrpc.sse_event(_answer(ctx, message))
                    if hooks is not None:
                        last = await hooks(ctx, last, True)
                    ctx.status = 200
                    chain.settle(ctx)  # before the last event, as a strict audit trail needs
                    try:
                        await chain.release(ctx)
                    except GatewayError as err:
                        yield _error_event(ctx, err)
                        return
                    yield last
                    return
                if message.get("method") == "notifications/progress":
                    call.progress += 1
                yield jsonrpc.sse_event(orjson.dumps(message))
        except GatewayError as err:  # a post-invoke guardrail refused the result
            ctx.status, ctx.error_code = err.status, err.code
            ctx.stopped_at = err.stage or "guardrails"  # type: ignore[assignment]
            yield _error_event(ctx, err)
        except (McpUpstreamError, TimeoutError) as exc:
            if call.cancelled:
                ctx.status, ctx.error_code, ctx.stopped_at = 499, "cancelled", "client"
                return  # a cancelled request gets no response
            reason = exc.reason if isinstance(exc, McpUpstreamError) else "timeout"
            if reason == "timeout":
                self._cancel(ctx, exchange, "timed out at the gateway")
            yield _error_event(ctx, _failed(ctx, reason))
        except (asyncio.CancelledError, GeneratorExit):
            if not ctx.settled:
                ctx.client_disconnected = True
                ctx.status, ctx.error_code, ctx.stopped_at = 499, "client_disconnected", "client"
                self._cancel(ctx, exchange, "the client went away")
            raise
        finally:
            self.service.in_flight.pop((call.session.nonce, call.message_id), None)
            exchange.close()
            if not ctx.settled:
                chain.settle(ctx)

    def _closed(self, ctx: RequestContext, exchange: Exchange) -> None:
        """The stream was closed, maybe never relayed (its client left first)."""
        call: ToolCall = ctx.mcp
        running = self.service.in_flight.pop((call.session.nonce, call.message_id), None)
        if running is not None and not ctx.settled:
            self._cancel(ctx, exchange, "the client went away")
        exchange.close()

    def _cancel(self, ctx: RequestContext, exchange: Exchange | None, reason: str | None) -> None:
        """Cancel the call at the server (its own notification) and stop relaying it."""
        call: ToolCall = ctx.mcp
        if call.cancelled:
            return
        call.cancelled = True
        params: dict[str, Any] = {"requestId": call.upstream_id}
        if reason:
            params["reason"] = reason
        settings = ctx.runtime.config.mcp_servers[call.server]
        notify = self.service.upstream.notify(
            call.server, settings, call.session.nonce, "notifications/cancelled", params,
            call.credential,
        )  # fmt: skip
        task = asyncio.ensure_future(self._then_close(notify, exchange))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _then_close(notify: Any, exchange: Exchange | None) -> None:
        try:
            await notify
        finally:
            if exchange is not None:
                exchange.close()

    def settle(self, ctx: RequestContext) -> None:
        """(Nothing to price: tool calls cost no tokens.)"""


def _answer(ctx: RequestContext, message: dict[str, Any]) -> bytes:
    """The server's response under the client's id; notes what it says for the record."""
    call: ToolCall = ctx.mcp
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        call.upstream_error = code if isinstance(code, int) and not isinstance(code, bool) else 0
        ctx.error_code, ctx.stopped_at = "tool_server_error", "provider"
        out: dict[str, Any] = {"jsonrpc": "2.0", "id": call.message_id, "error": error}
    else:
        result = message.get("result")
        if isinstance(result, dict):
            call.tool_error = result.get("isError") is True
        out = {"jsonrpc": "2.0", "id": call.message_id, "result": result}
    return orjson.dumps(out)


def _failed(ctx: RequestContext, reason: str) -> GatewayError:
    call: ToolCall = ctx.mcp
    err = upstream_failed(call.server, reason)
    err.stage = "provider"
    ctx.status, ctx.error_code, ctx.stopped_at = err.status, err.code, "provider"
    return err


def _error_event(ctx: RequestContext, err: GatewayError) -> bytes:
    call: ToolCall = ctx.mcp
    return jsonrpc.sse_event(jsonrpc.error(call.message_id, err, ctx.request_id))

"""``GovernanceChain``: one revision's stages, in order, in front of a terminal.

    audit → authenticate → read request → identify → authorize → [terminal: prepare]
      → budget and rate limit → (input guardrails) → [terminal: call] → (output guardrails)
      → settle: price, limits, audit → release

The gateway builds one chain per config revision (``custos.gateway.build_chain``) from the
stages that revision switches on; a request keeps the chain it started with to its end. The
contract every stage and the terminal follow is in ``custos.stage``. This module is where the
request's outcome is written (``ctx.status``, ``error_code``, ``stopped_at``: the stage that
raised) and the one place that settles a request, exactly once, whatever happened:

- a plain answer, or a request stopped anywhere: when ``handle`` ends;
- a stream: when its relay ends (before its last chunk, so that a strict audit trail can hold
  it), or else when the stream is closed (``GovernedStream``), iterated or not.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from custos.chain.stream import GovernedStream
from custos.context import RequestContext
from custos.errors import ClientDisconnected, GatewayError
from custos.stage import GatewayResponse, Terminal
from custos.telemetry import metrics

if TYPE_CHECKING:
    from custos.context import StageName

ReadRequest = Callable[[RequestContext], Awaitable[None]]


class _Marker:
    """A place in the stage list where the chain runs a step of its own."""

    def __init__(self, name: StageName) -> None:
        self.name: StageName = name


#: Where the request's body is read and checked (after authentication: an unauthenticated
#: caller costs no body parsing).
READ_REQUEST: Final = _Marker("read_request")
#: Where the terminal's ``prepare`` runs (before the stages that charge the request).
PREPARE_TERMINAL: Final = _Marker("route")

_Enter = tuple["StageName", Callable[..., Any] | None, bool]


class GovernanceChain:
    def __init__(self, stages: Sequence[object], terminal: Terminal) -> None:
        self.stages = tuple(stages)
        self.terminal = terminal
        enter: list[_Enter] = []
        for stage in self.stages:
            name: StageName = stage.name  # type: ignore[attr-defined]
            if stage is READ_REQUEST:
                enter.append((name, None, True))
            elif stage is PREPARE_TERMINAL:
                enter.append((name, terminal.prepare, False))
            elif (hook := getattr(stage, "enter", None)) is not None:
                enter.append((name, hook, inspect.iscoroutinefunction(hook)))
        self._enter = tuple(enter)
        backwards = self.stages[::-1]
        self._on_response = tuple(
            (stage.name, hook, inspect.iscoroutinefunction(hook))  # type: ignore[attr-defined]
            for stage in backwards
            if (hook := getattr(stage, "on_response", None)) is not None
        )
        self.chunk_hooks = _hooks(backwards, "on_chunk")
        # Pricing first (the terminal's), then the stages, the first entered settling last.
        self._settle = (*_hooks((terminal,), "settle"), *_hooks(backwards, "settle"))
        self._release = _hooks(self.stages, "release")

    async def handle(self, ctx: RequestContext, read_request: ReadRequest) -> GatewayResponse:
        """Run the chain. Raises ``GatewayError`` for a stopped request, after settling it."""
        stage: StageName = "gateway"
        relayed = False
        try:
            # ``stage`` outlives the loop: it names the stage that raised.
            for stage, enter, is_async in self._enter:  # noqa: B007
                if enter is None:
                    await read_request(ctx)
                elif is_async:
                    await enter(ctx)
                else:
                    enter(ctx)
            stage = "provider"
            if ctx.pending_checks:
                response = await self._call_checked(ctx)
            else:
                response = await self.terminal.call(ctx, self)
            if response.stream is not None:
                response.stream = GovernedStream(
                    response.stream,  # type: ignore[arg-type]
                    response.on_close,
                    lambda: self.settle(ctx),
                )
                relayed = True
            for stage, on_response, is_async in self._on_response:  # noqa: B007
                if is_async:
                    await on_response(ctx, response)
                else:
                    on_response(ctx, response)
            applied = ctx.applied
            if applied:  # the ids of the rules that let it through (DESIGN §1)
                response.headers.append((b"x-custos-applied", ",".join(applied).encode()))
            return response
        except GatewayError as err:
            ctx.status, ctx.error_code = err.status, err.code
            ctx.stopped_at = err.stage or stage  # type: ignore[assignment]
            raise
        except (asyncio.CancelledError, ClientDisconnected):
            ctx.client_disconnected = True
            ctx.status, ctx.error_code, ctx.stopped_at = 499, "client_disconnected", "client"
            raise
        except Exception:
            ctx.status, ctx.error_code, ctx.stopped_at = 500, "internal_error", "gateway"
            raise
        finally:
            if not relayed:
                self.settle(ctx)
                await self.release(ctx)

    def settle(self, ctx: RequestContext) -> None:
        """Turn the request's outcome into its effects, once: a second call does nothing."""
        if ctx.settled:
            return
        ctx.settled = True
        if ctx.stopped_at is None and ctx.status == 0:
            # Ended without an outcome (a stream closed before it was relayed; the terminal's
            # clean-up says why when it knows): the client is the one that left.
            ctx.client_disconnected = True
            ctx.status, ctx.error_code, ctx.stopped_at = 499, "client_disconnected", "client"
        for settle in self._settle:
            settle(ctx)
        if ctx.error_code is not None:
            metrics.DENIALS.labels(ctx.error_code).inc()

    async def release(self, ctx: RequestContext) -> None:
        """Let every stage hold the answer until it is satisfied (after ``settle``)."""
        for release in self._release:
            await release(ctx)

    async def on_chunk(self, ctx: RequestContext, chunk: bytes, last: bool) -> bytes:
        """Every stage's ``on_chunk`` over one chunk of a stream (``last``: the stream's end)."""
        for hook in self.chunk_hooks:
            chunk = await hook(ctx, chunk, last)
        return chunk

    async def _call_checked(self, ctx: RequestContext) -> GatewayResponse:
        """The terminal's call, run beside the checks a stage left pending (a webhook guardrail
        that validates the request while the provider works on it): the answer is held until
        every check passed, and the first check that refuses cancels the call."""
        call = asyncio.ensure_future(self.terminal.call(ctx, self))
        pending: set[asyncio.Future[Any]] = {call, *ctx.pending_checks}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if finished is not call:
                        finished.result()  # a refusal raises here
            return call.result()
        except BaseException:
            for future in pending:
                future.cancel()
            if call.done() and not call.cancelled() and call.exception() is None:
                await _discard(call.result())
            raise


async def _discard(response: GatewayResponse) -> None:
    """An answer a check refused after it arrived: a stream is closed unread (its provider
    connection with it)."""
    stream = response.stream
    if stream is not None:
        await stream.aclose()  # type: ignore[attr-defined]
        if response.on_close is not None:
            response.on_close()


def _hooks(stages: Sequence[object], name: str) -> tuple[Callable[..., Any], ...]:
    return tuple(hook for s in stages if (hook := getattr(s, name, None)) is not None)

"""The LLM terminal: a governed model call routed to a provider (stages 7 and 8 of DESIGN §1).

``prepare`` runs before the stages that charge the request: it finds the route of the model
asked for (404 ``model_not_found``), refuses an operation none of its targets supports, keeps
only the targets the residency rules allow (``custos.policy.residency``: 403
``residency_denied`` when none is left; the narrowed route is ``ctx.route``), and builds once
the request of every target that translates, refusing a field that does not translate or state
another account keeps (400), so that such a request is never charged.
``call`` tries the route's targets as ``custos.routing`` orders, retries and skips them; a
stream is read to its first bytes for the client before it is answered (a failure before that
is a failed attempt the route may retry), then relayed by a generator the chain wraps in a
``GovernedStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial

from custos.context import Attempt, RequestContext
from custos.errors import GatewayError
from custos.policy.when import Facts
from custos.providers.base import (
    ProviderCall,
    StreamDecoder,
    StreamTranslator,
    UpstreamCredentialsFailed,
    UpstreamMalformed,
    upstream_error,
)
from custos.providers.count_tokens import ESTIMATED_HEADER, estimated_count
from custos.providers.estimate import estimate_prompt_tokens
from custos.providers.responses import check_state as check_responses_state
from custos.providers.transport import (
    Transport,
    UpstreamRequestFailed,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from custos.providers.upstream import UpstreamRequest
from custos.routing import TargetHealth, call_route
from custos.routing.targets import ModelRoute, ModelTarget
from custos.stage import GatewayResponse, StreamCloser
from custos.telemetry import metrics
from custos.wire import Usage

log = logging.getLogger("custos.terminals.llm")

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
#: A provider's error body is read for its message only (500 characters of it are shown).
ERROR_BODY_BYTES = 64 * 1024


class LLMTerminal:
    """Routes model calls; lives as long as the process (its target health outlives a
    revision), and serves every revision's chain."""

    def __init__(self, transport: Transport, health: TargetHealth | None = None) -> None:
        self.transport = transport
        #: Cooldowns and latencies of the targets, kept across config revisions.
        self.health: TargetHealth = health if health is not None else TargetHealth()

    # -- before the request is charged ---------------------------------------------------------

    def prepare(self, ctx: RequestContext) -> None:
        route = self.route(ctx)
        if ctx.runtime.residency.rules:
            route = _resident(ctx, route)
        ctx.route = route
        if ctx.operation != "count_tokens":  # nothing to translate: a count is not charged
            self.check_targets(ctx, route)

    def route(self, ctx: RequestContext) -> ModelRoute:
        """The model's route, or a refusal: an unknown model, an operation it does not do."""
        route = ctx.runtime.routes.get(ctx.model)
        if route is None:
            raise GatewayError(
                404,
                "model_not_found",
                f"The model '{ctx.model}' does not exist on this gateway; "
                "GET /v1/models lists the models you can call.",
                param="model",
            )
        unsupported = [t for t in route.targets if not t.adapter.supports(ctx.operation)]
        if len(unsupported) == len(route.targets):
            raise GatewayError(
                400,
                "operation_not_supported",
                f"The model '{ctx.model}' does not support {ctx.operation}.",
                param="model",
            )
        return route

    def check_targets(self, ctx: RequestContext, route: ModelRoute) -> None:
        """Refuse a request the model's targets cannot serve as asked (a field that does not
        translate, state another account keeps) before it is charged to any limit: every
        target that translates builds its request once here, and a 400 stops the request."""
        if ctx.operation == "responses":
            check_responses_state(ctx.body, route)
        for target in route.targets:
            adapter = target.adapter
            if adapter.wire != ctx.protocol and adapter.supports(ctx.operation):
                with contextlib.suppress(ValueError, TypeError):  # the attempt reports those
                    built = adapter.build_request(_provider_call(ctx, target))
                    if not adapter.needs_prepare:  # else built again after prepare (its token)
                        ctx.prebuilt = {**(ctx.prebuilt or {}), target.name: built}

    # -- the call --------------------------------------------------------------------------

    async def call(self, ctx: RequestContext, chain: StreamCloser) -> GatewayResponse:
        """Try the route's targets as ``custos.routing`` orders, retries and skips them."""
        route = ctx.route or ctx.runtime.routes[ctx.model]  # prepare found it
        attempt = partial(self._attempt, ctx, route, chain)
        return await call_route(ctx, route, self.health, attempt)

    async def _attempt(
        self, ctx: RequestContext, route: ModelRoute, chain: StreamCloser, target: ModelTarget
    ) -> tuple[GatewayResponse | None, GatewayError | None]:
        ctx.served = target
        call = _provider_call(ctx, target)
        attempt = Attempt(target.name)
        ctx.attempts.append(attempt)
        if ctx.operation == "count_tokens" and not target.adapter.counts_tokens:
            return _estimated_count(ctx, target, attempt), None
        started = time.monotonic_ns()
        upstream: UpstreamResponse | None = None
        try:
            # The route's attempt timeout: a plain call's answer, a stream's first event.
            async with asyncio.timeout(route.first_event_s(ctx.stream)):
                if target.adapter.needs_prepare:
                    await target.adapter.prepare(self.transport)
                prebuilt = ctx.prebuilt.get(target.name) if ctx.prebuilt else None
                request = prebuilt or _build_request(target, call)
                upstream = await self.transport.open(
                    request,
                    connect_s=target.connect_timeout_s,
                    read_s=target.timeout_s,
                    total_s=None if ctx.stream else target.timeout_s,
                )
                attempt.status = upstream.status
                if upstream.status >= 400:
                    body = await upstream.read_prefix(ERROR_BODY_BYTES)
                    err = upstream_error(
                        target.account,
                        target.adapter.error_status(upstream.status, body),
                        target.adapter.error_message(body),
                        upstream.headers.get("retry-after"),
                    )
                    return None, self._failed(attempt, err, started)
                if ctx.stream:
                    opened = await _open_stream(target, call, upstream)
                    attempt.latency_ms = (time.monotonic_ns() - started) // 1_000_000
                    ctx.first_byte_ns = time.monotonic_ns()
                    return self._streaming(ctx, target, opened, chain), None
                body = await upstream.read(target.max_response_bytes)
                parsed = target.adapter.parse_response(call, body)
        except asyncio.CancelledError:  # the gateway stopping: no half-read response is kept
            if upstream is not None:
                upstream.close()
            raise
        except _ATTEMPT_FAILURES as exc:
            if upstream is not None:
                upstream.close()
            return None, self._failed(attempt, _attempt_failure(target, exc), started)
        attempt.latency_ms = (time.monotonic_ns() - started) // 1_000_000
        if ctx.operation != "count_tokens":  # a count is not a use of the model
            ctx.usage = parsed.usage or Usage(
                input_tokens=estimate_prompt_tokens(ctx.body), estimated=True
            )
        if ctx.capture is not None:
            ctx.capture.response = parsed.body
        ctx.status = 200
        headers = [_JSON, (b"x-custos-served-by", target.served_by)]
        return GatewayResponse(200, headers, parsed.body, parsed=parsed.parsed), None

    def _failed(self, attempt: Attempt, err: GatewayError, started: int) -> GatewayError:
        attempt.latency_ms = (time.monotonic_ns() - started) // 1_000_000
        attempt.error = err.code
        metrics.UPSTREAM_ATTEMPTS.labels(attempt.target.split("/", 1)[0], err.code).inc()
        return err

    def _streaming(
        self, ctx: RequestContext, target: ModelTarget, opened: _OpenedStream, chain: StreamCloser
    ) -> GatewayResponse:
        headers = [*_SSE, (b"x-custos-served-by", target.served_by)]
        relay = self._relay(ctx, target, opened, chain)
        response = GatewayResponse(200, headers, stream=relay)
        response.on_close = partial(_never_relayed, ctx, opened)
        return response

    async def _relay(
        self, ctx: RequestContext, target: ModelTarget, opened: _OpenedStream, chain: StreamCloser
    ) -> AsyncIterator[bytes]:
        """Relay one upstream stream to the client, then settle, whatever happened once it
        started (``_never_relayed`` covers a stream that never did)."""
        translator, decoder, upstream = opened.translator, opened.decoder, opened.upstream
        capture = ctx.capture
        hooks = chain.on_chunk if chain.chunk_hooks else None
        opened.started = True
        metrics.ACTIVE_STREAMS.inc()
        target_failed: bool | None = None
        try:
            first = opened.first if hooks is None else await hooks(ctx, opened.first, False)
            if capture is not None:
                capture.feed(first)
            yield first
            async for chunk in opened.chunks:
                out = b"".join(translator.feed(event) for event in decoder.feed(chunk))
                if hooks is not None and out:
                    out = await hooks(ctx, out, False)
                if out:
                    if capture is not None:
                        capture.feed(out)
                    yield out
            tail = b"".join(translator.feed(event) for event in decoder.close())
            if translator.upstream_error and not translator.complete:
                # The provider's own error event already reached the client; don't add a second.
                target_failed = True
                if tail:
                    yield tail
                ctx.status, ctx.error_code = 502, "upstream_stream_error"
                ctx.stopped_at = "provider"
                ctx.attempts[-1].error = ctx.error_code
                return
            if not translator.complete:
                raise UpstreamUnreachable("the provider ended the stream early")
            target_failed = False
            last = tail + translator.finish()
            if hooks is not None:
                last = await hooks(ctx, last, True)
            if capture is not None:
                capture.feed(last)
            ctx.status = 200
            # Settled before the last chunk goes out, so that a strict audit trail can hold
            # the chunk until the record is durable.
            _stream_usage(ctx, translator)
            chain.settle(ctx)
            try:
                await chain.release(ctx)
            except GatewayError as err:  # the 200 is sent: the refusal goes in the stream
                yield translator.error_event(ctx.protocol, err)
                return
            yield last
        except GatewayError as err:  # a stage refused a chunk (an output guardrail)
            target_failed = False
            ctx.status, ctx.error_code, ctx.stopped_at = err.status, err.code, err.stage  # type: ignore[assignment]
            yield translator.error_event(ctx.protocol, err)
        except (UpstreamTimeout, UpstreamUnreachable, UpstreamMalformed, ValueError) as exc:
            target_failed = True
            err = _stream_failure(target, exc)
            ctx.status, ctx.error_code, ctx.stopped_at = err.status, err.code, "provider"
            ctx.attempts[-1].error = err.code
            yield translator.error_event(ctx.protocol, err)
        except (asyncio.CancelledError, GeneratorExit):
            client_left(ctx)
            raise
        finally:
            if translator.complete:
                upstream.release()
            else:
                upstream.close()
            metrics.ACTIVE_STREAMS.dec()
            if ctx.report_outcome is not None:
                # A client that left says nothing about the target: it was streaming.
                ctx.report_outcome(bool(target_failed))
            if not ctx.settled:
                _stream_usage(ctx, translator)
                chain.settle(ctx)

    # -- settle ----------------------------------------------------------------------------

    def settle(self, ctx: RequestContext) -> None:
        """Price the call (the chain's first step of settling, before the stages')."""
        served, usage = ctx.served, ctx.usage
        if usage is None or served is None:
            return
        ctx.cost_micros = served.price.cost_micros(usage)
        model = served.name
        metrics.child(metrics.TOKENS, model, "input").inc(usage.input_tokens)
        metrics.child(metrics.TOKENS, model, "output").inc(usage.output_tokens)
        metrics.child(metrics.COST, model).inc(ctx.cost_micros)
        if served.price.unpriced:
            metrics.UNPRICED_CALLS.labels(model).inc()


def _resident(ctx: RequestContext, route: ModelRoute) -> ModelRoute:
    """``route`` with only the targets the residency rules allow for this request (before the
    strategy orders them: retries and fallbacks stay among them); 403 when none is left."""
    principal = ctx.principal
    assert principal is not None  # authorize ran
    classes = frozenset(d.name for d in ctx.data_classes)
    facts = Facts(principal.subjects, ctx.model, ctx.metadata, classes)
    candidates = [t for t in route.targets if t.adapter.supports(ctx.operation)]
    kept = ctx.runtime.residency.place(facts, ctx.model, candidates, ctx.decisions)
    if len(kept) == len(route.targets):
        return route
    chosen = {id(t) for t in kept}
    pairs = zip(route.targets, route.weights, strict=False)
    weights = tuple(w for t, w in pairs if id(t) in chosen)
    return replace(route, targets=kept, weights=weights)


def client_left(ctx: RequestContext) -> None:
    """The client went away before the answer was complete (recorded as 499)."""
    ctx.client_disconnected = True
    ctx.status, ctx.error_code, ctx.stopped_at = 499, "client_disconnected", "client"


def _never_relayed(ctx: RequestContext, opened: _OpenedStream) -> None:
    """A stream closed before its relay started (its client left first): nothing else will
    close the provider's stream or report the target, so this does, and counts what was read."""
    if opened.started:
        return
    opened.upstream.close()
    if ctx.report_outcome is not None:
        ctx.report_outcome(False)  # a client that left says nothing about the target
    if not ctx.settled:
        client_left(ctx)
        _stream_usage(ctx, opened.translator)


def _stream_usage(ctx: RequestContext, translator: StreamTranslator) -> None:
    """The usage of a relayed stream: the provider's final count, else what was counted."""
    ctx.usage = translator.usage or Usage(
        input_tokens=estimate_prompt_tokens(ctx.body),
        output_tokens=translator.estimated_output_tokens,
        estimated=True,
    )
    counted = translator.estimated_output_tokens
    if counted > ctx.usage.output_tokens and (
        ctx.usage.output_tokens == 0 or not translator.complete
    ):
        # Text went out but the provider reported no output (Anthropic's format cannot
        # omit the count, so a missing one arrives as 0), or the stream broke before the
        # final count: charge what was counted instead.
        ctx.usage.output_tokens = counted
        ctx.usage.estimated = True


def _estimated_count(ctx: RequestContext, target: ModelTarget, attempt: Attempt) -> GatewayResponse:
    """count_tokens for an account that cannot count: the gateway's estimate, marked so."""
    attempt.status = ctx.status = 200
    headers = [_JSON, (b"x-custos-served-by", target.served_by), ESTIMATED_HEADER]
    return GatewayResponse(200, headers, estimated_count(ctx.body))


def _provider_call(ctx: RequestContext, target: ModelTarget) -> ProviderCall:
    return ProviderCall(
        protocol=ctx.protocol,
        operation=ctx.operation,
        body=ctx.body,
        raw_body=ctx.raw_body,
        requested_model=ctx.model,
        upstream_model=target.upstream_model,
        stream=ctx.stream,
        client_wants_usage=ctx.client_wants_usage,
        client_headers=ctx.client_headers,
    )


def _build_request(target: ModelTarget, call: ProviderCall) -> UpstreamRequest:
    """The adapter's request; one it cannot build (a value its HTTP parts refuse) is the
    account's failure, so a virtual model falls back past it."""
    try:
        return target.adapter.build_request(call)
    except (ValueError, TypeError) as exc:
        raise UpstreamRequestFailed(type(exc).__name__) from None


@dataclass(slots=True)
class _OpenedStream:
    """A provider's stream read up to its first bytes for the client."""

    upstream: UpstreamResponse
    chunks: AsyncIterator[bytes]
    translator: StreamTranslator
    decoder: StreamDecoder
    first: bytes
    #: Set when the relay starts; from then on it owns closing the upstream and settling.
    started: bool = False


class _StreamNotStarted(Exception):
    """The provider's stream failed before anything reached the client: a failed attempt."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


async def _open_stream(
    target: ModelTarget, call: ProviderCall, upstream: UpstreamResponse
) -> _OpenedStream:
    """Read the stream until it has bytes for the client (what ``first_token_s`` bounds). Until
    then nothing was sent, so a stream that breaks, ends or reports an error first is a failed
    attempt the route may retry or fall back from; after, failures go in the stream."""
    translator = target.adapter.stream_translator(call)
    decoder = target.adapter.stream_decoder()
    chunks = upstream.chunks()
    first = b""
    try:
        while not first:
            chunk = await anext(chunks, None)
            if chunk is None:
                first = b"".join(translator.feed(event) for event in decoder.close())
                if not translator.complete:
                    raise UpstreamUnreachable("the provider ended the stream before its start")
                break
            first = b"".join(translator.feed(event) for event in decoder.feed(chunk))
    except (UpstreamUnreachable, UpstreamMalformed, ValueError) as exc:
        raise _StreamNotStarted(_stream_failure(target, exc)) from None
    if translator.upstream_error and not translator.complete:
        raise _StreamNotStarted(
            GatewayError(
                502,
                "upstream_stream_error",
                f"provider {target.account} answered the stream with an error",
            )
        )
    return _OpenedStream(upstream, chunks, translator, decoder, first)


#: What ends one attempt on a target (``_attempt_failure`` says how the caller sees each).
_ATTEMPT_FAILURES = (
    UpstreamTimeout, TimeoutError, _StreamNotStarted, UpstreamUnreachable, UpstreamMalformed,
    UpstreamTooLarge, UpstreamRequestFailed, UpstreamCredentialsFailed,
)  # fmt: skip


def _attempt_failure(target: ModelTarget, exc: Exception) -> GatewayError:
    """The error a failed attempt ends with (never the provider's credentials or raw text)."""
    account = target.account
    if isinstance(exc, UpstreamTimeout | TimeoutError):
        return GatewayError(504, "upstream_timeout", f"provider {account} did not answer in time")
    if isinstance(exc, _StreamNotStarted):
        return exc.error
    if isinstance(exc, UpstreamUnreachable):
        return GatewayError(502, "upstream_unreachable", f"could not reach provider {account}")
    if isinstance(exc, UpstreamMalformed):
        return GatewayError(502, "upstream_malformed_response", f"provider {account}: {exc}")
    if isinstance(exc, UpstreamTooLarge):
        return GatewayError(
            502,
            "upstream_response_too_large",
            f"provider {account} answered with more than {target.max_response_bytes} bytes "
            "(its max_response_bytes)",
        )
    if isinstance(exc, UpstreamRequestFailed):
        log.warning("request to provider %s not sent: %s", account, exc)
        return GatewayError(
            502, "upstream_request_failed", f"the request to provider {account} could not be sent"
        )
    return GatewayError(502, "upstream_auth_failed", str(exc))  # UpstreamCredentialsFailed


def _stream_failure(target: ModelTarget, exc: Exception) -> GatewayError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayError(
            504, "upstream_timeout", f"provider {target.account} stalled mid-stream"
        )
    if isinstance(exc, UpstreamMalformed | ValueError):
        return GatewayError(
            502, "upstream_malformed_response", f"provider {target.account} sent a malformed stream"
        )
    return GatewayError(
        502, "upstream_stream_broken", f"provider {target.account} ended the stream early"
    )

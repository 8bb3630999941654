"""The request path of DESIGN §1, stage by stage, over one ``RequestContext``.

    authenticate → identify → authorize → budget → rate limit → input guardrails
      → route → call provider → output guardrails → settle and record

Stages 6 and 9 (guardrails) arrive with their own issue and take their places in
``Pipeline.handle``; today the path is authenticate → read the request → identify → authorize →
budget and rate limit → route → call provider → settle. Every stage either adds facts to the
context or raises ``GatewayError``. Settle runs exactly once per request, whatever the outcome:
at the end of ``handle`` for a plain response, at the end of the relayed stream for a streaming
one (including a client that went away mid-stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from custos.audit.classes import declared_data_classes
from custos.context import Attempt, RequestContext
from custos.errors import ClientDisconnected, GatewayError
from custos.identity.directory import Directory
from custos.identity.jwt import looks_like_jwt
from custos.identity.principal import AuthFailure, Principal
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
from custos.runtime import Runtime
from custos.telemetry import metrics
from custos.wire import Usage

log = logging.getLogger("custos.pipeline")

if TYPE_CHECKING:
    from custos.limits import Limiter

Header = tuple[bytes, bytes]
_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
#: A provider's error body is read for its message only (500 characters of it are shown).
ERROR_BODY_BYTES = 64 * 1024


@dataclass(slots=True)
class GatewayResponse:
    status: int
    headers: list[Header]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)


ReadRequest = Callable[[RequestContext], Awaitable[None]]


class Pipeline:
    def __init__(
        self, transport: Transport, on_settled: Callable[[RequestContext], None] | None = None
    ) -> None:
        self.transport = transport
        self.on_settled = on_settled
        #: Runs first; raises ``GatewayError`` to refuse the request (the audit trail, while it
        #: cannot make records durable).
        self.admit: Callable[[RequestContext], None] | None = None
        #: Awaited after settling and before the response (a stream's last chunk) is released
        #: (the audit trail's strict durability).
        self.release: Callable[[RequestContext], Awaitable[None]] | None = None
        #: Set when the gateway has opened its store (``Gateway.start``).
        self.directory: Directory | None = None
        #: Budgets and rate limits (stages 4 and 5), set by ``Gateway.start``.
        self.limiter: Limiter | None = None
        #: Cooldowns and latencies of the targets (stage 7), kept across config revisions.
        self.health: TargetHealth = TargetHealth()

    async def handle(self, ctx: RequestContext, read_request: ReadRequest) -> GatewayResponse:
        """Run the path. Raises ``GatewayError`` for a stopped request, after settling it.

        ``read_request`` reads and checks the body into the context; it runs after
        authentication, so an unauthenticated caller costs no body parsing.
        """
        relayed = False
        try:
            if self.admit is not None:
                self.admit(ctx)
            await self.authenticate(ctx)
            await read_request(ctx)
            self.identify(ctx)
            self.authorize(ctx)
            if ctx.operation != "count_tokens":  # counting costs no tokens: no budget, no limit
                self.check_targets(ctx)
                await self.budget_and_rate_limit(ctx)
            route = self.route(ctx)
            response = await self.call_provider(ctx, route)
            if ctx.limits is not None:
                response.headers.extend(ctx.limits.headers)
            if ctx.applied:  # the ids of the rules that let it through (DESIGN §1)
                response.headers.append((b"x-custos-applied", ",".join(ctx.applied).encode()))
            relayed = response.stream is not None
            return response
        except GatewayError as err:
            ctx.status, ctx.error_code = err.status, err.code
            raise
        except (asyncio.CancelledError, ClientDisconnected):
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_disconnected"
            raise
        except Exception:
            ctx.status, ctx.error_code = 500, "internal_error"
            raise
        finally:
            if not relayed:
                self.settle(ctx)
                if self.release is not None:
                    await self.release(ctx)

    # -- stage 1: authenticate ------------------------------------------------------------------

    async def authenticate(self, ctx: RequestContext) -> Principal:
        """Bearer token → principal: a gateway token from memory, or an IdP's JWT."""
        ctx.principal = await self.principal_for(ctx.token, ctx.runtime)
        return ctx.principal

    async def principal_for(self, token: str | AuthFailure | None, runtime: Runtime) -> Principal:
        if self.directory is None:
            raise GatewayError(503, "not_ready", "The gateway is starting; try again shortly.")
        if isinstance(token, AuthFailure):  # refused while reading the headers
            raise token.to_error()
        if not token:
            raise GatewayError(
                401,
                "missing_api_key",
                "No API key: send 'Authorization: Bearer <token>' "
                "(or 'x-api-key' on /v1/messages).",
            )
        if runtime.jwt.idps and looks_like_jwt(token):
            found = await runtime.jwt.principal(token)
        else:
            found = self.directory.lookup(token)
        if isinstance(found, AuthFailure):
            raise found.to_error()
        return found

    # -- stage 2: identify ---------------------------------------------------------------------

    def identify(self, ctx: RequestContext) -> None:
        ctx.metadata = ctx.runtime.metadata.parse(ctx.metadata_headers)
        ctx.data_classes = declared_data_classes(ctx.metadata)

    # -- stage 3: authorize --------------------------------------------------------------------

    def authorize(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        assert principal is not None
        if not principal.may_use_model(ctx.model):
            narrowed = "token" if principal.token_models is not None else "virtual account"
            raise GatewayError(
                403,
                "model_not_allowed",
                f"The model '{ctx.model}' is outside what this {narrowed} may call.",
                param="model",
            )
        decision = ctx.runtime.access.decide(principal.subjects, ctx.model)
        if not decision.allowed:
            raise GatewayError(
                403,
                "model_not_allowed",
                f"The model '{ctx.model}' is not allowed for {principal.name}: {decision.reason}.",
                param="model",
            )
        assert decision.rule_id is not None
        ctx.applied.append(decision.rule_id)

    def check_targets(self, ctx: RequestContext) -> None:
        """Refuse a request the model's targets cannot serve as asked (a field that does not
        translate, state another account keeps) before it is charged to any limit: every
        target that translates builds its request once here, and a 400 stops the request."""
        route = ctx.runtime.routes.get(ctx.model)
        if route is None:
            return  # the route stage answers 404
        if ctx.operation == "responses":
            check_responses_state(ctx.body, route)
        for target in route.targets:
            adapter = target.adapter
            if adapter.wire != ctx.protocol and adapter.supports(ctx.operation):
                with contextlib.suppress(ValueError, TypeError):  # the attempt reports those
                    built = adapter.build_request(_provider_call(ctx, target))
                    if not adapter.needs_prepare:  # else built again after prepare (its token)
                        ctx.prebuilt = {**(ctx.prebuilt or {}), target.name: built}

    # -- stages 4 and 5: budget and rate limit -------------------------------------------------

    async def budget_and_rate_limit(self, ctx: RequestContext) -> None:
        """Stage 4 (every matching budget has room; a reservation of the estimated cost is
        taken) and stage 5 (the first matching rate limit has room), decided separately and
        taken together in one atomic step on the counters (``custos.limits``)."""
        if self.limiter is not None:
            await self.limiter.admit(ctx)

    # -- stage 7: route ------------------------------------------------------------------------

    def route(self, ctx: RequestContext) -> ModelRoute:
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

    # -- stage 8: call provider ----------------------------------------------------------------

    async def call_provider(self, ctx: RequestContext, route: ModelRoute) -> GatewayResponse:
        """Try the route's targets as ``custos.routing`` orders, retries and skips them."""
        return await call_route(ctx, route, self.health, partial(self._attempt, ctx, route))

    async def _attempt(
        self, ctx: RequestContext, route: ModelRoute, target: ModelTarget
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
                    return self._streaming(ctx, target, opened), None
                body = await upstream.read(target.max_response_bytes)
                parsed = target.adapter.parse_response(call, body)
        except (UpstreamTimeout, TimeoutError):
            if upstream is not None:
                upstream.close()
            err = GatewayError(
                504, "upstream_timeout", f"provider {target.account} did not answer in time"
            )
            return None, self._failed(attempt, err, started)
        except _StreamNotStarted as exc:
            upstream.close()  # type: ignore[union-attr]
            return None, self._failed(attempt, exc.error, started)
        except asyncio.CancelledError:  # the gateway stopping: no half-read response is kept
            if upstream is not None:
                upstream.close()
            raise
        except UpstreamUnreachable:
            err = GatewayError(
                502, "upstream_unreachable", f"could not reach provider {target.account}"
            )
            return None, self._failed(attempt, err, started)
        except UpstreamMalformed as exc:
            err = GatewayError(
                502, "upstream_malformed_response", f"provider {target.account}: {exc}"
            )
            return None, self._failed(attempt, err, started)
        except UpstreamTooLarge:
            err = GatewayError(
                502,
                "upstream_response_too_large",
                f"provider {target.account} answered with more than "
                f"{target.max_response_bytes} bytes (its max_response_bytes)",
            )
            return None, self._failed(attempt, err, started)
        except UpstreamRequestFailed as exc:
            log.warning("request to provider %s not sent: %s", target.account, exc)
            err = GatewayError(
                502,
                "upstream_request_failed",
                f"the request to provider {target.account} could not be sent",
            )
            return None, self._failed(attempt, err, started)
        except UpstreamCredentialsFailed as exc:
            err = GatewayError(502, "upstream_auth_failed", str(exc))
            return None, self._failed(attempt, err, started)
        attempt.latency_ms = (time.monotonic_ns() - started) // 1_000_000
        if ctx.operation != "count_tokens":  # a count is not a use of the model
            ctx.usage = parsed.usage or Usage(
                input_tokens=estimate_prompt_tokens(ctx.body), estimated=True
            )
        if ctx.capture is not None:
            ctx.capture.response = parsed.body
        ctx.status = 200
        headers = [_JSON, (b"x-custos-served-by", target.served_by)]
        return GatewayResponse(200, headers, parsed.body), None

    def _failed(self, attempt: Attempt, err: GatewayError, started: int) -> GatewayError:
        attempt.latency_ms = (time.monotonic_ns() - started) // 1_000_000
        attempt.error = err.code
        metrics.UPSTREAM_ATTEMPTS.labels(attempt.target.split("/", 1)[0], err.code).inc()
        return err

    def _streaming(
        self, ctx: RequestContext, target: ModelTarget, opened: _OpenedStream
    ) -> GatewayResponse:
        headers = [*_SSE, (b"x-custos-served-by", target.served_by)]
        return GatewayResponse(200, headers, stream=self._relay(ctx, target, opened))

    async def _relay(
        self, ctx: RequestContext, target: ModelTarget, opened: _OpenedStream
    ) -> AsyncIterator[bytes]:
        """Relay one upstream stream to the client, then settle, whatever happened."""
        translator, decoder, upstream = opened.translator, opened.decoder, opened.upstream
        capture = ctx.capture
        metrics.ACTIVE_STREAMS.inc()
        target_failed: bool | None = None
        try:
            if capture is not None:
                capture.feed(opened.first)
            yield opened.first
            async for chunk in opened.chunks:
                out = b"".join(translator.feed(event) for event in decoder.feed(chunk))
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
                ctx.attempts[-1].error = ctx.error_code
                return
            if not translator.complete:
                raise UpstreamUnreachable("the provider ended the stream early")
            target_failed = False
            last = tail + translator.finish()
            if capture is not None:
                capture.feed(last)
            ctx.status = 200
            # Settled before the last chunk goes out, so that a strict audit trail can hold
            # the chunk until the record is durable.
            self._stream_usage(ctx, translator)
            self.settle(ctx)
            if self.release is not None:
                try:
                    await self.release(ctx)
                except GatewayError as err:  # the 200 is sent: the refusal goes in the stream
                    yield translator.error_event(ctx.protocol, err)
                    return
            yield last
        except (UpstreamTimeout, UpstreamUnreachable, UpstreamMalformed, ValueError) as exc:
            target_failed = True
            err = _stream_failure(target, exc)
            ctx.status, ctx.error_code = err.status, err.code
            ctx.attempts[-1].error = err.code
            yield translator.error_event(ctx.protocol, err)
        except (asyncio.CancelledError, GeneratorExit):
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_disconnected"
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
                self._stream_usage(ctx, translator)
                self.settle(ctx)

    def _stream_usage(self, ctx: RequestContext, translator: StreamTranslator) -> None:
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

    # -- stage 10: settle and record -----------------------------------------------------------

    def settle_unrelayed(self, ctx: RequestContext) -> None:
        """Settle a streaming request whose stream never started: its client left first."""
        if not ctx.settled:
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_disconnected"
            self.settle(ctx)

    def settle(self, ctx: RequestContext) -> None:
        """Charge the actual usage and emit the request's one terminal record (once: a second
        call does nothing)."""
        if ctx.settled:
            return
        ctx.settled = True
        if ctx.usage is not None and ctx.served is not None:
            ctx.cost_micros = ctx.served.price.cost_micros(ctx.usage)
            model = ctx.served.name
            metrics.child(metrics.TOKENS, model, "input").inc(ctx.usage.input_tokens)
            metrics.child(metrics.TOKENS, model, "output").inc(ctx.usage.output_tokens)
            metrics.child(metrics.COST, model).inc(ctx.cost_micros)
        if self.limiter is not None:
            self.limiter.settle(ctx)  # the reservation becomes the actual cost
        if ctx.error_code is not None:
            metrics.DENIALS.labels(ctx.error_code).inc()
        if self.on_settled is not None:
            self.on_settled(ctx)


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

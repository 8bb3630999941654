"""The contract of a stage of the governance chain, and of the terminal behind it.

Every request crosses one chain (``custos.chain``): a fixed list of **stages** in front of a
**terminal**. A stage is an object with a ``name`` (the ``StageName`` its decisions and
refusals carry) and any of the hooks below; a hook it does not define costs nothing, because
the chain is compiled per config revision into one list per hook holding only the stages that
define it (and only the stages the revision switches on).

What a stage may do, hook by hook:

``enter(ctx)`` (plain or ``async``), in chain order, before the terminal is called
    Read the context and add to it (the principal, metadata, data classes, a reservation);
    change the request (``ctx.body``) when it is a mutating stage; append one ``Decision`` per
    rule it applied, at the moment it decides; refuse by raising ``GatewayError`` — the chain
    records the stage that raised as ``ctx.stopped_at``, so the refusal needs no stage of its
    own. A refusing stage appends its ``deny`` decision before raising.
``on_response(ctx, response)`` (plain or ``async``), in reverse chain order, on the answer
    Observe or change a plain response, or a stream's status and headers (the limits stage adds
    ``x-ratelimit-*``); refuse it by raising ``GatewayError``. It runs for served requests only.
``async on_chunk(ctx, chunk, last) -> bytes``, in reverse chain order, on each chunk of a stream
    Return the bytes to send now (the same, changed, or ``b""`` to hold them back; held bytes
    must be sent by the call with ``last`` true, the stream's end). Raising ``GatewayError``
    ends the stream with an error event in the caller's protocol (its 200 is already sent).
``ctx.pending_checks``
    A stage's ``enter`` may leave futures there instead of deciding at once (a check that calls
    out): the chain runs the terminal beside them, holds the answer until every one passed, and
    cancels the call when one refuses (raises ``GatewayError``).
``settle(ctx)``, exactly once per request, in reverse chain order, whatever the outcome
    Turn the outcome into effects: the limits stage charges the actual cost, then the audit
    stage (entered first, so settled last) records the request. By now ``ctx.status``,
    ``error_code``, ``stopped_at``, ``usage`` and ``cost_micros`` are final. Must not raise.
``release(ctx)`` (``async``), after settling, before the response or a stream's last chunk goes
    Hold the answer back until the stage is satisfied (the audit stage with ``durability:
    strict`` waits until the record is durable); raise ``GatewayError`` to replace it.

What a stage must never do: block the event loop (no synchronous I/O, no CPU-heavy work that
grows with the request; hand such work to a thread or a background task), make a database
round trip on the path (read what it needs from memory built per revision or kept warm by a
background task; Redis counters are the one network hop the path allows), or keep a reference to
the context after ``settle`` (the audit stage's batch is the exception it documents).

A stage that limits the length of a prompt, for instance::

    class PromptLength:
        name = "guardrails"

        def __init__(self, rule_id: str, max_chars: int) -> None:
            self.rule_id, self.max_chars = rule_id, max_chars

        def enter(self, ctx: RequestContext) -> None:
            length = len(ctx.raw_body)
            if length > self.max_chars:
                ctx.decisions.append(Decision(self.name, self.rule_id, "deny",
                                              input={"chars": length}))
                raise GatewayError(400, "guardrail_blocked", f"blocked by {self.rule_id}")
            ctx.decisions.append(Decision(self.name, self.rule_id, "allow"))

The **terminal** answers the request once every stage let it through: the LLM router and its
providers today (``custos.terminals.llm``), an MCP proxy next. ``prepare(ctx)`` runs before the
stages that charge the request (budgets and rate limits), so that a request the terminal cannot
serve as asked (an unknown model, a field a target cannot translate) is refused without being
charged; ``call(ctx, chain)`` returns a ``GatewayResponse``. A streaming answer's ``stream`` is a
``GovernedStream`` (``custos.chain.stream``): closing it settles the request, whether or not it
was ever iterated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from custos.context import RequestContext, StageName

Header = tuple[bytes, bytes]


@dataclass(slots=True)
class GatewayResponse:
    """What the chain answers: a status, headers, and a body or a stream of chunks."""

    status: int
    headers: list[Header]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: A stream's clean-up when it is closed, run after its generator is: what must happen
    #: even if the generator never started (its ``finally`` then never runs).
    on_close: Callable[[], None] | None = None
    #: ``body`` as parsed JSON when the terminal has it (``ParsedResponse.parsed``); a stage
    #: that rewrites ``body`` sets both or clears this.
    parsed: dict[str, Any] | None = None


class Stage(Protocol):
    """A stage of the chain: its ``name`` and any of the hooks the module docstring lists
    (``enter``, ``on_response``, ``on_chunk``, ``settle``, ``release``)."""

    name: StageName


class StreamCloser(Protocol):
    """What a chain offers the terminal's stream: settling, and holding the last chunk."""

    def settle(self, ctx: RequestContext) -> None: ...

    def release(self, ctx: RequestContext) -> Awaitable[None]: ...

    def on_chunk(self, ctx: RequestContext, chunk: bytes, last: bool) -> Awaitable[bytes]: ...

    #: Whether any stage looks at stream chunks (else ``on_chunk`` need not be called).
    chunk_hooks: tuple[object, ...]


class Terminal(Protocol):
    """What answers a request once the stages let it through (see the module docstring)."""

    def prepare(self, ctx: RequestContext) -> None: ...

    def call(self, ctx: RequestContext, chain: StreamCloser) -> Awaitable[GatewayResponse]: ...

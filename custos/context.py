"""The request context: what one request is, and every fact the request path adds to it.

Each stage of the path (DESIGN §1) reads the context, may add facts, and passes or stops the
request. After the path has run, the context is what the audit record is made from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from custos.wire import ApiProtocol, Operation, Usage

if TYPE_CHECKING:
    from custos.audit.records.content import ContentCapture
    from custos.identity.principal import AuthFailure, Principal
    from custos.limits import Metering
    from custos.routing.targets import ModelRoute, ModelTarget
    from custos.runtime import Runtime


@dataclass(slots=True)
class Attempt:
    """One upstream call made for this request."""

    target: str
    status: int | None = None
    latency_ms: int = 0
    error: str | None = None
    started_ns: int = field(default_factory=time.monotonic_ns)


@dataclass(frozen=True, slots=True)
class Skip:
    """A target routing passed over without trying it, and why (``cooldown``)."""

    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class DataClassHit:
    """A class of data the request carries: a class name and count, never a value."""

    name: str
    #: How many occurrences; ``None`` when the source did not say.
    count: int | None
    #: ``declared`` (the caller's metadata) or the detector that found it.
    source: str


#: The stages of the path, as decisions and refusals name them (``custos.stage``).
StageName = Literal[
    "audit", "authenticate", "read_request", "identify", "classify", "authorize", "route",
    "budget", "rate_limit", "guardrails", "provider", "client", "gateway",
]  # fmt: skip
#: What a stage decided: let the request through, refuse it, change it, or (a rule in audit
#: mode) let it through though the rule would have refused it.
Outcome = Literal["allow", "deny", "mutate", "audit_only"]


class Decision(NamedTuple):
    """One stage's decision about one request, appended where it is made (OPA's decision log
    model: the decision, the rule that made it and the input it was made on). The audit record's
    ``decisions`` is exactly the request's list of these, in the order they were made.

    A named tuple, immutable as a frozen dataclass would be, but made in a fifth of the time
    (a frozen dataclass sets each field through ``object.__setattr__``), and a request makes
    several."""

    stage: StageName
    #: The id of the config rule that decided; ``None`` for a default (access is default deny).
    rule: str | None
    outcome: Outcome
    #: Why, when the outcome alone does not say: ``over_limit`` (audit mode), ``fail_open`` /
    #: ``counters_down`` (the counters were unreachable), ``no_grant``, ``token_scope``, ...
    reason: str | None = None
    #: What the decision was made on, beyond the request itself (a reservation's amount, the
    #: units a window was charged, what a guardrail found as counts per kind); JSON-ready
    #: values only, never a value taken from the request's content.
    input: dict[str, Any] | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    protocol: ApiProtocol
    operation: Operation
    runtime: Runtime
    #: The bearer credential as presented (never logged, never recorded).
    token: str | AuthFailure | None = field(default=None, repr=False)
    #: The metadata headers as sent, (name, value) pairs (``custos.policy.metadata``).
    metadata_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: The provider headers the client sent that may be passed on, checked
    #: (``custos.providers.client_headers``).
    client_headers: tuple[tuple[str, str], ...] = ()
    # Filled by reading the request (after authentication):
    raw_body: bytes = field(default=b"", repr=False)
    body: dict[str, Any] = field(default_factory=dict, repr=False)
    model: str = ""
    stream: bool = False
    # Filled by the stages:
    principal: Principal | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    started_ns: int = field(default_factory=time.monotonic_ns)
    started_unix_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    #: The client asked for a usage chunk at the end of its stream.
    client_wants_usage: bool = False
    #: The route the terminal's ``prepare`` found, its targets narrowed to those residency
    #: allows (``None`` before it ran).
    route: ModelRoute | None = None
    served: ModelTarget | None = None
    attempts: list[Attempt] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    #: Set by routing for a relayed stream: told at the stream's end whether the target failed.
    report_outcome: Callable[[bool], None] | None = field(default=None, repr=False)
    usage: Usage | None = None
    cost_micros: int = 0
    status: int = 0
    error_code: str | None = None
    first_byte_ns: int | None = None
    client_disconnected: bool = False
    #: Every stage's decision, in the order made (``Decision``).
    decisions: list[Decision] = field(default_factory=list)
    #: The stage that stopped the request (``None`` while it goes on, and for a served one).
    stopped_at: StageName | None = None
    #: Stages 4 and 5 (budget, rate limit): decisions per rule id, the reservation to settle,
    #: the ``x-ratelimit-*`` headers. ``None`` when no budget or rate limit applied.
    limits: Metering | None = None
    data_classes: list[DataClassHit] = field(default_factory=list)
    #: The version of the detectors that found ``detected`` data classes (``None``: none ran).
    data_class_detectors: str | None = None
    #: Set by ``GovernanceChain.settle``, which runs once per request.
    settled: bool = False
    #: Upstream requests already built by ``Pipeline.check_targets`` (translated targets only),
    #: by target name, so an attempt does not translate the body a second time.
    prebuilt: dict[str, Any] | None = field(default=None, repr=False)
    #: Checks a stage started that must pass before the answer is released (a webhook
    #: guardrail validating the request while the provider works): awaited by the chain.
    pending_checks: list[Any] = field(default_factory=list, repr=False)
    #: The guardrail stages' state for this request (``custos.guardrails``): the placeholder
    #: numbering, the output guard of a stream.
    guards: Any = field(default=None, repr=False)
    #: Content capture (``audit.content`` other than ``none``): the response goes here.
    capture: ContentCapture | None = field(default=None, repr=False)
    #: An MCP tool call (``custos.mcp.call.ToolCall``): the server, the tool, its arguments
    #: and what came back. ``None`` on the model routes.
    mcp: Any = field(default=None, repr=False)

    @property
    def latency_ms(self) -> int:
        return (time.monotonic_ns() - self.started_ns) // 1_000_000

    @property
    def applied(self) -> list[str]:
        """The ids of the rules that let the request through, in order (``x-custos-applied``)."""
        return [d.rule for d in self.decisions if d.rule is not None and d.outcome != "deny"]

    @property
    def time_to_first_chunk_ms(self) -> int | None:
        if self.first_byte_ns is None:
            return None
        return (self.first_byte_ns - self.started_ns) // 1_000_000

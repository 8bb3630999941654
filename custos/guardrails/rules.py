"""Guardrails compiled for one config revision, and what one of them decides about one text.

``compile_guardrails(settings)`` turns the ``guardrails:`` list into ``Guardrail`` objects (built
once per revision, when the gateway builds the revision's chain, and never changed). A content
guardrail holds a detector (``custos.guardrails.detectors``); ``inspect`` runs it over a call's
text slots and, for ``mutate``, rewrites them with typed placeholders numbered per request
(``<EMAIL_1>`` is the same address everywhere in one request).

A ``cedar``/``opa`` guardrail holds a ``policy`` (``custos.guardrails.policy``) that decides
whether a principal may make a call; ``policy.decide`` gives a ``PolicyDecision``.

What a content guardrail decided is a ``Verdict``, turned into the request's ``Decision`` (stage
``guardrails``, the guardrail's id, ``allow``/``deny``/``mutate``/``audit_only``, and as input its
hook, what it found as counts per kind — never a value — and how long it took).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from custos.config.guardrails import POLICY_TYPES, GuardrailSettings
from custos.context import Decision, Outcome
from custos.errors import GatewayError
from custos.guardrails import detectors
from custos.guardrails.policy import build_policy
from custos.guardrails.text import TextSlot
from custos.policy.when import When

if TYPE_CHECKING:
    from custos.guardrails.policy import GuardrailPolicy
    from custos.providers.transport import Transport

#: A webhook guardrail's call (``custos.guardrails.webhook.WebhookCheck``): the payload and the
#: number of texts in → (blocked, the texts rewritten or ``None``); raises ``GuardrailFailed``.
RemoteCheck = Callable[[dict[str, Any], int], Awaitable[tuple[bool, list[str] | None]]]

Enforcing = Literal["enforce", "enforce_but_ignore_on_error", "audit"]


class GuardrailFailed(Exception):
    """The guardrail itself could not decide (an error, a timeout, a webhook's bad answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verdict:
    """What one guardrail found in one call, and whether it changed the text. (A plain class:
    one is made per guardrail and request, and a dataclass's default factories cost more.)"""

    __slots__ = ("changed", "failure", "found", "started_ns")

    def __init__(self, failure: str | None = None) -> None:
        #: Kind → how many were found (a plain dict: a ``Counter`` costs more to make than the
        #: whole check of a short prompt).
        self.found: dict[str, int] = {}
        self.changed = False
        #: Why the guardrail could not decide (``timeout``, ``error``, ``bad_answer``).
        self.failure = failure
        self.started_ns = time.monotonic_ns()


@dataclass(frozen=True, slots=True)
class Guardrail:
    id: str
    hook: str
    type: str
    operation: Literal["validate", "mutate"]
    enforcing: Enforcing
    when: When
    timeout_s: float
    #: Content guardrails: what finds things in text.
    detector: detectors.Detector | None = None
    #: ``metadata`` guardrails.
    required: tuple[str, ...] = ()
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: ``webhook`` guardrails.
    webhook: RemoteCheck | None = None
    #: ``cedar``/``opa`` guardrails: ``await policy.decide(PolicyRequest)``.
    policy: GuardrailPolicy | None = None
    #: Streams: how many characters of a stream's text are held back, so that a value split
    #: across chunks is found before any of it goes out.
    window_chars: int = 256

    @property
    def remote(self) -> bool:
        return self.webhook is not None

    # -- content --------------------------------------------------------------------------------

    def inspect(self, slots: Sequence[TextSlot], numbering: detectors.Numbering) -> Verdict:
        """Run the detector over every slot; a ``mutate`` guardrail that enforces rewrites what
        it found (an ``audit`` one only counts)."""
        verdict = Verdict()
        assert self.detector is not None
        rewrite = self.operation == "mutate" and self.enforcing != "audit"
        for slot in slots:
            text = slot.text
            findings = self.detector.find(text)
            if not findings:
                continue
            for finding in findings:
                verdict.found[finding.kind] = verdict.found.get(finding.kind, 0) + 1
            if rewrite:
                slot.replace(detectors.redact(text, findings, numbering))
                verdict.changed = True
        return verdict

    def check_metadata(self, metadata: Mapping[str, str]) -> Verdict:
        verdict = Verdict()
        for key in self.required:
            if key not in metadata:
                verdict.found[f"metadata.missing.{key}"] = 1
        for key, values in self.allowed.items():
            value = metadata.get(key)
            if value is not None and value not in values:
                verdict.found[f"metadata.value.{key}"] = 1
        return verdict

    # -- the decision ---------------------------------------------------------------------------

    def decide(self, verdict: Verdict, hook: str) -> tuple[Decision, GatewayError | None]:
        """The decision to record, and the refusal to raise (``None``: the call goes on)."""
        latency_us = (time.monotonic_ns() - verdict.started_ns) // 1000
        found = verdict.found
        record: dict[str, Any] = {"hook": hook, "found": dict(found) if found else {},
                                  "latency_us": latency_us}  # fmt: skip
        if verdict.failure is None and not found:  # what most calls take: first, and cheapest
            return Decision("guardrails", self.id, "allow", None, record), None
        if verdict.failure is not None:
            record["error"] = verdict.failure
            if self.enforcing == "enforce":
                refusal = GatewayError(
                    503,
                    "guardrail_unavailable",
                    f"The guardrail '{self.id}' could not check this request; try again shortly.",
                    stage="guardrails",
                )
                return Decision("guardrails", self.id, "deny", verdict.failure, record), refusal
            outcome: Outcome = "allow" if self.enforcing != "audit" else "audit_only"
            return Decision("guardrails", self.id, outcome, verdict.failure, record), None
        if self.enforcing == "audit":
            return Decision("guardrails", self.id, "audit_only", "found", record), None
        if self.operation == "mutate":
            return Decision("guardrails", self.id, "mutate", None, record), None
        return Decision("guardrails", self.id, "deny", "found", record), blocked(self.id)


def blocked(guardrail_id: str) -> GatewayError:
    """The refusal of a call a guardrail blocked: names the guardrail, never what it found."""
    return GatewayError(
        400,
        "guardrail_blocked",
        f"The request was blocked by the guardrail '{guardrail_id}'.",
        stage="guardrails",
    )


def compile_guardrails(
    settings: Sequence[GuardrailSettings], webhooks: Any = None, transport: Transport | None = None
) -> tuple[Guardrail, ...]:
    """Every guardrail of a revision, in file order. ``webhooks`` makes a webhook guardrail's
    check (the gateway's HTTP client): ``None`` leaves webhook guardrails failing closed.
    ``transport`` is the HTTP client of a remote OPA (``None``: it opens its own)."""
    compiled = []
    for rule in settings:
        detector = None
        if rule.type not in ("metadata", "webhook", *POLICY_TYPES):
            detector = detectors.for_guardrail(rule)
        webhook = None
        if rule.type == "webhook" and webhooks is not None:
            webhook = webhooks(rule)
        policy = build_policy(rule, transport) if rule.type in POLICY_TYPES else None
        compiled.append(
            Guardrail(
                id=rule.id,
                hook=rule.hook,
                type=rule.type,
                operation=rule.operation,
                enforcing=rule.enforcing,
                when=When.compile(rule.when),
                timeout_s=rule.timeout_ms / 1000,
                detector=detector,
                required=tuple(rule.required),
                allowed={k: frozenset(v) for k, v in rule.allowed.items()},
                webhook=webhook,
                policy=policy,
                window_chars=rule.stream_window_chars,
            )
        )
    return tuple(compiled)

"""What a policy is asked (``PolicyRequest``), what its engine answers (``PolicyVerdict``) and what
the guardrail decides from that (``PolicyDecision``, its ``enforcing`` applied)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from custos.context import Decision, Outcome
from custos.errors import GatewayError

Enforcing = Literal["enforce", "enforce_but_ignore_on_error", "audit"]


@dataclass(frozen=True)
class PolicyRequest:
    """One call to decide on; JSON-ready values only (it is OPA's ``input`` as is).

    - ``principal``: ``{"type": "User" | "VirtualAccount", "id": <email or account name>,
      "uid": <internal id>, "teams": [...], "roles": [...]}`` (``request.principal_of``)
    - ``action``: ``"call_tool"`` or ``"call_model"``
    - ``resource``: ``{"type": "Tool", "server": ..., "name": ..., "arguments": {...}}`` or
      ``{"type": "Model", "name": ...}``
    - ``context``: ``{"metadata": {...}, "data_classes": [...], "time": <ISO 8601, UTC>}``
    """

    principal: dict[str, Any]
    action: str
    resource: dict[str, Any]
    context: dict[str, Any]

    def as_input(self) -> dict[str, Any]:
        return {"principal": self.principal, "action": self.action, "resource": self.resource,
                "context": self.context}  # fmt: skip


class PolicyFailed(Exception):
    """The engine could not decide (``timeout``, ``unreachable``, ``status_503``,
    ``bad_answer``, ``error``); the guardrail's ``enforcing`` says what the call does."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """What a policy engine answered."""

    allow: bool
    #: The rule that decided (``None``: a default, e.g. Cedar's "no policy permits").
    rule: str | None
    reason: str


class PolicyEngine(Protocol):
    #: ``cedar``, ``rego`` (OPA in process) or ``opa-remote``.
    engine: str
    #: The policy files' digest (in process) or the OPA server's address and query (remote).
    revision: str

    async def evaluate(self, request: PolicyRequest) -> PolicyVerdict:
        """The policy's answer; raises ``PolicyFailed``."""
        ...


@dataclass(frozen=True)
class PolicyDecision:
    """What a ``cedar``/``opa`` guardrail decided about one call."""

    #: Whether the call may go on (the guardrail's ``enforcing`` applied).
    allowed: bool
    #: The guardrail's id.
    policy_id: str
    #: The policy rule that decided (a Cedar ``@id``, an OPA decision's ``rule``), or ``None``.
    rule: str | None
    #: Why, in words (recorded, never shown to the caller).
    reason: str
    #: What the policy said: ``allow``, ``deny``, or ``error`` (it could not decide).
    verdict: Literal["allow", "deny", "error"] = "allow"
    #: Why the engine could not decide (``timeout``, ``unreachable``, ...), when it could not.
    failure: str | None = None
    enforcing: Enforcing = "enforce"
    engine: str = ""
    #: The policy revision it was made with (the digest of the guardrail's policy files).
    revision: str = ""
    latency_us: int = 0

    @property
    def outcome(self) -> Outcome:
        if self.verdict == "allow":
            return "allow"
        if self.enforcing == "audit":
            return "audit_only"
        return "allow" if self.allowed else "deny"

    def to_decision(self, hook: str) -> Decision:
        """The audit record's decision (stage ``guardrails``, rule = the guardrail's id)."""
        record: dict[str, Any] = {
            "hook": hook,
            "engine": self.engine,
            "policy_revision": self.revision,
            "verdict": self.verdict,
            "policy_rule": self.rule,
            "policy_reason": self.reason,
            "latency_us": self.latency_us,
        }
        if self.failure is not None:
            record["error"] = self.failure
        reason = self.failure if self.failure is not None else (
            None if self.verdict == "allow" else "denied"
        )  # fmt: skip
        return Decision("guardrails", self.policy_id, self.outcome, reason, record)

    def refusal(self) -> GatewayError | None:
        """The error to answer with when the call may not go on (``None`` when it may)."""
        if self.allowed:
            return None
        if self.verdict == "error":
            return GatewayError(
                503,
                "guardrail_unavailable",
                f"The guardrail '{self.policy_id}' could not check this request; try again "
                "shortly.",
                stage="guardrails",
            )
        rule = f" (policy rule '{self.rule}')" if self.rule else ""
        return GatewayError(
            400,
            "guardrail_blocked",
            f"The request was blocked by the guardrail '{self.policy_id}'{rule}.",
            stage="guardrails",
        )

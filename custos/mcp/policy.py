"""What a policy guardrail (``cedar``, ``opa``) is asked about a tool call at
``mcp_tool_pre_invoke``, and how its answer becomes the call's decision.

A guardrail whose ``policy`` is set answers ``await policy.decide(request)`` with a decision
(``allowed``, ``policy_id``, ``rule``, ``reason``). The request is built here from the call:

- ``principal``: ``{"type": "User" | "VirtualAccount", "id", "name", "teams": [...]}``;
- ``action``: ``"call_tool"``;
- ``resource``: ``{"type": "Tool", "server", "name", "arguments"}`` (the arguments as the
  server would get them, after earlier ``mutate`` guardrails);
- ``context``: ``{"metadata": {...}, "data_classes": [...], "time": RFC 3339 UTC}``.

``PolicyRequest`` has the fields of the policy package's own request type, which takes them
by name; a denial is the JSON-RPC error ``policy_denied`` naming the guardrail, the policy and
its rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from custos.context import Decision, Outcome, RequestContext
from custos.errors import GatewayError
from custos.guardrails.rules import Guardrail
from custos.telemetry import metrics

log = logging.getLogger("custos.mcp")

PRE_INVOKE = "mcp_tool_pre_invoke"


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    principal: dict[str, Any]
    action: str
    resource: dict[str, Any]
    context: dict[str, Any]


def policy_request(ctx: RequestContext) -> PolicyRequest:
    principal, call = ctx.principal, ctx.mcp
    assert principal is not None and call is not None
    kind = "User" if principal.kind == "user" else "VirtualAccount"
    return PolicyRequest(
        principal={
            "type": kind,
            "id": principal.id,
            "name": principal.name,
            "teams": list(principal.teams),
        },
        action="call_tool",
        resource={
            "type": "Tool",
            "server": call.server,
            "name": call.tool,
            "arguments": call.arguments,
        },
        context={
            "metadata": dict(ctx.metadata),
            "data_classes": sorted({d.name for d in ctx.data_classes}),
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
    )


async def decide_by_policy(ctx: RequestContext, guardrail: Guardrail, policy: Any) -> None:
    """Ask the guardrail's policy; append its decision; raise its refusal."""
    started = time.monotonic_ns()
    record: dict[str, Any] = {"hook": PRE_INVOKE}
    decided = None
    try:
        async with asyncio.timeout(guardrail.timeout_s):
            decided = await policy.decide(policy_request(ctx))
    except TimeoutError:
        record["error"] = "timeout"
    except Exception:
        log.exception("policy guardrail %s failed", guardrail.id)
        record["error"] = "error"
    record["latency_us"] = (time.monotonic_ns() - started) // 1000
    refusal: GatewayError | None = None
    reason: str | None = None
    if decided is None:
        reason = record["error"]
        outcome: Outcome = "deny" if guardrail.enforcing == "enforce" else "allow"
        if guardrail.enforcing == "audit":
            outcome = "audit_only"
        if outcome == "deny":
            refusal = GatewayError(
                503,
                "guardrail_unavailable",
                f"The policy guardrail '{guardrail.id}' could not decide; try again shortly.",
                stage="guardrails",
            )
    else:
        record["policy"] = decided.policy_id
        record["policy_rule"] = decided.rule
        if decided.allowed:
            outcome = "allow"
        elif guardrail.enforcing == "audit":
            outcome, reason = "audit_only", "denied"
        else:
            outcome, reason = "deny", "denied"
            rule = f", rule '{decided.rule}'" if decided.rule else ""
            refusal = GatewayError(
                403,
                "policy_denied",
                f"The tool call was denied by the guardrail '{guardrail.id}' (policy "
                f"'{decided.policy_id}'{rule}): {decided.reason}",
                stage="guardrails",
            )
    ctx.decisions.append(Decision("guardrails", guardrail.id, outcome, reason, record))
    metrics.GUARDRAIL_VERDICTS.labels(guardrail.id, PRE_INVOKE, outcome).inc()
    if refusal is not None:
        raise refusal

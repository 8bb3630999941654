"""What a policy guardrail (``cedar``, ``opa``) is asked about a tool call at
``mcp_tool_pre_invoke``, and how its answer becomes the call's decision.

A guardrail whose ``policy`` is set (``custos.guardrails.policy``) answers
``await policy.decide(request)`` with a ``PolicyDecision``. The request is the policy package's
``call_tool`` request: the caller, the tool with its arguments as the server would get them
(after earlier ``mutate`` guardrails), and the request's metadata, data classes and time
(docs/policy.md has the documents). A denial is the JSON-RPC error ``policy_denied`` naming the
guardrail and the policy rule; a policy that cannot decide follows the guardrail's
``enforcing``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from custos.context import Decision, Outcome, RequestContext
from custos.errors import GatewayError
from custos.guardrails.policy.decision import PolicyDecision, PolicyRequest
from custos.guardrails.policy.request import context_of, tool_call
from custos.guardrails.rules import Guardrail
from custos.telemetry import metrics

log = logging.getLogger("custos.mcp")

PRE_INVOKE = "mcp_tool_pre_invoke"


def policy_request(ctx: RequestContext) -> PolicyRequest:
    call = ctx.mcp
    assert call is not None
    return tool_call(ctx.principal, call.server, call.tool, call.arguments, context_of(ctx))


async def decide_by_policy(ctx: RequestContext, guardrail: Guardrail, policy: Any) -> None:
    """Ask the guardrail's policy; append its decision; raise its refusal."""
    started = time.monotonic_ns()
    try:
        async with asyncio.timeout(guardrail.timeout_s):
            decided: PolicyDecision = await policy.decide(policy_request(ctx))
    except Exception as exc:  # GuardrailPolicy never raises; a timeout or another policy may
        if not isinstance(exc, TimeoutError):
            log.exception("policy guardrail %s failed", guardrail.id)
        failure = "timeout" if isinstance(exc, TimeoutError) else "error"
        latency_us = (time.monotonic_ns() - started) // 1000
        _failed(ctx, guardrail, failure, latency_us)
        return
    record = {**decided.to_decision(PRE_INVOKE).input, "policy": decided.policy_id}
    outcome = decided.outcome
    reason = None if outcome == "allow" and decided.verdict == "allow" else (
        decided.failure or "denied"
    )  # fmt: skip
    ctx.decisions.append(Decision("guardrails", guardrail.id, outcome, reason, record))
    metrics.child(metrics.GUARDRAIL_VERDICTS, guardrail.id, PRE_INVOKE, outcome).inc()
    if decided.allowed:
        return
    if decided.verdict == "error":
        raise _unavailable(guardrail)
    rule = f", rule '{decided.rule}'" if decided.rule else ""
    raise GatewayError(
        403,
        "policy_denied",
        f"The tool call was denied by the guardrail '{guardrail.id}' (policy "
        f"'{decided.policy_id}'{rule}).",
        stage="guardrails",
    )


def _failed(ctx: RequestContext, guardrail: Guardrail, failure: str, latency_us: int) -> None:
    """A policy that did not answer: recorded, and refused only under ``enforce``."""
    outcome: Outcome = {"enforce": "deny", "audit": "audit_only"}.get(guardrail.enforcing, "allow")  # type: ignore[assignment]
    record = {"hook": PRE_INVOKE, "error": failure, "latency_us": latency_us}
    ctx.decisions.append(Decision("guardrails", guardrail.id, outcome, failure, record))
    metrics.child(metrics.GUARDRAIL_VERDICTS, guardrail.id, PRE_INVOKE, outcome).inc()
    if outcome == "deny":
        raise _unavailable(guardrail)


def _unavailable(guardrail: Guardrail) -> GatewayError:
    return GatewayError(
        503,
        "guardrail_unavailable",
        f"The policy guardrail '{guardrail.id}' could not decide; try again shortly.",
        stage="guardrails",
    )

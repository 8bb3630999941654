"""Policy as code: ``cedar`` and ``opa`` guardrails deciding whether a principal may make a call.

The contract every caller uses (the model hook here, the MCP gateway's ``mcp_tool_pre_invoke``):
build a ``PolicyRequest`` (``custos.guardrails.policy.request`` builds one for a model call),
``await guardrail.policy.decide(request)``, and act on the ``PolicyDecision``:

- ``allowed``: whether the call may go on, the guardrail's ``enforcing`` already applied (an
  ``audit`` guardrail's denial is allowed and recorded; an engine that could not decide blocks
  under ``enforce`` only);
- ``policy_id`` (the guardrail's id), ``rule`` (the policy rule that decided: a Cedar policy's
  ``@id``, the ``rule`` of an OPA decision document; ``None`` for a default) and ``reason``;
- ``to_decision(hook)`` the audit record's ``Decision``, ``refusal()`` the error to answer with.

docs/policy.md documents the Cedar schema and the OPA input document.
"""

from __future__ import annotations

from custos.guardrails.policy.decision import (
    PolicyDecision,
    PolicyEngine,
    PolicyRequest,
    PolicyVerdict,
)
from custos.guardrails.policy.guardrail import GuardrailPolicy, build_policy

__all__ = [
    "GuardrailPolicy",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyRequest",
    "PolicyVerdict",
    "build_policy",
]

"""A ``cedar``/``opa`` guardrail's policy: its engine, asked and answered with ``enforcing``."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from custos.config.guardrails import GuardrailSettings
from custos.guardrails.policy.decision import (
    Enforcing,
    PolicyDecision,
    PolicyEngine,
    PolicyFailed,
    PolicyRequest,
)

if TYPE_CHECKING:
    from custos.providers.transport import Transport

log = logging.getLogger("custos.guardrails")


class GuardrailPolicy:
    """``decide(request)``: the guardrail's decision about one call. Never raises: an engine
    that cannot decide is a decision too (``verdict="error"``), allowed unless ``enforce``."""

    def __init__(self, guardrail_id: str, engine: PolicyEngine, enforcing: Enforcing) -> None:
        self.guardrail_id = guardrail_id
        self.engine = engine
        self.enforcing = enforcing

    async def decide(self, request: PolicyRequest) -> PolicyDecision:
        started = time.monotonic_ns()
        common = {"policy_id": self.guardrail_id, "enforcing": self.enforcing,
                  "engine": self.engine.engine, "revision": self.engine.revision}  # fmt: skip
        try:
            verdict = await self.engine.evaluate(request)
        except PolicyFailed as exc:
            return PolicyDecision(
                allowed=self.enforcing != "enforce",
                rule=None,
                reason=f"the policy engine could not decide: {exc.reason}",
                verdict="error",
                failure=exc.reason,
                latency_us=(time.monotonic_ns() - started) // 1000,
                **common,  # type: ignore[arg-type]
            )
        except Exception:
            log.exception("policy guardrail %s failed", self.guardrail_id)
            return PolicyDecision(
                allowed=self.enforcing != "enforce",
                rule=None,
                reason="the policy engine failed",
                verdict="error",
                failure="error",
                latency_us=(time.monotonic_ns() - started) // 1000,
                **common,  # type: ignore[arg-type]
            )
        return PolicyDecision(
            allowed=verdict.allow or self.enforcing == "audit",
            rule=verdict.rule,
            reason=verdict.reason,
            verdict="allow" if verdict.allow else "deny",
            latency_us=(time.monotonic_ns() - started) // 1000,
            **common,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            await close()


def build_policy(
    settings: GuardrailSettings, transport: Transport | None = None
) -> GuardrailPolicy:
    """The policy of a ``cedar``/``opa`` guardrail (its files were read and checked with the
    config). ``transport``: the gateway's HTTP client, for a remote OPA (without it, the
    engine opens its own)."""
    engine: PolicyEngine
    if settings.type == "cedar":
        from custos.guardrails.policy.cedar import CedarEngine

        assert settings.policy_sources is not None
        engine = CedarEngine(settings.policy_sources)
    elif settings.url is not None:
        from custos.guardrails.policy.opa_remote import RemoteOpa

        engine = RemoteOpa(settings, transport)
    else:
        from custos.guardrails.policy.rego import RegoEngine

        assert settings.policy_sources is not None
        engine = RegoEngine(settings.policy_sources, settings.opa_query)
    return GuardrailPolicy(settings.id, engine, settings.enforcing)

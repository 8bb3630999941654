"""Residency, part of stage 7 (route): which of a model's targets may serve a request.

Rules (``residency:``, ``custos.config.residency``) are taken in file order. Every rule whose
``when`` matches the request applies, and each keeps only the candidates whose account's region
it allows (``custos.policy.regions``), so a target must be allowed by **every** matching rule:
their allowed sets intersect. An account without a region is allowed by no rule. Targets are
filtered before the route's strategy orders them, so load balancing, retries and fallbacks only
ever see allowed targets.

Each matching rule appends one ``Decision`` (stage ``route``): ``allow`` with what it kept and
removed, or ``deny`` (reason ``no_allowed_region``) for the first rule after which no candidate
is left; the request then stops with 403 ``residency_denied`` naming that rule, and the rules
after it are not evaluated. Which targets a rule allows is computed once per revision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from custos.config.residency import ResidencyRule
from custos.context import Decision
from custos.errors import GatewayError
from custos.policy.regions import RegionSelector
from custos.policy.when import Facts, When
from custos.routing.targets import ModelTarget
from custos.telemetry import metrics

#: The ``reason`` of the decision that left no target.
NO_ALLOWED_REGION = "no_allowed_region"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    when: When
    regions: RegionSelector
    #: The names of the targets (``account/model``) whose account's region the rule allows.
    allowed: frozenset[str]


class ResidencyPolicy:
    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def build(
        cls, rules: Sequence[ResidencyRule], targets: Mapping[str, ModelTarget]
    ) -> ResidencyPolicy:
        compiled = []
        for rule in rules:
            regions = RegionSelector(rule.allow_regions)
            allowed = frozenset(n for n, t in targets.items() if regions.allows(t.region))
            compiled.append(CompiledRule(rule.id, When.compile(rule.when), regions, allowed))
        return cls(compiled)

    def place(
        self,
        facts: Facts,
        model: str,
        candidates: Sequence[ModelTarget],
        decisions: list[Decision],
    ) -> tuple[ModelTarget, ...]:
        """The candidates every matching rule allows, in their order; each matching rule's
        decision is appended to ``decisions``. Raises 403 ``residency_denied`` when none is
        left (after appending the denying rule's decision)."""
        kept = tuple(candidates)
        applied = 0
        for rule in self.rules:
            if not rule.when.matches(facts):
                continue
            allowed = tuple(t for t in kept if t.name in rule.allowed)
            removed = [t for t in kept if t.name not in rule.allowed]
            inputs = _inputs(rule, allowed, removed)
            if not allowed:
                decisions.append(Decision("route", rule.id, "deny", NO_ALLOWED_REGION, inputs))
                metrics.RESIDENCY_DECISIONS.labels(rule.id, "deny").inc()
                raise _denial(rule, model, after_others=applied > 0)
            decisions.append(Decision("route", rule.id, "allow", None, inputs))
            metrics.RESIDENCY_DECISIONS.labels(rule.id, "allow").inc()
            kept = allowed
            applied += 1
        return kept


def _inputs(
    rule: CompiledRule, kept: Sequence[ModelTarget], removed: Sequence[ModelTarget]
) -> dict[str, Any]:
    return {
        "allow_regions": list(rule.regions.source),
        "kept": [{"target": t.name, "region": t.region} for t in kept],
        "removed": [{"target": t.name, "region": t.region} for t in removed],
    }


def _denial(rule: CompiledRule, model: str, *, after_others: bool) -> GatewayError:
    regions = ", ".join(rule.regions.source)
    which = "the targets earlier residency rules allowed" if after_others else "the targets"
    return GatewayError(
        403,
        "residency_denied",
        f"Residency rule '{rule.id}' allows this request only in the regions {regions}, and "
        f"none of {which} of the model '{model}' is in one of them.",
        param="model",
        stage="route",
    )

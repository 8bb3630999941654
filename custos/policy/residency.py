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


@dataclass(frozen=True, slots=True)
class _Placement:
    """What the matching rules decide for one set of candidates: the targets left, each rule's
    decision, and the rule that left none (``None`` when some are left)."""

    kept: tuple[ModelTarget, ...]
    decisions: tuple[tuple[CompiledRule, Decision], ...]
    denied_by: CompiledRule | None


#: Placements remembered per policy (one per config revision): requests come in few shapes.
_PLACEMENT_CACHE_SIZE = 10_000


class ResidencyPolicy:
    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)
        self._placed: dict[tuple[tuple[int, ...], tuple[str, ...]], _Placement] = {}

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
        left (after appending the denying rule's decision).

        What the rules decide depends only on which of them match and on the candidates, so
        it is remembered by those (the decisions are immutable and shared)."""
        matching = tuple(i for i, rule in enumerate(self.rules) if rule.when.matches(facts))
        if not matching:
            return tuple(candidates)
        key = (matching, tuple(t.name for t in candidates))
        placement = self._placed.get(key)
        if placement is None:
            placement = _place([self.rules[i] for i in matching], candidates)
            if len(self._placed) >= _PLACEMENT_CACHE_SIZE:
                self._placed.clear()
            self._placed[key] = placement
        for rule, decision in placement.decisions:
            decisions.append(decision)
            metrics.child(metrics.RESIDENCY_DECISIONS, rule.id, decision.outcome).inc()
        if placement.denied_by is not None:
            raise _denial(placement.denied_by, model, after_others=len(placement.decisions) > 1)
        return placement.kept


def _place(rules: Sequence[CompiledRule], candidates: Sequence[ModelTarget]) -> _Placement:
    """Apply ``rules`` (all matching, in order) to ``candidates``."""
    kept = tuple(candidates)
    made: list[tuple[CompiledRule, Decision]] = []
    for rule in rules:
        allowed = tuple(t for t in kept if t.name in rule.allowed)
        removed = [t for t in kept if t.name not in rule.allowed]
        inputs = _inputs(rule, allowed, removed)
        if not allowed:
            made.append((rule, Decision("route", rule.id, "deny", NO_ALLOWED_REGION, inputs)))
            return _Placement((), tuple(made), rule)
        made.append((rule, Decision("route", rule.id, "allow", None, inputs)))
        kept = allowed
    return _Placement(kept, tuple(made), None)


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

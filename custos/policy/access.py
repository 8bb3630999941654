"""Stage 3, authorize: may this principal call this model? Default deny; any matching grant allows.

A grant names subjects (``user:EMAIL``, ``team:NAME``, ``virtualaccount:NAME``, or ``*`` for every
authenticated principal) and models (exact names, ``account/*`` globs, virtual model names). The
rules are compiled once per revision; a decision is a set intersection and a pattern match.
A virtual model is allowed by naming it; naming its targets does not allow the virtual name, and
naming the virtual name does not allow its targets directly.

MCP tools are granted the same way by ``mcp_tools`` (``server/tool`` names and globs): default
deny, the first grant that applies and names the tool allows it (``decide_tool``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from custos.context import Decision
from custos.policy.patterns import ModelPattern


@dataclass(frozen=True, slots=True)
class AccessGrant:
    id: str
    subjects: frozenset[str]
    models: ModelPattern
    #: The MCP tools it grants (``server/tool`` names and globs).
    tools: ModelPattern = field(default_factory=lambda: ModelPattern(()))

    def applies_to(self, subjects: frozenset[str]) -> bool:
        return "*" in self.subjects or not self.subjects.isdisjoint(subjects)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    rule_id: str | None
    reason: str
    #: The same as the request path records it (made once, as the decision is remembered).
    decision: Decision


#: Decisions remembered per policy (one per config revision): callers come in few shapes.
_DECISION_CACHE_SIZE = 10_000


class AccessPolicy:
    def __init__(self, grants: Sequence[AccessGrant]) -> None:
        self.grants = tuple(grants)
        self._decided: dict[tuple[frozenset[str], str], AccessDecision] = {}

    def decide(self, subjects: frozenset[str], model: str) -> AccessDecision:
        """The first grant that applies to ``subjects`` and matches ``model``, or a denial.

        The policy never changes, so a decision is remembered (a frozenset caches its hash: the
        lookup costs a tuple and a dict probe where deciding walks every grant's patterns)."""
        key = (subjects, model)
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decide(subjects, model)
            if len(self._decided) >= _DECISION_CACHE_SIZE:
                self._decided.clear()
            self._decided[key] = decision
        return decision

    def _decide(self, subjects: frozenset[str], model: str) -> AccessDecision:
        for grant in self.grants:
            if grant.applies_to(subjects) and grant.models.matches(model):
                return AccessDecision(True, grant.id, f"allowed by {grant.id}", _allow(grant.id))
        return AccessDecision(False, None, "no access rule grants it", _NO_GRANT)

    def decide_tool(self, subjects: frozenset[str], tool: str) -> AccessDecision:
        """The first grant that applies to ``subjects`` and names ``tool`` (``server/tool``),
        or a denial."""
        key = (subjects, "\0tool:" + tool)  # one cache with models, never the same key
        decision = self._decided.get(key)
        if decision is None:
            decision = _NO_TOOL_GRANT
            for grant in self.grants:
                if grant.applies_to(subjects) and grant.tools.matches(tool):
                    decision = AccessDecision(True, grant.id, f"allowed by {grant.id}",
                                              _allow(grant.id))  # fmt: skip
                    break
            if len(self._decided) >= _DECISION_CACHE_SIZE:
                self._decided.clear()
            self._decided[key] = decision
        return decision

    def allowed_models(self, subjects: frozenset[str], names: Iterable[str]) -> list[str]:
        grants = [g for g in self.grants if g.applies_to(subjects)]
        return [n for n in names if any(g.models.matches(n) for g in grants)]


def _allow(rule_id: str) -> Decision:
    return Decision("authorize", rule_id, "allow")


_NO_GRANT = Decision("authorize", None, "deny", "no_grant")
_NO_TOOL_GRANT = AccessDecision(False, None, "no access rule grants this tool", _NO_GRANT)

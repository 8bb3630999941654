"""Budgets and rate limits of one config revision, compiled: which apply, split by what, and
what a request is expected to cost.

Stage 5 (rate limit): rules in file order, the **first** whose ``when`` matches applies. Stage 4
(budget): **every** budget whose ``when`` matches is charged. Neither touches a counter here; this
module says *which* counters and *how much* (``custos.limits`` takes them).

``applies_per`` splits one rule into a counter per value (two dimensions: per pair):

==================  ===================================================================
dimension           value
==================  ===================================================================
``user``            a user's case-folded email; a virtual account's
                    ``virtualaccount:NAME`` (every caller gets its own counter)
``team``            each of the caller's teams: a caller in two teams is charged on
                    both teams' counters, and needs room on both
``virtualaccount``  the virtual account's name
``model``           the model name the client asked for
``metadata.KEY``    the request metadata's value for KEY
==================  ===================================================================

A caller without a value for a dimension (a user for ``virtualaccount``, a request without the
metadata key, a user in no team) is counted under ``(none)``, one counter shared by all such
callers; scope the rule's ``when`` to avoid that where it matters.

Reservations (what admission charges before the call) are upper estimates: input tokens as
``custos.providers.estimate`` counts them (text, and tool definitions); output tokens from
``max_completion_tokens``/``max_tokens``, else the model's ``max_output_tokens``, else
``limits.default_output_tokens``; priced at the route's most expensive target for each kind of
token, so a fallback to a dearer target cannot overspend the reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from custos.config.rules import BudgetAlerts, BudgetRule, LimitsSettings, RateLimitRule
from custos.emails import email_key
from custos.identity.principal import Principal
from custos.policy.periods import Period, PeriodKind
from custos.policy.when import Facts, When
from custos.providers.estimate import estimate_prompt_tokens, tokens_for_chars
from custos.wire import MAX_INT

if TYPE_CHECKING:
    from custos.config.schema import Config
    from custos.routing.targets import ModelRoute

NONE = "(none)"
_PICO_PER_MICRO = 1_000_000
#: Budget counters outlive their period by this much, so the admin API can still show the last
#: period and late settlements still find their counter.
COUNTER_GRACE = timedelta(days=7)
_WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}


# -- splits ----------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    """Split values are joined with ``,`` and ``=`` and keys with ``|``: escape those."""
    return value.replace("%", "%25").replace(",", "%2C").replace("=", "%3D").replace("|", "%7C")


def unescape(value: str) -> str:
    return value.replace("%7C", "|").replace("%3D", "=").replace("%2C", ",").replace("%25", "%")


def parse_split(split: str) -> dict[str, str]:
    """``team=a,user=b@c`` → ``{"team": "a", "user": "b@c"}`` (``{}`` for an unsplit counter)."""
    if not split:
        return {}
    pairs = (part.split("=", 1) for part in split.split(","))
    return {name: unescape(value) for name, value in pairs}


Values = Callable[[Principal, Facts], Sequence[str]]


def _dimension(name: str) -> Values:
    if name == "user":
        return lambda p, f: (
            (email_key(p.name),) if p.kind == "user" else (f"virtualaccount:{p.name}",)
        )
    if name == "team":
        return lambda p, f: p.teams or (NONE,)
    if name == "virtualaccount":
        return lambda p, f: (p.name,) if p.kind == "virtual_account" else (NONE,)
    if name == "model":
        return lambda p, f: (f.model,)
    key = name.removeprefix("metadata.")
    return lambda p, f: (f.metadata.get(key, NONE),)


_UNSPLIT = ("",)
_SPLIT_CACHE = 4096


class Splitter:
    """``applies_per`` compiled: the canonical split texts one request falls into.

    The texts are cached per combination of values (a bounded cache: a busy gateway sees the
    same callers again and again), so a request pays for a tuple and a dict lookup.
    """

    __slots__ = ("_cache", "_values", "dimensions")

    def __init__(self, dimensions: Sequence[str]) -> None:
        self.dimensions = tuple(dimensions)
        self._values = tuple(_dimension(name) for name in self.dimensions)
        self._cache: dict[tuple[Sequence[str], ...], tuple[str, ...]] = {}

    def splits(self, principal: Principal, facts: Facts) -> tuple[str, ...]:
        if not self._values:
            return _UNSPLIT
        values = tuple(get(principal, facts) for get in self._values)
        found = self._cache.get(values)
        if found is None:
            out = [""]
            for name, options in zip(self.dimensions, values, strict=True):
                out = [
                    f"{prefix},{name}={_escape(v)}" if prefix else f"{name}={_escape(v)}"
                    for prefix in out
                    for v in options
                ]
            if len(self._cache) >= _SPLIT_CACHE:
                self._cache.clear()
            found = self._cache[values] = tuple(out)
        return found


# -- compiled rules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRule:
    id: str
    when: When
    limit: int
    per_token: bool
    window_s: int
    splitter: Splitter
    #: ``requests``, ``tokens`` or ``tool_calls``: the OpenAI header family
    #: (``x-ratelimit-*-requests``).
    unit: str
    source: RateLimitRule
    #: ``x-ratelimit-{limit,remaining,reset}-<unit>`` and the limit, encoded once.
    header_names: tuple[bytes, bytes, bytes]
    limit_header: bytes

    def key(self, split: str) -> str:
        return f"w|{self.id}|{self.unit}:{self.window_s}|{split}"

    def describe(self) -> str:
        per = f" per {' and '.join(self.splitter.dimensions)}" if self.splitter.dimensions else ""
        return f"{self.limit} {self.source.unit.replace('_', ' ')}{per}"


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    id: str
    when: When
    limit_micros: int
    period: PeriodKind
    enforce: bool
    splitter: Splitter
    alerts: BudgetAlerts | None
    source: BudgetRule

    def key(self, period: Period, split: str) -> str:
        return f"b|{self.id}|{period.key}|{split}"

    def index_key(self, period: Period) -> str:
        return f"bi|{self.id}|{period.key}"


@lru_cache(maxsize=64)
def counter_expiry_ms(period: Period) -> int:
    """When a budget counter of ``period`` may be forgotten (0: never, for ``total``)."""
    if period.end is None:
        return 0
    return int((period.end + COUNTER_GRACE).timestamp() * 1000)


def _rate_rule(rule: RateLimitRule) -> RateRule:
    unit, _, window = rule.unit.partition("_per_")
    return RateRule(
        id=rule.id,
        when=When.compile(rule.when),
        limit=rule.limit_to,
        per_token=unit == "tokens",
        window_s=_WINDOWS[window],
        splitter=Splitter(rule.applies_per),
        unit=unit,
        source=rule,
        header_names=(
            f"x-ratelimit-limit-{unit}".encode(),
            f"x-ratelimit-remaining-{unit}".encode(),
            f"x-ratelimit-reset-{unit}".encode(),
        ),
        limit_header=str(rule.limit_to).encode(),
    )


def _budget(rule: BudgetRule) -> BudgetPolicy:
    return BudgetPolicy(
        id=rule.id,
        when=When.compile(rule.when),
        limit_micros=rule.limit_micros,
        period=rule.period,
        enforce=rule.mode == "enforce",
        splitter=Splitter(rule.applies_per),
        alerts=rule.alerts,
        source=rule,
    )


# -- reservation estimates ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteCost:
    """The most a token of each kind can cost on any of a route's targets (pico-dollars)."""

    input: int
    output: int
    per_request: int
    #: The largest output any target can produce, when every target declares it.
    max_output_tokens: int | None

    @classmethod
    def free(cls) -> RouteCost:
        """What an MCP tool call costs: nothing."""
        return _FREE

    def micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in micro-dollars, rounded up (never below what the call can be charged)."""
        pico = input_tokens * self.input + output_tokens * self.output + self.per_request
        # At most MAX_INT, as a recorded cost is: past it no budget could be met anyway.
        return min(-(-pico // _PICO_PER_MICRO), MAX_INT)


_FREE = RouteCost(0, 0, 0, 0)


def route_cost(route: ModelRoute, config: Config) -> RouteCost:
    ins, outs, fees, caps = [], [], [], []
    for target in route.targets:
        price = target.price
        ins.append(max(price.input, price.cached_input, price.cache_write))
        outs.append(price.output)
        fees.append(price.per_request)
        settings = config.providers[target.account].models[target.model]
        caps.append(settings.max_output_tokens)
    known = [c for c in caps if c is not None]
    return RouteCost(
        max(ins),
        max(outs),
        max(fees),
        max(known) if len(known) == len(caps) else None,
    )


def estimate_tokens(
    body: Mapping[str, Any], operation: str, cost: RouteCost, default_output: int
) -> tuple[int, int]:
    """(input, output) tokens to reserve for a request."""
    input_tokens = estimate_prompt_tokens(body)
    tools = body.get("tools")
    if tools:
        input_tokens += tokens_for_chars(len(orjson.dumps(tools)))
    if operation == "embeddings":
        return input_tokens, 0
    asked = None
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            asked = value
            break
    cap = cost.max_output_tokens
    if asked is None:
        output = cap if cap is not None else default_output
    else:
        output = asked if cap is None else min(asked, cap)
    return input_tokens, output


# -- one revision --------------------------------------------------------------------------------


class LimitsPolicy:
    """Rate limits and budgets of one revision (see the module docstring)."""

    def __init__(self, config: Config, routes: Mapping[str, ModelRoute]) -> None:
        self.settings: LimitsSettings = config.limits
        self.rate_limits = tuple(_rate_rule(r) for r in config.rate_limits)
        self.budgets = tuple(_budget(b) for b in config.budgets)
        self.active = bool(self.rate_limits or self.budgets)
        self.costs = {name: route_cost(route, config) for name, route in routes.items()}
        self._budgets_by_id = {b.id: b for b in self.budgets}

    def rate_rule(self, facts: Facts) -> RateRule | None:
        """Stage 5: the first rule whose ``when`` matches (later matches are shadowed), among
        the rules that count this kind of call (tool calls: ``tool_calls_per_*``)."""
        tool_call = facts.mcp_tool is not None
        for rule in self.rate_limits:
            if (rule.unit == "tool_calls") != tool_call:
                continue
            if rule.when.matches(facts):
                return rule
        return None

    def matching_budgets(self, facts: Facts) -> list[BudgetPolicy]:
        """Stage 4: every budget whose ``when`` matches (tool calls cost nothing: none)."""
        if facts.mcp_tool is not None:
            return []
        return [b for b in self.budgets if b.when.matches(facts)]

    def budget(self, budget_id: str) -> BudgetPolicy | None:
        return self._budgets_by_id.get(budget_id)

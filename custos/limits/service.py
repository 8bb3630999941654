"""Stages 4 (budget) and 5 (rate limit) of the request path, and their settlement.

``Limiter.admit(ctx)`` runs between authorize and route:

1. stage 4, budget: every budget whose ``when`` matches is charged, one counter per split, each
   with a reservation of the request's estimated cost (``custos.policy.limits``);
2. stage 5, rate limit: the first rule whose ``when`` matches, one window per split, charged one
   request or the estimated tokens;
3. all of those counters are checked and taken in **one** atomic step (one Lua script, one round
   trip, on Redis). Refused: a budget → ``budget_exceeded`` (429, or 402 by config), a window
   → ``rate_limit_exceeded`` (429 with ``Retry-After``), and nothing at all is taken.

Which counters a request charges depends only on its principal, model and metadata (and the
current periods), so the answer is kept per kind of request (``_Plan``) and the hot path only
prices the request and takes the counters.

The decisions go into the context as they are made: one ``Decision`` per rule (each budget,
then the rate limit), with what it was charged as its input; ``ctx.limits`` (a ``Metering``)
keeps the reservation to settle and the ``x-ratelimit-*`` headers. ``Limiter`` is a stage of the
governance chain (``custos.stage``): ``enter`` admits, ``on_response`` adds the headers,
``settle`` charges.

``Limiter.settle(ctx)``, called once per request when the chain settles, after the cost is known,
releases the reservation and charges the actual cost (never waits: in memory it is immediate,
on Redis it is queued and sent in batches). Settled spend flows to the ledger, which a
background task writes to the store about once a second, and to the alerts.

While the counters cannot be reached, ``limits.on_counters_down`` decides per kind: budgets
fail closed by default (503 ``budget_unavailable``), rate limits fail open. Spend of calls let
through is still charged once the counters answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from custos.context import Decision, Outcome, RequestContext
from custos.identity.principal import Principal
from custos.limits import headers as h
from custos.limits.alerts import Alerts
from custos.policy.limits import (
    BudgetPolicy,
    LimitsPolicy,
    RateRule,
    RouteCost,
    counter_expiry_ms,
    estimate_tokens,
)
from custos.policy.periods import Period, PeriodClock, period_from_key
from custos.policy.when import Facts
from custos.stage import GatewayResponse
from custos.state.counters import (
    Admission,
    BudgetCounter,
    Counters,
    CountersUnavailable,
    Ticket,
    WindowCounter,
)
from custos.state.ledger import LedgerKey, SpendLedger
from custos.state.store import Store
from custos.telemetry import metrics

if TYPE_CHECKING:
    from custos.runtime import Runtime

log = logging.getLogger("custos.limits")

#: Bounds of the counter → ledger key map and of the admission plans (cleared when full).
_LEDGER_KEYS_CACHE = 50_000
_PLANS_CACHE = 10_000

Header = tuple[bytes, bytes]


@dataclass(slots=True, weakref_slot=True)
class Metering:
    """What stages 4 and 5 decided for one request (``ctx.limits``)."""

    #: Every budget counter charged (kept to charge spend even when nothing could be reserved).
    budgets: tuple[BudgetCounter, ...]
    estimated_input_tokens: int
    estimated_output_tokens: int
    #: The estimated cost reserved on every budget counter.
    reserved_micros: int
    #: The reservation to settle; ``None`` when the counters were down and the call let through.
    ticket: Ticket | None = None
    #: ``x-ratelimit-*`` headers for the response.
    headers: Sequence[Header] = ()
    settled: bool = False


@dataclass(frozen=True, slots=True)
class SplitReport:
    split: str
    spent: int
    reserved: int


@dataclass(frozen=True, slots=True)
class BudgetReport:
    budget: BudgetPolicy
    period: Period
    splits: tuple[SplitReport, ...]


@dataclass(slots=True)
class _BudgetSpec:
    """Which budget and period one of a plan's budget counters belongs to."""

    budget: BudgetPolicy
    period: Period


@dataclass(slots=True)
class _Plan:
    """Which counters a kind of request charges: the same principal object, model and
    metadata always match the same rules and fall into the same splits, so all of that is
    resolved once and reused until the first budget period in it ends (or the revision
    changes). Only the amounts are computed per request."""

    principal: Principal
    cost: RouteCost
    #: The matching budgets, in file order.
    policies: tuple[BudgetPolicy, ...]
    #: Their counters (one per split), and which budget and period each one counts.
    budgets: tuple[BudgetCounter, ...]
    specs: tuple[_BudgetSpec, ...]
    rule: RateRule | None
    windows: tuple[WindowCounter, ...]
    #: Whether an audit-mode budget is among them (its decision depends on the counters).
    audit_mode: bool
    ttl_ms: int
    #: Unix seconds at which a budget period of the plan ends (``inf`` for none).
    valid_until_s: float


PlanKey = tuple[int, str, tuple[tuple[str, str], ...], frozenset[str]]
_NONE: frozenset[str] = frozenset()


def _budget_key(key: str) -> LedgerKey:
    _, budget_id, period, split = key.split("|", 3)
    return budget_id, period, split


def counter_of(key: LedgerKey) -> BudgetCounter:
    """The counter a ledger row names (its limit unused)."""
    budget_id, period_key, split = key
    period = period_from_key(period_key)
    return BudgetCounter(
        key=f"b|{budget_id}|{period_key}|{split}",
        limit=0,
        enforce=False,
        expires_at_ms=counter_expiry_ms(period),
        split=split,
        index_key=f"bi|{budget_id}|{period_key}",
    )


class Limiter:
    """Budgets and rate limits for a gateway process (see the module docstring); the chain's
    stage for both (its refusals name ``budget`` or ``rate_limit``)."""

    name = "budget"

    def __init__(self, counters: Counters, runtime: Callable[[], Runtime]) -> None:
        self.counters = counters
        self.counters.sink = self
        self._runtime = runtime
        self.clock = PeriodClock()
        self.ledger: SpendLedger | None = None
        self.alerts: Alerts | None = None
        #: Requests holding a reservation, for renewal. Weak references: a request object that
        #: vanished without settling stops being renewed, and its reservation expires after the
        #: TTL (the renewal loop drops dead references; settling removes live ones).
        self._live: dict[str, weakref.ref[Metering]] = {}
        #: Admission plans of the revision ``_plans_of`` (see ``_Plan``).
        self._plans: dict[PlanKey, _Plan] = {}
        self._plans_of: LimitsPolicy | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._over_logged: set[str] = set()
        #: Budget counter key → ledger key, for the counters the plans charge (settlement
        #: would otherwise parse the key per request).
        self._ledger_keys: dict[str, LedgerKey] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, store: Store) -> None:
        """Open the ledger on ``store``, seed the counters, start the background tasks."""
        self.ledger = SpendLedger(store)
        self.alerts = Alerts(self.ledger)
        periods = self.clock.current_keys(time.time())
        if self.counters.shared:
            self.counters.seed_source = self._seed_source
        else:
            spent = await self.ledger.totals(periods)
            await self.counters.seed([(counter_of(key), value) for key, value in spent])
        await self.counters.start()
        for name, work in (
            ("ledger", self._flush_loop()),
            ("renew", self._renew_loop()),
            ("alerts", self.alerts.run()),
        ):
            self._tasks.append(asyncio.create_task(work, name=f"custos-limits-{name}"))

    async def stop(self) -> None:
        """Finish settlements, write the ledger a last time, stop."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.counters.drain(), 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        await self.counters.close()

    async def _seed_source(self) -> tuple[int, list[tuple[BudgetCounter, int]]]:
        assert self.ledger is not None
        seed = await self.ledger.seed(self.clock.current_keys(time.time()))
        return seed.epoch, [(counter_of(key), value) for key, value in seed.spent]

    # -- stages 4 and 5 ----------------------------------------------------------------------

    async def enter(self, ctx: RequestContext) -> None:
        """Charge every matching budget and the first matching rate limit, or raise."""
        policy = ctx.runtime.limits
        if not policy.active or ctx.principal is None or ctx.operation == "count_tokens":
            return  # counting costs no tokens: no budget, no limit
        plan = self._plan(ctx, ctx.principal, policy, time.time())
        if plan is None:
            return  # nothing applies, or an unknown model (the route stage answers 404)
        if ctx.mcp is None:
            in_tokens, out_tokens = estimate_tokens(
                ctx.body, ctx.operation, plan.cost, policy.settings.default_output_tokens
            )
        else:  # an MCP tool call: one call, no tokens
            in_tokens = out_tokens = 0
        # Stage 4, budget: every matching budget, one counter per split, each reserving the
        # estimated cost. Stage 5, rate limit: the first matching rule, one window per split,
        # charged one request or the estimated tokens.
        amount = plan.cost.micros(in_tokens, out_tokens) if plan.budgets else 0
        rule = plan.rule
        units = in_tokens + out_tokens if rule is not None and rule.per_token else 1
        metering = Metering(plan.budgets, in_tokens, out_tokens, amount)
        ctx.limits = metering
        rid = ctx.request_id
        try:
            # In-process counters decide in one synchronous step: no coroutine to create.
            admission = self.counters.admit_now(
                plan.budgets, amount, plan.windows, units, rid, plan.ttl_ms
            )
            if admission is None:
                admission = await self.counters.admit(
                    plan.budgets, amount, plan.windows, units, rid, plan.ttl_ms
                )
        except CountersUnavailable:
            self._counters_down(ctx, metering, plan, amount, units)
            return
        except asyncio.CancelledError:
            # The client left while Redis was answering: the script may have reserved. Release
            # whatever it holds under this request id (a no-op where it took nothing).
            metering.settled = True
            if plan.budgets:
                self.counters.settle(Ticket(rid, plan.budgets, amount, (), units), 0, 0)
            raise
        if not admission.admitted:
            self._refuse(ctx, metering, admission, plan, amount, units)
        ticket = metering.ticket = admission.ticket
        if ticket is not None and plan.budgets:
            self._live[rid] = weakref.ref(metering)
        over = self._over_limit_in_audit_mode(plan, admission) if plan.audit_mode else ()
        _decide(ctx.decisions, plan, amount, units, over=over)
        if rule is not None:
            metering.headers = h.rate_headers(rule, admission.windows)

    def on_response(self, ctx: RequestContext, response: GatewayResponse) -> None:
        metering = ctx.limits
        if metering is not None and metering.headers:
            response.headers.extend(metering.headers)

    def _over_limit_in_audit_mode(self, plan: _Plan, admission: Admission) -> frozenset[str]:
        """An audit-mode budget lets every call through: the ids of those the call took over
        their limit (on any of their counters)."""
        over: set[str] = set()
        for counter, spec, state in zip(plan.budgets, plan.specs, admission.budgets, strict=True):
            if not counter.enforce and state.spent + state.reserved > counter.limit:
                over.add(spec.budget.id)
                self._over_audit(spec.budget, counter)
        return frozenset(over)

    def _plan(
        self, ctx: RequestContext, principal: Principal, policy: LimitsPolicy, now: float
    ) -> _Plan | None:
        """The request's ``_Plan`` from the cache, or resolved now; ``None`` when no budget or
        rate limit applies (or the model is unknown)."""
        if policy is not self._plans_of:
            self._plans.clear()
            self._plans_of = policy
        metadata = ctx.metadata
        classes = frozenset(d.name for d in ctx.data_classes) if ctx.data_classes else _NONE
        called = ctx.model if ctx.mcp is None else "\0tool:" + ctx.mcp.qualified
        key: PlanKey = (id(principal), called, tuple(metadata.items()) if metadata else (),
                        classes)  # fmt: skip
        plan = self._plans.get(key)
        # The id of a principal object can be reused once it is gone: the identity check makes
        # a plan serve only the object it was made for.
        if plan is not None and plan.principal is principal and now < plan.valid_until_s:
            return plan
        plan = self._new_plan(ctx, principal, policy, now)
        if plan is not None:
            if len(self._plans) >= _PLANS_CACHE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _new_plan(
        self, ctx: RequestContext, principal: Principal, policy: LimitsPolicy, now: float
    ) -> _Plan | None:
        tool = ctx.mcp.qualified if ctx.mcp is not None else None
        cost = policy.costs.get(ctx.model) if tool is None else RouteCost.free()
        if cost is None:
            return None
        classes = frozenset(d.name for d in ctx.data_classes)
        facts = Facts(principal.subjects, ctx.model, ctx.metadata, classes, tool)
        budgets = policy.matching_budgets(facts)
        rule = policy.rate_rule(facts)
        if not budgets and rule is None:
            return None
        counters: list[BudgetCounter] = []
        specs: list[_BudgetSpec] = []
        valid_until = float("inf")
        for budget in budgets:
            period = self.clock.current(budget.period, now)
            if period.end is not None:
                valid_until = min(valid_until, period.end.timestamp())
            for split in budget.splitter.splits(principal, facts):
                counters.append(self._budget_counter(budget, period, split))
                specs.append(_BudgetSpec(budget, period))
        windows: tuple[WindowCounter, ...] = ()
        if rule is not None:
            window_ms = rule.window_s * 1000
            windows = tuple([WindowCounter(rule.key(split), rule.limit, window_ms, rule.per_token)
                             for split in rule.splitter.splits(principal, facts)])  # fmt: skip
        return _Plan(
            principal=principal,
            cost=cost,
            policies=tuple(budgets),
            budgets=tuple(counters),
            specs=tuple(specs),
            rule=rule,
            windows=windows,
            audit_mode=any(not b.enforce for b in budgets),
            ttl_ms=policy.settings.reservation_ttl_s * 1000,
            valid_until_s=valid_until,
        )

    def _refuse(
        self,
        ctx: RequestContext,
        metering: Metering,
        admission: Admission,
        plan: _Plan,
        amount: int,
        units: int,
    ) -> None:
        denied = admission.denied
        rule = plan.rule
        metering.settled = True  # nothing was taken: nothing to settle
        if isinstance(denied, BudgetCounter):
            index = plan.budgets.index(denied)
            spec = plan.specs[index]
            budget, period = spec.budget, spec.period
            state = admission.budgets[index]
            _decide(ctx.decisions, plan, amount, units, denied=budget.id)
            raise h.budget_exceeded(
                budget,
                denied.split,
                period,
                state.spent + state.reserved,
                amount,
                ctx.runtime.limits.settings.budget_exceeded_status,
                period.seconds_left(time.time()),
            )
        assert isinstance(denied, WindowCounter) and rule is not None
        index = plan.windows.index(denied)
        _decide(ctx.decisions, plan, amount, units, denied=rule.id)
        split = denied.key.split("|", 3)[3]
        raise h.rate_limited(rule, split, admission.windows[index], units, admission.retry_after_ms)

    def _counters_down(
        self, ctx: RequestContext, metering: Metering, plan: _Plan, amount: int, units: int
    ) -> None:
        mode = ctx.runtime.limits.settings.on_counters_down
        budgets, rule = plan.policies, plan.rule
        closed: str | None = None
        for kind, involved, decision in (
            ("budgets", bool(budgets), mode.budgets),
            ("rate_limits", rule is not None, mode.rate_limits),
        ):
            if not involved:
                continue
            metrics.COUNTER_FAILURES.labels(kind, decision).inc()
            if decision == "fail_closed" and closed is None:
                closed = kind
        if closed is not None:
            metering.settled = True
            _decide(ctx.decisions, plan, amount, units, down="deny")
            raise h.counters_down(closed)
        _decide(ctx.decisions, plan, amount, units, down="allow")

    def _over_audit(self, budget: BudgetPolicy, counter: BudgetCounter) -> None:
        metrics.BUDGET_OVERRUNS.labels(budget.id).inc()
        if counter.key not in self._over_logged:
            if len(self._over_logged) > 10_000:
                self._over_logged.clear()
            self._over_logged.add(counter.key)
            log.warning(
                "audit-mode budget %s is over its limit (%s): calls continue",
                budget.id, counter.key,
            )  # fmt: skip

    # -- stage 10, settle --------------------------------------------------------------------

    def settle(self, ctx: RequestContext) -> None:
        """Release the reservation and charge the actual cost (``ctx.cost_micros``). Never
        blocks, never raises; a second call for the same request does nothing."""
        metering = ctx.limits
        if metering is None or metering.settled:
            return
        metering.settled = True
        self._live.pop(ctx.request_id, None)
        ticket = metering.ticket
        if ticket is None:
            if not metering.budgets or ctx.cost_micros <= 0:
                return
            ticket = Ticket("", metering.budgets, 0, (), 0)
        tokens = ctx.usage.total_tokens if ctx.usage is not None else 0
        try:
            self.counters.settle(ticket, ctx.cost_micros, tokens)
        except Exception:  # settle must never fail a request
            log.exception("settling request %s failed", ctx.request_id)

    def _budget_counter(self, budget: BudgetPolicy, period: Period, split: str) -> BudgetCounter:
        """A plan's budget counter; its ledger key is remembered for the settlements."""
        key = budget.key(period, split)
        if key not in self._ledger_keys:
            if len(self._ledger_keys) >= _LEDGER_KEYS_CACHE:
                self._ledger_keys.clear()
            self._ledger_keys[key] = (budget.id, period.key, split)
        return BudgetCounter(
            key,
            budget.limit_micros,
            budget.enforce,
            counter_expiry_ms(period),
            split,
            budget.index_key(period),
        )

    def budget_settled(
        self, counter: BudgetCounter, cost: int, epoch: int | None, spent: int | None
    ) -> None:
        """``SettleSink``: settled spend goes to the ledger and is checked against alerts."""
        key = self._ledger_keys.get(counter.key) or _budget_key(counter.key)
        if self.ledger is not None:
            self.ledger.record(key, cost, epoch)
        if spent is not None and self.alerts is not None:
            budget = self._runtime().limits.budget(key[0])
            if budget is not None:
                self.alerts.check(budget, key, spent)

    # -- background work ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write the ledger batch; hand spend the shared counters lack back to them."""
        if self.ledger is None:
            return
        try:
            flushed = await self.ledger.flush()
        except Exception as exc:
            metrics.LEDGER_FLUSH_FAILURES.inc()
            log.warning("spend ledger not written (%s); kept for the next attempt", exc)
            return
        if flushed is not None and flushed.stale:
            self.counters.reapply(
                flushed.epoch, [(counter_of(key), amount) for key, amount in flushed.stale]
            )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._runtime().limits.settings.ledger_flush_s)
            await self.flush()
            self.counters.sweep()

    async def _renew_loop(self) -> None:
        while True:
            ttl_s = self._runtime().limits.settings.reservation_ttl_s
            await asyncio.sleep(ttl_s / 3)
            tickets = []
            for rid, ref in list(self._live.items()):
                metering = ref()
                if metering is None:  # the request vanished without settling
                    del self._live[rid]
                elif metering.ticket is not None:
                    tickets.append(metering.ticket)
            if not tickets:
                continue
            try:
                await self.counters.renew(tickets, ttl_s * 1000)
            except CountersUnavailable as exc:
                log.warning("could not renew %d reservation(s): %s", len(tickets), exc)

    # -- reading -----------------------------------------------------------------------------

    async def report(self) -> list[BudgetReport]:
        """Every budget of the current revision, its current period, and each split's counter.

        Raises ``CountersUnavailable`` when the counters cannot be read.
        """
        policy = self._runtime().limits
        now = time.time()
        reports = []
        for budget in policy.budgets:
            period = self.clock.current(budget.period, now)
            splits = await self.counters.splits(budget.index_key(period))
            if not budget.splitter.dimensions:
                splits = [""]
            states = await self.counters.read([budget.key(period, s) for s in splits])
            reports.append(
                BudgetReport(
                    budget,
                    period,
                    tuple(
                        SplitReport(s, state.spent, state.reserved)
                        for s, state in zip(splits, states, strict=True)
                    ),
                )
            )
        return reports


def _decide(
    decisions: list[Decision],
    plan: _Plan,
    amount: int,
    units: int,
    *,
    denied: str | None = None,
    over: frozenset[str] | tuple[()] = (),
    down: Literal["allow", "deny"] | None = None,
) -> None:
    """Append one decision per rule of ``plan``: each budget (its input: the reservation it was
    asked for), then the rate limit (the units it was charged). ``denied``: the rule that
    refused; ``over``: audit-mode budgets the call took over their limit; ``down``: the
    counters could not be reached and the call was let through (``allow``) or not."""
    reason = None if down is None else ("fail_open" if down == "allow" else "counters_down")
    reserve = {"reserve_micros": amount}
    for budget in plan.policies:
        outcome: Outcome = down or "allow"
        why = reason
        if budget.id == denied:
            outcome = "deny"
        elif budget.id in over:
            outcome, why = "audit_only", "over_limit"
        decisions.append(Decision("budget", budget.id, outcome, why, reserve))
    rule = plan.rule
    if rule is not None:
        outcome = "deny" if rule.id == denied else (down or "allow")
        decisions.append(Decision("rate_limit", rule.id, outcome, reason, {"units": units}))

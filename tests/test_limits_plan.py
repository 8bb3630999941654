"""The limiter resolves which counters a request charges once per kind of request (principal
object, model, metadata) and reuses that plan: these tests check a reused plan never charges
the wrong counter — across budget periods, metadata values, principals and revisions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from custos.config.loader import parse_config
from custos.context import RequestContext
from custos.identity.principal import Principal
from custos.limits.service import Limiter
from custos.runtime import Runtime
from custos.state.counters_memory import MemoryCounters
from custos.wire import Usage

CONFIG = """\
version: 1
state: {store: "sqlite:///./custos.db"}
access:
  - {id: all, subjects: ["*"], models: ["*"]}
rate_limits:
  - id: per-project
    when: {metadata: {tier: gold}}
    limit_to: 1000
    unit: requests_per_minute
    applies_per: [metadata.project]
  - id: per-user
    when: {}
    limit_to: 1000
    unit: requests_per_minute
    applies_per: [user]
budgets:
  - id: monthly-per-team
    when: {}
    limit_usd: 100
    period: month
    applies_per: [team]
providers:
  p:
    type: openai_compatible
    base_url: http://127.0.0.1:9/v1
    models:
      m: {input_per_mtok: 1, output_per_mtok: 10}
"""


def principal(teams: tuple[str, ...], name: str = "ana@example.com") -> Principal:
    return Principal(
        kind="user",
        id="u-" + name,
        name=name,
        display_name=name,
        teams=teams,
        managed_teams=(),
        roles=frozenset(),
        subjects=frozenset({f"user:{name}", *(f"team:{t}" for t in teams)}),
        token_id="t1",
        token_kind="api",
        account_models=None,
        token_models=None,
    )


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC))
    monkeypatch.setattr("custos.limits.service.time.time", clock)
    return clock


@pytest.fixture
def runtime() -> Runtime:
    return Runtime(parse_config(CONFIG))


def call(
    limiter: Limiter, runtime: Runtime, who: Principal, n: int, **metadata: str
) -> RequestContext:
    ctx = RequestContext(
        f"r{n}",
        "openai",
        "chat",
        runtime,
        body={"model": "p/m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        model="p/m",
        principal=who,
        metadata=dict(metadata),
    )
    coro = limiter.enter(ctx)
    with pytest.raises(StopIteration):  # in-process counters: admission never suspends
        coro.send(None)
    ctx.usage, ctx.cost_micros = Usage(3, 5), 53
    limiter.settle(ctx)
    return ctx


def counters(limiter: Limiter) -> dict[str, Any]:
    memory = limiter.counters
    assert isinstance(memory, MemoryCounters)
    budgets = {k: c.spent for k, c in memory._budgets.items()}
    windows = {k: w.total for k, w in memory._windows.items()}
    return {**budgets, **windows}


def test_a_plan_ends_with_its_budget_period(clock: Clock, runtime: Runtime) -> None:
    limiter = Limiter(MemoryCounters(), lambda: runtime)
    ana = principal(("red",))
    call(limiter, runtime, ana, 1)
    clock.now += 60  # 2026-02-01 00:00:30: a new month, and the plan made in January is stale
    call(limiter, runtime, ana, 2)
    spent = counters(limiter)
    assert spent["b|monthly-per-team|month:2026-01-01|team=red"] == 53
    assert spent["b|monthly-per-team|month:2026-02-01|team=red"] == 53


def test_metadata_values_get_their_own_plans(clock: Clock, runtime: Runtime) -> None:
    limiter = Limiter(MemoryCounters(), lambda: runtime)
    ana = principal(("red",))
    first = call(limiter, runtime, ana, 1, tier="gold", project="apollo")
    second = call(limiter, runtime, ana, 2, tier="gold", project="gemini")
    plain = call(limiter, runtime, ana, 3)
    again = call(limiter, runtime, ana, 4, tier="gold", project="apollo")
    assert first.applied == second.applied == again.applied == ["monthly-per-team", "per-project"]
    assert plain.applied == ["monthly-per-team", "per-user"]
    windows = {k: v for k, v in counters(limiter).items() if k.startswith("w|")}
    assert windows == {
        "w|per-project|requests:60|metadata.project=apollo": 2,
        "w|per-project|requests:60|metadata.project=gemini": 1,
        "w|per-user|requests:60|user=ana@example.com": 1,
    }


def test_a_new_principal_object_or_revision_is_planned_afresh(
    clock: Clock, runtime: Runtime
) -> None:
    current = runtime
    limiter = Limiter(MemoryCounters(), lambda: current)
    call(limiter, current, principal(("red",)), 1)
    # A directory reload builds a new principal for the same user, now in another team.
    call(limiter, current, principal(("blue",)), 2)
    # A reload of the config builds a new revision: its rules are planned again.
    current = Runtime(parse_config(CONFIG.replace("limit_usd: 100", "limit_usd: 200")))
    ctx = call(limiter, current, principal(("blue",)), 3)
    spent = counters(limiter)
    assert spent["b|monthly-per-team|month:2026-01-01|team=red"] == 53
    assert spent["b|monthly-per-team|month:2026-01-01|team=blue"] == 106
    assert ctx.limits is not None and ctx.limits.budgets[0].limit == 200_000_000


def test_a_reservation_of_a_vanished_request_is_no_longer_renewed(
    clock: Clock, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(MemoryCounters(), lambda: runtime)
    ctx = RequestContext(
        "gone", "openai", "chat", runtime, body={"model": "p/m"}, model="p/m",
        principal=principal(("red",)),
    )  # fmt: skip
    coro = limiter.enter(ctx)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert "gone" in limiter._live
    del ctx  # never settled: the request object is gone

    real_sleep = asyncio.sleep

    async def one_renewal() -> None:
        task = asyncio.create_task(limiter._renew_loop())
        await real_sleep(0.05)
        task.cancel()

    # The loop waits a third of the TTL (minutes) between renewals: here, no time at all.
    monkeypatch.setattr("custos.limits.service.asyncio.sleep", lambda _s: real_sleep(0))
    asyncio.run(one_renewal())
    assert "gone" not in limiter._live

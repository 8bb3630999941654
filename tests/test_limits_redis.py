"""Budgets and rate limits on Redis: shared by replicas, surviving a Redis restart, and what
happens while Redis is down. Real gateway processes; the tests that stop or restart Redis run
a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_EMAIL, TOKEN_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import (
    budget,
    chat,
    provider_config,
    settled_budget,
    wait_for,
    with_rules,
)
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.store_fixtures import (
    PG_URL,
    REDIS_URL,
    create_pg_schema,
    drop_pg_schema,
    redis_url,  # noqa: F401 (fixture)
    require_pg,
    with_search_path,
)


async def _admin_token(store_url: str) -> str:
    from custos.admin.bootstrap import bootstrap
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store

    store = await open_store(store_url)
    try:
        return (await bootstrap(store, TokenService(store, TOKEN_KEY), ADMIN_EMAIL)).secret
    finally:
        await store.close()


def test_two_gateways_on_one_redis_admit_exactly_the_limit_together(
    mock_provider: MockProvider,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
):
    asyncio.run(require_pg())
    schema = asyncio.run(create_pg_schema())
    store = with_search_path(PG_URL, schema)
    token = asyncio.run(_admin_token(store))
    prefix = f"test-two-{secrets.token_hex(4)}:"
    config = with_rules(
        provider_config(mock_provider.url, store=store, counters=REDIS_URL, counters_prefix=prefix),
        """
        rate_limits:
          - {id: shared, when: {}, limit_to: 100, unit: requests_per_minute}
        """,
    ).replace("identity:\n", f"identity:\n  invalidation: {REDIS_URL}\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = GatewayProcess(config, tmp_path / "a"), GatewayProcess(config, tmp_path / "b")
    try:
        body = {"model": "mock/m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

        async def fire() -> list[int]:
            headers = {"authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(timeout=30) as client:
                calls = [
                    client.post(f"{gw.base_url}/chat/completions", headers=headers, json=body)
                    for gw in [a, b] * 75
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(fire())
        assert statuses.count(200) == 100 and statuses.count(429) == 50
        # Both replicas admitted some: the limit is one counter, not one per process.
        assert 0 < statuses[0::2].count(200) < 100 and 0 < statuses[1::2].count(200) < 100
    finally:
        a.stop()
        b.stop()
        asyncio.run(drop_pg_schema(schema))


def test_a_redis_restart_keeps_the_budgets_spend(
    mock_provider: MockProvider,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
):
    rules = """
    budgets:
      - {id: monthly, when: {}, limit_usd: 1, period: month, applies_per: [model]}
      - {id: forever, when: {}, limit_usd: 1, period: total}
    """
    config = with_rules(provider_config(mock_provider.url, counters=redis_server.url), rules)
    gw = GatewayProcess(config, tmp_path)
    try:
        for model in ("mock/m", "mock/other", "mock/m"):
            assert chat(gw, gw.token, model=model).status_code == 200
        before = settled_budget(gw, "forever")["spent_micros"]
        splits = {s["split"]["model"]: s["spent_micros"] for s in budget(gw, "monthly")["splits"]}
        assert before > 0 and sum(splits.values()) == before
        # Restart at once: some of that spend is not in the ledger yet, only in Redis (lost)
        # and in the gateway's next batch.
        redis_server.restart()

        def spent_again() -> int | None:
            response = httpx.get(f"{gw.url}/admin/v1/budgets", headers=gw.headers, timeout=5)
            if response.status_code != 200:
                return None
            found = {b["id"]: b for b in response.json()["data"]}
            return found["forever"]["spent_micros"] if found else None

        assert wait_for(lambda: spent_again() == before, timeout=10), spent_again()
        after = {s["split"]["model"]: s["spent_micros"] for s in budget(gw, "monthly")["splits"]}
        assert after == splits
        # Calls go on from there, and a second restart changes nothing either.
        assert wait_for(lambda: chat(gw, gw.token).status_code == 200, timeout=5)
        grown = settled_budget(gw, "forever")["spent_micros"]
        assert grown > before
        time.sleep(1.5)  # this time the ledger has everything before the restart
        redis_server.restart()
        assert wait_for(lambda: spent_again() == grown, timeout=10), spent_again()
        assert gw.metric("custos_counter_seeds_total") >= 2
    finally:
        gw.stop()


def test_redis_down_rate_limits_fail_open_budgets_fail_closed_then_recover(
    mock_provider: MockProvider,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
):
    rules = """
    rate_limits:
      - {id: per-minute, when: {}, limit_to: 1000, unit: requests_per_minute}
    budgets:
      - {id: guarded, when: {models: [mock/m]}, limit_usd: 1, period: day}
    """
    config = with_rules(provider_config(mock_provider.url, counters=redis_server.url), rules)
    gw = GatewayProcess(config, tmp_path)
    try:
        assert chat(gw, gw.token).status_code == 200
        assert gw.metric("custos_counters_up") == 1
        redis_server.stop()
        # Only a rate limit applies to mock/other: it fails open (no headers: nothing counted).
        other = chat(gw, gw.token, model="mock/other")
        assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
        # mock/m is under a budget too: budgets fail closed, with a clear error.
        refused = chat(gw, gw.token)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "budget_unavailable" and "budgets" in error["message"]
        assert "redis" not in error["message"].lower()  # no internal addresses to callers
        assert refused.headers["retry-after"] == "1"
        assert gw.metric("custos_counters_up") == 0
        assert (
            gw.metric("custos_counter_failures_total", kind="budgets", decision="fail_closed") >= 1
        )
        assert (
            gw.metric("custos_counter_failures_total", kind="rate_limits", decision="fail_open")
            >= 1
        )
        assert httpx.get(f"{gw.url}/admin/v1/budgets", headers=gw.headers).status_code == 503
        # Back without restarting the gateway.
        redis_server.start()
        assert wait_for(lambda: chat(gw, gw.token).status_code == 200, timeout=10)
        assert gw.metric("custos_counters_up") == 1
        headers = chat(gw, gw.token, model="mock/other").headers
        assert headers["x-ratelimit-limit-requests"] == "1000"
    finally:
        gw.stop()


def test_calls_let_through_while_redis_is_down_are_charged_when_it_returns(
    mock_provider: MockProvider,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
):
    rules = """
    limits: {on_counters_down: {budgets: fail_open}}
    budgets:
      - {id: lenient, when: {}, limit_usd: 1, period: day}
    """
    config = with_rules(provider_config(mock_provider.url, counters=redis_server.url), rules)
    gw = GatewayProcess(config, tmp_path)
    try:
        first = chat(gw, gw.token)
        assert first.status_code == 200
        before = settled_budget(gw, "lenient")["spent_micros"]
        redis_server.stop()
        during = [chat(gw, gw.token) for _ in range(3)]
        assert [r.status_code for r in during] == [200, 200, 200]
        cost = sum(
            r.json()["usage"]["prompt_tokens"] + 10 * r.json()["usage"]["completion_tokens"]
            for r in during
        )
        assert gw.metric("custos_counter_failures_total", kind="budgets", decision="fail_open") == 3
        redis_server.start()  # empty: reseeded from the ledger, then the outage's spend added

        def spent() -> int | None:
            response = httpx.get(f"{gw.url}/admin/v1/budgets", headers=gw.headers, timeout=5)
            return (
                response.json()["data"][0]["spent_micros"] if response.status_code == 200 else None
            )

        assert wait_for(lambda: spent() == before + cost, timeout=10), (spent(), before, cost)
        time.sleep(1.2)  # and it is not counted twice by a later flush
        assert spent() == before + cost
    finally:
        gw.stop()


@pytest.mark.timeout(60)
def test_a_long_stream_keeps_its_reservation_past_the_ttl(
    mock_provider: MockProvider,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
):
    prefix = f"test-renew-{secrets.token_hex(4)}:"
    rules = """
    limits: {reservation_ttl_s: 10}
    budgets:
      - {id: held, when: {}, limit_usd: 1, period: day}
    """
    config = with_rules(
        provider_config(mock_provider.url, counters=REDIS_URL, counters_prefix=prefix), rules
    ).replace("m+chunks=20+chunk_delay_ms=30:", "m+chunks=20+chunk_delay_ms=700:")
    gw = GatewayProcess(config, tmp_path)
    try:
        body = {
            "model": "mock/m+chunks=20+chunk_delay_ms=700",
            "stream": True,
            "max_tokens": 40,
            "messages": [{"role": "user", "content": "consectetur adipiscing"}],
        }
        with httpx.stream(
            "POST", f"{gw.base_url}/chat/completions", headers=gw.headers, json=body, timeout=30
        ) as response:
            started = time.monotonic()
            reserved = []
            for _ in response.iter_raw():
                if time.monotonic() - started > 12 and not reserved:
                    reserved.append(budget(gw, "held")["reserved_micros"])
        assert time.monotonic() - started > 12
        assert reserved and reserved[0] > 0, "the reservation expired while the call ran"
        assert settled_budget(gw, "held")["reserved_micros"] == 0
    finally:
        gw.stop()

"""The budget overshoot bound (docs/architecture.md, "Budgets: the overshoot bound"), checked.

Many concurrent requests of random sizes and kinds against one budget, through a real gateway:
plain calls, streams, streams the client abandons mid-way, streams the provider drops, upstream
errors, and streams without ``max_tokens`` that produce more than the reserved output cap. For
each admitted request the test computes its reservation ``r`` and the most it can be charged
``c`` (from the mock's deterministic usage and replies), and checks

    spent <= limit + sum over admitted requests of max(0, c - r)

and that, once every request has ended, nothing is left reserved and the budget holds exactly the
sum of the costs the gateway metered (every call charged once, none twice, none lost).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from custos.mock import prompt_tokens_openai
from custos.mock.content import text_reply
from custos.providers.estimate import estimate_prompt_tokens, tokens_for_chars
from tests.conftest import GatewayProcess, MockProvider
from tests.limits_helpers import IN_PRICE, OUT_PRICE, provider_config, settled_budget, with_rules
from tests.store_fixtures import REDIS_URL

LIMIT_MICROS = 15_000
DEFAULT_OUTPUT = 40
MOCK_WORDS = 20
LONG_WORDS = [
    "consectetur", "adipiscing", "exercitation", "reprehenderit", "voluptate", "incididunt",
    "laboris", "nostrud", "cupidatat", "proident", "deserunt", "officia",
]  # fmt: skip
KINDS = ("plain", "stream", "disconnect", "error", "dropped", "long")
MODELS = {
    "plain": "mock/m",
    "stream": "mock/m",
    "disconnect": "mock/m+chunks=20+chunk_delay_ms=30",
    "error": "mock/m+status=500",
    "dropped": "mock/m+drop_after=4",
    "long": "mock/m+words=80",
}


@dataclass
class Call:
    kind: str
    body: dict[str, Any]
    max_tokens: int | None
    delay_s: float
    status: int = 0
    code: str | None = None

    @property
    def reserved(self) -> int:
        """What admission reserves: the input estimate and the output cap, at the prices."""
        cap = self.max_tokens if self.max_tokens is not None else DEFAULT_OUTPUT
        return estimate_prompt_tokens(self.body) * IN_PRICE + cap * OUT_PRICE

    @property
    def most(self) -> int:
        """The most this call can be charged."""
        if self.kind == "error":
            return 0
        words = 80 if self.kind == "long" else MOCK_WORDS
        output = min(words, self.max_tokens or words)
        reported = prompt_tokens_openai(self.body) * IN_PRICE + output * OUT_PRICE
        if self.kind in ("plain", "stream", "long"):
            return reported
        # Ended early: no usage from the provider, so the input is estimated and the output is
        # counted from the text relayed, at most the whole reply.
        content = self.body["messages"][0]["content"]
        text = text_reply(content, tool_result=False, words=words, max_tokens=self.max_tokens).text
        counted = estimate_prompt_tokens(self.body) * IN_PRICE
        counted += tokens_for_chars(len(text)) * OUT_PRICE
        return max(reported, counted)


def random_calls(seed: int, n: int, spread_s: float = 1.0) -> list[Call]:
    """Two thirds start at once (a burst: many admissions before any settlement), the rest over
    ``spread_s`` (admissions between settlements)."""
    rng = random.Random(seed)
    calls = []
    for _ in range(n):
        kind = rng.choice(KINDS)
        content = " ".join(rng.choices(LONG_WORDS, k=rng.randint(2, 12)))
        max_tokens = None if kind == "long" else rng.randint(5, 60)
        if kind == "disconnect":
            max_tokens = rng.randint(12, 60)
        body: dict[str, Any] = {
            "model": MODELS[kind],
            "messages": [{"role": "user", "content": content}],
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if kind not in ("plain", "error"):
            body["stream"] = True
        delay = 0.0 if rng.random() < 2 / 3 else rng.uniform(0, spread_s)
        calls.append(Call(kind, body, max_tokens, delay))
    return calls


async def run_call(client: httpx.AsyncClient, gw: GatewayProcess, call: Call) -> None:
    await asyncio.sleep(call.delay_s)
    url = f"{gw.base_url}/chat/completions"
    async with client.stream("POST", url, headers=gw.headers, json=call.body) as response:
        call.status = response.status_code
        if response.status_code != 200:
            body = json.loads(await response.aread())
            call.code = body["error"]["code"]
            return
        chunks = 0
        async for _ in response.aiter_raw():
            chunks += 1
            if call.kind == "disconnect" and chunks >= 2:
                return  # leaves the stream: the context manager closes the connection


def check_bound(gw: GatewayProcess, calls: list[Call]) -> None:
    admitted = [c for c in calls if c.code != "budget_exceeded"]
    refused = [c for c in calls if c.code == "budget_exceeded"]
    assert refused and admitted, "the limit must bind for the test to mean anything"
    assert {c.status for c in refused} == {429}
    assert all(c.code is None or c.kind in ("error",) for c in admitted), [
        (c.kind, c.status, c.code) for c in admitted if c.code
    ]
    found = settled_budget(gw, "pool", timeout=10)
    assert found["reserved_micros"] == 0, "a reservation outlived its request"
    bound = sum(max(0, c.most - c.reserved) for c in admitted)
    spent = found["spent_micros"]
    assert spent <= LIMIT_MICROS + bound, (spent, bound)
    metered = sum(gw.metric("custos_cost_micros_total", model=m) for m in set(MODELS.values()))
    assert spent == metered
    # The bound is tight enough to catch a non-atomic admission, which would admit nearly
    # everything: what was refused would have cost far more than the bound allows.
    assert sum(c.reserved for c in refused) > bound


@pytest.mark.parametrize("counters", ["memory", "redis"])
def test_concurrent_requests_never_overspend_beyond_the_bound(
    counters: str, mock_provider: MockProvider, tmp_path: Path
):
    state: dict[str, str] = {}
    if counters == "redis":
        state = {"counters": REDIS_URL, "counters_prefix": f"test-prop-{secrets.token_hex(4)}:"}
    rules = f"""
    limits: {{default_output_tokens: {DEFAULT_OUTPUT}}}
    budgets:
      - {{id: pool, when: {{}}, limit_usd: {LIMIT_MICROS / 1_000_000}, period: total}}
    """
    gw = GatewayProcess(with_rules(provider_config(mock_provider.url, **state), rules), tmp_path)
    try:
        calls = random_calls(seed=4 if counters == "memory" else 5, n=160)

        async def fire() -> None:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                await asyncio.gather(*(run_call(client, gw, c) for c in calls))

        asyncio.run(fire())
        assert {c.kind for c in calls} == set(KINDS)
        check_bound(gw, calls)
    finally:
        gw.stop()


def test_with_max_tokens_everywhere_the_budget_is_never_exceeded(
    mock_provider: MockProvider, tmp_path: Path
):
    """When every reservation covers its call (max_tokens set, input not underestimated),
    the bound is zero: the limit holds exactly, whatever the concurrency."""
    rules = f"""
    budgets:
      - {{id: pool, when: {{}}, limit_usd: {LIMIT_MICROS / 1_000_000}, period: total}}
    """
    gw = GatewayProcess(with_rules(provider_config(mock_provider.url), rules), tmp_path)
    try:
        calls = [c for c in random_calls(11, 260, 0.0) if c.kind in ("plain", "stream")]
        assert all(c.most <= c.reserved for c in calls)

        async def fire() -> None:
            async with httpx.AsyncClient(
                timeout=30, limits=httpx.Limits(max_connections=200)
            ) as client:
                await asyncio.gather(*(run_call(client, gw, c) for c in calls))

        asyncio.run(fire())
        found = settled_budget(gw, "pool", timeout=10)
        assert found["reserved_micros"] == 0
        assert any(c.code == "budget_exceeded" for c in calls)
        assert found["spent_micros"] <= LIMIT_MICROS
    finally:
        gw.stop()

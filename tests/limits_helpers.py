"""Helpers for the budget and rate-limit tests: configs, users, calls, reading budgets."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from custos.identity.tokens import TokenService
from custos.state.backends import open_store
from custos.state.models import Actor
from tests.conftest import TOKEN_KEY, GatewayProcess

#: Prices of the test models: 1 micro-dollar per input token, 10 per output token.
IN_PRICE, OUT_PRICE = 1, 10


def provider_config(mock_url: str, store: str = "sqlite:///./custos.db", **state: str) -> str:
    """A gateway with one OpenAI account on the mock; models named with mock directives."""
    extra = "".join(f", {k}: {v!r}" for k, v in state.items())
    return textwrap.dedent(
        f"""\
        version: 1
        state: {{store: "{store}"{extra}}}
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
        access:
          - id: everyone-everything
            subjects: ["*"]
            models: ["*"]
        providers:
          mock:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            timeout_s: 10
            models:
              m: {{input_per_mtok: 1, output_per_mtok: 10}}
              m+words=80: {{input_per_mtok: 1, output_per_mtok: 10}}
              m+status=500: {{input_per_mtok: 1, output_per_mtok: 10}}
              m+drop_after=4: {{input_per_mtok: 1, output_per_mtok: 10}}
              m+no_usage: {{input_per_mtok: 1, output_per_mtok: 10}}
              m+chunks=20+chunk_delay_ms=30: {{input_per_mtok: 1, output_per_mtok: 10}}
              other: {{input_per_mtok: 1, output_per_mtok: 10}}
              free: {{unpriced: allow}}
          claude:
            type: anthropic
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            models:
              c: {{input_per_mtok: 1, output_per_mtok: 10}}
        """
    )


def with_rules(config: str, rules: str) -> str:
    return config + textwrap.dedent(rules)


async def _make_users(store_url: str, users: dict[str, tuple[str, ...]]) -> dict[str, str]:
    store = await open_store(store_url)
    tokens = TokenService(store, TOKEN_KEY)
    actor = Actor.system("tests")
    try:
        secrets = {}
        for email, roles in users.items():
            user = await store.create_user(actor, email=email, roles=roles)
            issued = await tokens.issue_token(actor, kind="pat", principal_id=user.id, name="t")
            secrets[email] = issued.secret
        return secrets
    finally:
        await store.close()


def make_users(tmp_path: Path, users: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Users (email → roles) in ``tmp_path/custos.db`` before the gateway starts; their PATs."""
    return asyncio.run(_make_users(f"sqlite:///{tmp_path / 'custos.db'}", users))


def bearer(token: str, metadata: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    if metadata is not None:
        headers["x-custos-metadata"] = metadata
    return headers


def chat(
    gw: GatewayProcess,
    token: str,
    model: str = "mock/m",
    *,
    max_tokens: int | None = 30,
    content: str = "consectetur adipiscing exercitation",
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(extra)
    return httpx.post(
        f"{gw.base_url}/chat/completions", headers=bearer(token), json=body, timeout=30
    )


def budgets(gw: GatewayProcess, token: str | None = None, **query: str) -> httpx.Response:
    headers = bearer(token) if token else gw.headers
    return httpx.get(f"{gw.url}/admin/v1/budgets", headers=headers, params=query, timeout=10)


def budget(gw: GatewayProcess, budget_id: str) -> dict[str, Any]:
    response = budgets(gw, budget=budget_id)
    assert response.status_code == 200, response.text
    [found] = response.json()["data"]
    return found


def settled_budget(gw: GatewayProcess, budget_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The budget once no reservation is left (settlement is asynchronous on Redis)."""
    deadline = time.monotonic() + timeout
    while True:
        found = budget(gw, budget_id)
        if found["reserved_micros"] == 0 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)

"""Budgets and rate limits through a real gateway process (in-process counters).

Rate limits: first match wins, ``applies_per`` keeps callers apart, OpenAI's headers, 429 naming
the rule. Budgets: every matching budget charged, 429/402 ``budget_exceeded`` in the caller's
protocol, streams charged their real usage (or what was counted), the ledger surviving a
restart, alerts, unpriced models, and who may read ``GET /admin/v1/budgets``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from custos.mock import prompt_tokens_openai
from custos.pricing import ModelPrice
from custos.providers.estimate import estimate_prompt_tokens, tokens_for_chars
from custos.wire import Usage
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import (
    budget,
    budgets,
    chat,
    make_users,
    provider_config,
    settled_budget,
    wait_for,
    with_rules,
)

PRICE = ModelPrice(input=1_000_000, output=10_000_000, cached_input=1_000_000,
                   cache_write=1_000_000, per_request=0)  # fmt: skip


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    """Gateways a test starts, stopped at its end."""
    gateways: list[GatewayProcess] = []
    yield gateways
    for gw in gateways:
        gw.stop()


def start(started: list[GatewayProcess], config: str, tmp_path: Path) -> GatewayProcess:
    gw = GatewayProcess(config, tmp_path)
    started.append(gw)
    return gw


# -- rate limits -----------------------------------------------------------------------------


SHADOWING = """
teams:
  support: {members: [ann@x.example, bob@x.example]}
rate_limits:
  - id: support-per-user
    when: {subjects: [team:support]}
    limit_to: 3
    unit: requests_per_minute
    applies_per: [user]
  - id: everyone-strict
    when: {}
    limit_to: 1
    unit: requests_per_minute
"""


def test_first_match_wins_and_applies_per_keeps_users_apart(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    users = make_users(tmp_path, {"ann@x.example": (), "bob@x.example": (), "carol@x.example": ()})
    gw = start(started, with_rules(provider_config(mock_provider.url), SHADOWING), tmp_path)
    ann, bob, carol = users["ann@x.example"], users["bob@x.example"], users["carol@x.example"]
    # Ann is in team support: the first rule applies (3 a minute), the stricter later one is
    # shadowed.
    codes = [chat(gw, ann).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    # Bob has a counter of his own under the same rule.
    assert [chat(gw, bob).status_code for _ in range(3)] == [200, 200, 200]
    # Carol is in no team: the second rule applies to her, 1 a minute.
    assert [chat(gw, carol).status_code for _ in range(2)] == [200, 429]

    refused = chat(gw, ann)
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    assert "'support-per-user'" in error["message"] and "ann@x.example" in error["message"]
    assert 55 <= int(refused.headers["retry-after"]) <= 61
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "everyone-strict" in chat(gw, carol).json()["error"]["message"]


def test_success_carries_openai_rate_limit_headers(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = """
    rate_limits:
      - {id: tokens, when: {models: ["mock/*"]}, limit_to: 1000, unit: tokens_per_minute}
      - {id: requests, when: {}, limit_to: 5, unit: requests_per_hour}
    """
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    first = chat(gw, gw.token, max_tokens=100)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    body = {"messages": [{"role": "user", "content": "consectetur adipiscing exercitation"}]}
    reserved = estimate_prompt_tokens(body) + 100
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 1000 - reserved
    assert first.headers["x-ratelimit-reset-tokens"] in ("1m0s", "1m1s")  # whole seconds, up
    assert "x-ratelimit-limit-requests" not in first.headers  # one rule applies, not both
    assert first.headers["x-custos-applied"].split(",")[-1] == "tokens"  # access rule, then it
    # Token windows are corrected to the real usage when the call ends.
    used = first.json()["usage"]["total_tokens"]
    second = chat(gw, gw.token, max_tokens=100)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 1000 - used - reserved
    # A model outside the first rule falls to the second.
    other = chat(gw, gw.token, model="claude/c")
    assert other.status_code == 200
    assert other.headers["x-ratelimit-limit-requests"] == "5"
    assert other.headers["x-ratelimit-remaining-requests"] == "4"
    assert other.headers["x-ratelimit-reset-requests"].startswith("1h")


def test_a_token_limit_refuses_a_request_that_cannot_fit(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = "rate_limits:\n  - {id: small, limit_to: 50, unit: tokens_per_day}\n"
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    refused = chat(gw, gw.token, max_tokens=500)
    assert refused.status_code == 429
    assert "can never admit this request" in refused.json()["error"]["message"]
    assert "retry-after" not in refused.headers


# -- budgets ---------------------------------------------------------------------------------


def test_every_matching_budget_is_charged_and_each_must_have_room(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = """
    budgets:
      - {id: all-calls, when: {}, limit_usd: 100, period: month}
      - {id: model-m, when: {models: [mock/m]}, limit_usd: 0.0012, period: day}
      - {id: per-project, when: {}, limit_usd: 50, period: total, applies_per: [metadata.project]}
    """
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    ok = chat(gw, gw.token, max_tokens=50)  # reserves 10 + 500 micros on all three
    assert ok.status_code == 200
    usage = ok.json()["usage"]
    cost = usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 10
    for budget_id in ("all-calls", "model-m", "per-project"):
        assert settled_budget(gw, budget_id)["spent_micros"] == cost
    assert budget(gw, "per-project")["splits"][0]["split"] == {"metadata.project": "(none)"}
    # model-m has 1200 - cost left: a reservation of 10 + 1000 does not fit; nothing is taken
    # from the other two budgets either.
    refused = chat(gw, gw.token, max_tokens=100)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and "'model-m'" in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert budget(gw, "all-calls")["reserved_micros"] == 0
    # Another model is outside model-m: charged to the other two only.
    assert chat(gw, gw.token, model="mock/other", max_tokens=100).status_code == 200
    assert settled_budget(gw, "model-m")["spent_micros"] == cost
    assert settled_budget(gw, "all-calls")["spent_micros"] > cost


def test_budget_exceeded_can_be_402_and_speaks_anthropic_on_messages(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = """
    limits: {budget_exceeded_status: 402}
    budgets:
      - {id: tiny, when: {}, limit_usd: 0.0001, period: week}
    """
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    refused = chat(gw, gw.token, max_tokens=100)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    messages = httpx.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": gw.token, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude/c",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert messages.status_code == 402
    body = messages.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert "'tiny'" in body["error"]["message"]


def test_an_audit_budget_lets_calls_through_and_shows_the_overrun(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = "budgets:\n  - {id: watch, when: {}, limit_usd: 0.0001, period: day, mode: audit}\n"
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    assert [chat(gw, gw.token).status_code for _ in range(3)] == [200, 200, 200]
    found = settled_budget(gw, "watch")
    assert found["spent_micros"] > found["limit_micros"] and found["remaining_micros"] < 0
    assert gw.metric("custos_budget_overruns_total", budget="watch") == 3


def test_streams_charge_their_real_usage_and_a_stream_without_usage_is_counted(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = """
    budgets:
      - {id: reported, when: {models: [mock/m]}, limit_usd: 10, period: day}
      - {id: counted, when: {models: [mock/m+no_usage]}, limit_usd: 10, period: day}
    """
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    content = "consectetur adipiscing exercitation"
    body = {"messages": [{"role": "user", "content": content}]}
    for model in ("mock/m", "mock/m+no_usage"):
        with httpx.stream(
            "POST",
            f"{gw.base_url}/chat/completions",
            headers=gw.headers,
            json={"model": model, "stream": True, "max_tokens": 15, **body},
        ) as response:
            assert response.status_code == 200
            text = "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in response.iter_lines()
                if line.startswith("data: {") and '"choices":[{' in line
            )
    # The provider's usage chunk: prompt tokens as the mock counts them, 15 output tokens.
    reported = PRICE.cost_micros(Usage(input_tokens=prompt_tokens_openai(body), output_tokens=15))
    assert settled_budget(gw, "reported")["spent_micros"] == reported
    # No usage from the provider: the input estimated, the output counted from what was relayed.
    counted = PRICE.cost_micros(
        Usage(input_tokens=estimate_prompt_tokens(body), output_tokens=tokens_for_chars(len(text)))
    )
    assert counted > 0
    assert settled_budget(gw, "counted")["spent_micros"] == counted


def test_a_restarted_gateway_keeps_its_budgets_spend(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = "budgets:\n  - {id: kept, when: {}, limit_usd: 1, period: month}\n"
    config = with_rules(provider_config(mock_provider.url), rules)
    gw = start(started, config, tmp_path)
    for _ in range(3):
        assert chat(gw, gw.token).status_code == 200
    spent = settled_budget(gw, "kept")["spent_micros"]
    assert spent > 0
    gw.stop()  # a graceful stop writes the ledger a last time
    # A new process on the same store (named by its absolute path: no second admin is made).
    same_store = config.replace("sqlite:///./custos.db", f"sqlite:///{tmp_path}/custos.db")
    (tmp_path / "again").mkdir()
    again = start(started, same_store, tmp_path / "again")
    again.token = gw.token
    assert budget(again, "kept")["spent_micros"] == spent
    assert chat(again, again.token).status_code == 200
    assert settled_budget(again, "kept")["spent_micros"] > spent


def test_unpriced_models_are_allowed_counted_and_free(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = "budgets:\n  - {id: all, when: {}, limit_usd: 1, period: day}\n"
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    assert chat(gw, gw.token, model="mock/free").status_code == 200
    assert gw.metric("custos_unpriced_calls_total", model="mock/free") == 1
    assert settled_budget(gw, "all")["spent_micros"] == 0


# -- alerts ----------------------------------------------------------------------------------


class Webhook:
    """A local receiver that answers 500 to its first POST, then 200."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.attempts = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                payload = json.loads(self.rfile.read(length))
                owner.attempts += 1
                status = 500 if owner.attempts == 1 else 200
                if status == 200:
                    owner.received.append({**payload, "_auth": self.headers.get("x-hook-key")})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_alerts_fire_once_per_threshold_and_are_retried(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    hook = Webhook()
    try:
        rules = f"""
        budgets:
          - id: alerted
            when: {{}}
            limit_usd: 0.002
            period: day
            mode: audit
            alerts:
              at_percent: [50, 100]
              webhook: "{hook.url}"
              headers: {{x-hook-key: "${{env:CUSTOS_TEST_MOCK_KEY}}"}}
        """
        gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
        for _ in range(12):  # about 207 micro-dollars each: past 100% of 2000 by the 10th
            assert chat(gw, gw.token).status_code == 200
        assert wait_for(lambda: len(hook.received) >= 2, timeout=15)
        time.sleep(1.5)  # anything else would have arrived by now
        assert sorted(p["percent"] for p in hook.received) == [50, 100]
        assert hook.attempts == 3  # the first delivery failed and was retried once
        alert = next(p for p in hook.received if p["percent"] == 50)
        assert alert["budget"] == "alerted" and alert["type"] == "custos.budget.threshold"
        assert alert["spent_micros"] * 100 >= 50 * alert["limit_micros"] == 50 * 2000
        assert alert["_auth"] == MOCK_KEY and alert["split"] == {}
        assert gw.metric("custos_budget_alerts_total", budget="alerted", outcome="delivered") == 2
    finally:
        hook.close()


# -- GET /admin/v1/budgets ---------------------------------------------------------------------


def test_budgets_are_shown_by_role(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    users = make_users(
        tmp_path,
        {
            "audit@x.example": ("auditor",),
            "lead@x.example": ("team_manager",),
            "ann@x.example": ("member",),
            "sam@x.example": ("member",),
        },
    )
    rules = """
    teams:
      support: {members: [ann@x.example], managers: [lead@x.example]}
      sales: {members: [sam@x.example]}
    budgets:
      - {id: per-team, when: {}, limit_usd: 1, period: month, applies_per: [team]}
      - {id: support-only, when: {subjects: [team:support]}, limit_usd: 2, period: day}
      - {id: sales-only, when: {subjects: [team:sales]}, limit_usd: 2, period: day}
    """
    gw = start(started, with_rules(provider_config(mock_provider.url), rules), tmp_path)
    assert chat(gw, users["ann@x.example"]).status_code == 200
    assert chat(gw, users["sam@x.example"]).status_code == 200
    time.sleep(0.2)

    everything = budgets(gw, users["audit@x.example"]).json()["data"]
    assert [b["id"] for b in everything] == ["per-team", "support-only", "sales-only"]
    splits = {s["split"]["team"]: s for s in everything[0]["splits"]}
    assert set(splits) == {"support", "sales"}
    assert splits["support"]["limit_micros"] == 1_000_000
    assert splits["support"]["remaining_micros"] == 1_000_000 - splits["support"]["spent_micros"]
    assert everything[0]["remaining_micros"] is None  # split: per split only

    lead = budgets(gw, users["lead@x.example"]).json()["data"]
    assert [b["id"] for b in lead] == ["per-team", "support-only"]
    assert [s["split"] for s in lead[0]["splits"]] == [{"team": "support"}]
    assert lead[1]["remaining_micros"] == 2_000_000 - lead[1]["spent_micros"]

    member = budgets(gw, users["ann@x.example"])
    assert member.status_code == 403
    assert budgets(gw, users["audit@x.example"], budget="sales-only").json()["data"][0]["id"] == (
        "sales-only"
    )
    assert budgets(gw, users["audit@x.example"], colour="red").status_code == 400
    assert httpx.get(f"{gw.url}/admin/v1/budgets").status_code == 401
    spec = httpx.get(f"{gw.url}/admin/v1/openapi.json").json()
    assert "get" in spec["paths"]["/admin/v1/budgets"]


def test_a_reload_changes_limits_and_keeps_the_counters(
    mock_provider: MockProvider, tmp_path: Path, started: list[GatewayProcess]
):
    rules = "rate_limits:\n  - {id: steady, limit_to: 2, unit: requests_per_minute}\n"
    config = with_rules(provider_config(mock_provider.url), rules)
    gw = start(started, config, tmp_path)
    assert [chat(gw, gw.token).status_code for _ in range(3)] == [200, 200, 429]
    before = gw.revision()
    gw.config_path.write_text(config.replace("limit_to: 2", "limit_to: 4"))
    gw.sighup()
    assert wait_for(lambda: gw.revision() != before, timeout=10)
    # The same rule id keeps its counter: two were admitted, so two more fit under the new limit.
    assert [chat(gw, gw.token).status_code for _ in range(3)] == [200, 200, 429]

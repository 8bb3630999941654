"""Every request leaves a record whose integers the record schema can hold (±(2**53 - 1)).

A count the caller sends that no record could hold is refused at intake with a 400 naming the
field in the caller's protocol (and that 400 has its record); counts the gateway derives from
what it admits (reservations, costs) stay in range; a provider that reports absurd usage gets
its counts clamped and the record says the usage is not the provider's (``usage.estimated``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from custos.wire import MAX_INT, MAX_TOKENS
from tests.audit_helpers import integers_in, recorded, serve_http
from tests.conftest import GatewayProcess, MockProvider
from tests.limits_helpers import bearer, provider_config, with_rules

AUDIT_BUDGET = """
budgets:
  - id: watch
    when: {}
    limit_usd: 100
    period: day
    mode: audit
"""


@pytest.fixture(scope="module")
def budgeted(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = with_rules(provider_config(mock_provider.url), AUDIT_BUDGET)
    gw = GatewayProcess(config, tmp_path_factory.mktemp("bounds"))
    yield gw
    gw.stop()


def send(gw: GatewayProcess, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.url}{route}", headers=bearer(gw.token), json=body, timeout=30)


CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HUGE = (2**62, 2**53, 2**53 - 1, MAX_TOKENS + 1, 2**64, 2**100)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "mock/m", "messages": [{"role": "user", "content": "hi"}], **fields}


def messages_body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude/c", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n"])
def test_openai_counts_past_the_bound_are_a_400_naming_the_field(
    budgeted: GatewayProcess, field: str, value: int
):
    response = send(budgeted, CHAT, chat_body(**{field: value}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert field in error["message"] and str(MAX_TOKENS) in error["message"]
    record = recorded(budgeted, response.headers["x-custos-request-id"])
    assert (record["http.response.status_code"], record["stopped_at"]) == (400, "read_request")
    assert record["gen_ai.request.max_tokens"] is None


@pytest.mark.parametrize("value", HUGE)
def test_anthropic_max_tokens_past_the_bound_is_a_400_naming_it(
    budgeted: GatewayProcess, value: int
):
    response = send(budgeted, MESSAGES, messages_body(max_tokens=value))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    record = recorded(budgeted, response.headers["x-custos-request-id"])
    assert (record["http.response.status_code"], record["stopped_at"]) == (400, "read_request")


@pytest.mark.parametrize(
    ("route", "body"),
    [(CHAT, chat_body(max_tokens=MAX_TOKENS)), (MESSAGES, messages_body(max_tokens=MAX_TOKENS))],
)
def test_the_largest_count_accepted_is_served_and_recorded_in_range(
    budgeted: GatewayProcess, route: str, body: dict[str, Any]
):
    response = send(budgeted, route, body)
    assert response.status_code == 200, response.text
    record = recorded(budgeted, response.headers["x-custos-request-id"])
    assert record["gen_ai.request.max_tokens"] == MAX_TOKENS
    assert record["limits.reserved_micros"] > 0
    assert all(abs(i) <= MAX_INT for i in integers_in(record))


# -- a provider that reports absurd usage -------------------------------------------------------

ABSURD = 2**64 - 1  # the largest count JSON parsers still read as an integer


class AbsurdProvider:
    """An OpenAI- and Anthropic-shaped provider whose usage counts are past any range."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path.endswith("/messages"):
                    payload = {
                        "id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                        "usage": {"input_tokens": ABSURD, "output_tokens": 2**63,
                                  "cache_read_input_tokens": 2**64},
                    }  # fmt: skip
                else:
                    payload = {
                        "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "ok"}}],
                        "usage": {"prompt_tokens": ABSURD, "completion_tokens": 2**63,
                                  "total_tokens": ABSURD,
                                  "completion_tokens_details": {"reasoning_tokens": 2**64}},
                    }  # fmt: skip
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve_http(Handler)

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(
    ("route", "body"),
    [(CHAT, chat_body(max_tokens=10)), (MESSAGES, messages_body(max_tokens=10))],
)
def test_absurd_upstream_usage_is_clamped_and_the_request_recorded(
    tmp_path: Path, route: str, body: dict[str, Any]
):
    provider = AbsurdProvider()
    gw = GatewayProcess(with_rules(provider_config(provider.url), AUDIT_BUDGET), tmp_path)
    try:
        response = send(gw, route, body)
        assert response.status_code == 200, response.text
        record = recorded(gw, response.headers["x-custos-request-id"])
        assert record["usage.estimated"] is True
        assert record["gen_ai.usage.input_tokens"] == MAX_TOKENS
        assert record["gen_ai.usage.output_tokens"] == MAX_TOKENS
        assert 0 < record["cost_micros"] <= MAX_INT
        assert all(abs(i) <= MAX_INT for i in integers_in(record))
        assert gw.metric("custos_audit_dropped_total") == 0
    finally:
        gw.stop()
        provider.close()


@pytest.mark.parametrize(
    "declared", ["pii:²", "pii:٣", ",".join(["pii:1000000000"] * 2)], ids=["super", "arabic", "sum"]
)
def test_data_class_counts_past_the_bound_are_a_400_with_a_record(
    budgeted: GatewayProcess, declared: str
):
    metadata = json.dumps({"data_classification": declared})  # "²" sent as \u00b2
    headers = {**bearer(budgeted.token), "x-custos-metadata": metadata}
    response = httpx.post(f"{budgeted.url}{CHAT}", headers=headers, json=chat_body(), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_metadata"
    record = recorded(budgeted, response.headers["x-custos-request-id"])
    assert (record["http.response.status_code"], record["stopped_at"]) == (400, "identify")


def test_a_record_holding_an_unrecordable_value_is_repaired_not_lost():
    """The safety net behind the bounds: sealing that fails is retried on a repaired record
    that names what it changed, so the request still has its one record."""
    from custos.audit.records.events import repaired
    from custos.audit.records.record import NotCanonical, seal, unseal

    record = {
        "event_type": "llm.call",
        "time_start": "2026-07-01T00:00:00.000Z",
        "limits.reserved_micros": 2**64,
        "attempts": [{"latency_ms": 1.5, "error": "bad \udc80"}],
        "cost_micros": -(2**70),
        "fine": 12,
    }
    with pytest.raises(NotCanonical):
        seal(dict(record), at_ms=0)
    fixed = repaired(record)
    back = unseal(seal(fixed, at_ms=0).body).fields
    assert back["limits.reserved_micros"] == MAX_INT and back["cost_micros"] == -MAX_INT
    assert back["attempts"] == [{"latency_ms": 1, "error": "bad ?"}]
    assert back["audit.repaired"] == [
        "$.limits.reserved_micros", "$.attempts[0].latency_ms", "$.attempts[0].error",
        "$.cost_micros",
    ]  # fmt: skip
    assert back["fine"] == 12


def test_sealing_refuses_integers_past_the_schema_even_unchecked():
    """The request path seals without the checking walk: an integer between 2**53 and 2**64
    (which orjson would otherwise write) must still be refused, and so repaired, not stored
    as a record no reader can hold exactly."""
    from custos.audit.records.record import NotCanonical, seal

    for value in (2**53, -(2**53), 2**63):
        with pytest.raises(NotCanonical):
            seal({"event_type": "llm.call", "time_start": "2026-07-01T00:00:00.000Z",
                  "gen_ai.request.max_tokens": value}, at_ms=0, check=False)  # fmt: skip
    sealed = seal({"event_type": "llm.call", "time_start": "2026-07-01T00:00:00.000Z",
                   "cost_micros": MAX_INT}, at_ms=0, check=False)  # fmt: skip
    assert b'"cost_micros":9007199254740991' in sealed.body


ABSURD_PRICE = "other: {input_per_mtok: 1000000000000, output_per_mtok: 1000000000000}"
ENFORCED_ON_OTHER = """
budgets:
  - id: cap-other
    when: {models: [mock/other]}
    limit_usd: 5
    period: day
    mode: enforce
"""


def test_reservations_and_costs_of_an_absurd_price_stay_in_range(
    mock_provider: MockProvider, tmp_path: Path
):
    """Prices have no upper bound: a reservation or cost past 2**53 - 1 micro-dollars is held
    at that bound (more than any budget), so the request, served or denied, keeps its record."""
    config = provider_config(mock_provider.url).replace(
        "other: {input_per_mtok: 1, output_per_mtok: 10}", ABSURD_PRICE
    )
    gw = GatewayProcess(with_rules(config, AUDIT_BUDGET), tmp_path)
    try:
        served = send(gw, CHAT, {**chat_body(max_tokens=MAX_TOKENS), "model": "mock/other"})
        assert served.status_code == 200, served.text
        record = recorded(gw, served.headers["x-custos-request-id"])
        assert record["limits.reserved_micros"] == MAX_INT
        assert 0 < record["cost_micros"] <= MAX_INT
    finally:
        gw.stop()
    (tmp_path / "enforcing").mkdir()
    enforcing = GatewayProcess(with_rules(config, ENFORCED_ON_OTHER), tmp_path / "enforcing")
    try:
        denied = send(enforcing, CHAT, {**chat_body(max_tokens=MAX_TOKENS), "model": "mock/other"})
        assert denied.status_code == 429, denied.text
        record = recorded(enforcing, denied.headers["x-custos-request-id"])
        assert (record["stopped_at"], record["limits.reserved_micros"]) == ("budget", MAX_INT)
    finally:
        enforcing.stop()

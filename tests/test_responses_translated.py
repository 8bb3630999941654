"""The Responses API through the official ``openai`` SDK to the provider types that speak
neither client protocol (``gemini``, ``vertex``, ``bedrock``): the request goes through its
Anthropic translation and then the adapter's Anthropic path, and the answer (plain, or the
typed event stream) comes back the same way. Usage and cost to the token and micro-dollar, by
the mock's published formula (per content 4 + the tokens of its texts; the instructions are one
more content) and ``TRANSLATED_PRICES``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_UP
from typing import Any

import openai
import pytest

from custos.mock import PER_MESSAGE_TOKENS, count_tokens
from tests.audit_helpers import one_call
from tests.conftest import GatewayProcess, MockProvider, serve_gateway
from tests.sdk_helpers import (
    REPLY_WORDS,
    TRANSLATED_MODELS,
    TRANSLATED_PRICES,
    WEATHER_ARGS,
    Meter,
    add_translated_accounts,
    assert_text_reply,
    config_with,
    last_request,
)
from tests.test_responses import _tool_turns as tool_turns
from tests.test_responses import store_url

INSTRUCTIONS = "Answer briefly"
#: Where each provider type's request arrives (plain and streamed share it).
UPSTREAM_PATHS = {
    "gemini": "/v1beta/models/gemini-2.5-flash:",
    "vertex": "/publishers/google/models/gemini-2.5-pro:",
    "bedrock": "/model/anthropic.claude-sonnet-4-5-v1:0/converse",
}
MODELS = list(TRANSLATED_MODELS.items())
IDS = list(TRANSLATED_MODELS)


@pytest.fixture(scope="module")
def gateway(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("responses-translated")
    config = config_with(
        mock_provider.url, lambda c: add_translated_accounts(c, mock_provider.url, tmp)
    )
    yield from serve_gateway(config, tmp)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


def input_tokens(prompt: str) -> int:
    """The prompt as one content and the instructions as another."""
    return 2 * PER_MESSAGE_TOKENS + count_tokens(prompt) + count_tokens(INSTRUCTIONS)


def cost(input_count: int, output_count: int) -> int:
    exact = input_count * TRANSLATED_PRICES[0] + output_count * TRANSLATED_PRICES[1]
    return int(exact.quantize(1, rounding=ROUND_HALF_UP))


def upstream_body(provider: str, prompt: str, max_tokens: int | None) -> dict[str, Any]:
    """The body the provider documents for the prompt, the instructions and the output limit."""
    if provider == "bedrock":
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": [{"text": prompt}]}],
            "system": [{"text": INSTRUCTIONS}],
        }
        limit = {"inferenceConfig": {"maxTokens": max_tokens}}
    else:
        body = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "systemInstruction": {"parts": [{"text": INSTRUCTIONS}]},
        }
        limit = {"generationConfig": {"maxOutputTokens": max_tokens}}
    return body if max_tokens is None else {**body, **limit}


@pytest.mark.parametrize(("provider", "model"), MODELS, ids=IDS)
def test_plain_response_usage_cost_and_record(client, gateway, mock_provider, provider, model):
    prompt = f"Say hello to {provider} through the gateway"
    meter = Meter(gateway, model)
    mock_provider.clear()
    raw = client.responses.with_raw_response.create(
        model=model, input=prompt, instructions=INSTRUCTIONS, max_output_tokens=200
    )
    response = raw.parse()

    assert raw.headers["x-custos-served-by"] == model
    assert response.id.startswith("resp_") and response.model == model
    assert response.status == "completed"
    assert_text_reply(response.output_text, prompt)
    expected_in = input_tokens(prompt)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (expected_in, REPLY_WORDS)
    assert response.usage.total_tokens == expected_in + REPLY_WORDS
    charge = meter.delta()
    assert (charge.input, charge.output) == (expected_in, REPLY_WORDS)
    assert charge.cost == cost(expected_in, REPLY_WORDS)

    sent = last_request(mock_provider, UPSTREAM_PATHS[provider])
    assert not sent["path"].endswith(("-stream", "streamGenerateContent"))
    assert sent["body"] == upstream_body(provider, prompt, 200)
    record = one_call(store_url(gateway), raw.headers["x-custos-request-id"])
    assert record["api.operation"] == "responses"
    assert record["gen_ai.usage.input_tokens"] == expected_in
    assert record["cost_micros"] == charge.cost
    assert record["outcome"] == "served"


@pytest.mark.parametrize(("provider", "model"), MODELS, ids=IDS)
def test_streamed_events_usage_and_cost(client, gateway, mock_provider, provider, model):
    prompt = f"Stream a hello from {provider}"
    meter = Meter(gateway, model)
    mock_provider.clear()
    events = list(
        client.responses.create(model=model, input=prompt, instructions=INSTRUCTIONS, stream=True)
    )

    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert_text_reply(text, prompt)
    final = events[-1].response
    assert final.model == model and final.output_text == text
    expected_in = input_tokens(prompt)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (expected_in, REPLY_WORDS)
    charge = meter.delta()
    assert (charge.input, charge.output) == (expected_in, REPLY_WORDS)
    assert charge.cost == cost(expected_in, REPLY_WORDS)
    sent = last_request(mock_provider, UPSTREAM_PATHS[provider])
    assert sent["path"].endswith(("/converse-stream", ":streamGenerateContent"))
    # No output limit was asked for: the model's own applies, not a default of the gateway's.
    assert sent["body"] == upstream_body(provider, prompt, None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("provider", "model"), MODELS, ids=IDS)
def test_function_tool_round_trip(client, mock_provider, provider, model, stream):
    """A call the provider made, returned with its output on the next turn, reaches the provider
    as its own call and result (the ids it issued, Gemini's signature included)."""
    mock_provider.clear()
    call, second = tool_turns(model, client, stream=stream)
    assert call.call_id.startswith("toolu_")
    assert second.output_text.startswith("Mock reply to tool result")
    sent = last_request(mock_provider, UPSTREAM_PATHS[provider])["body"]
    if provider == "bedrock":
        tool_use = sent["messages"][1]["content"][0]["toolUse"]
        result = sent["messages"][2]["content"][0]["toolResult"]
        assert tool_use["toolUseId"].startswith("tooluse_")
        assert result["toolUseId"] == tool_use["toolUseId"]
        assert tool_use["input"] == WEATHER_ARGS
    else:
        function_call = sent["contents"][1]["parts"][0]["functionCall"]
        response = sent["contents"][2]["parts"][0]["functionResponse"]
        assert (function_call["name"], function_call["args"]) == ("get_weather", WEATHER_ARGS)
        assert response["name"] == "get_weather"


@pytest.mark.parametrize(("provider", "model"), MODELS, ids=IDS)
def test_state_kept_at_openai_is_refused_naming_the_field(client, provider, model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="hi", previous_response_id="resp_1")
    assert caught.value.body["param"] == "previous_response_id"
    target = "Bedrock" if provider == "bedrock" else "Gemini"
    assert f"cannot be sent to a {target} model" in caught.value.body["message"]
    assert "Anthropic" not in caught.value.body["message"]

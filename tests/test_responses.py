"""The OpenAI Responses API (``POST /v1/responses``) with the official ``openai`` SDK, to an
OpenAI account (relayed), an Azure account (its v1 surface) and an Anthropic account
(translated): plain and streamed, tools, usage and cost to the token, the audit record, limits,
and the fields that are refused rather than dropped.

Expected usage comes from the mock's published token formula, cost from ``standard_config``'s
prices, never from the gateway's code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from custos.mock import input_tokens_responses, prompt_tokens_anthropic
from tests.audit_helpers import one_call
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import settled_budget
from tests.sdk_helpers import (
    REPLY_WORDS,
    WEATHER_ARGS,
    WEATHER_ARGS_JSON,
    WEATHER_CALL_TOKENS,
    WEATHER_SCHEMA,
    Meter,
    assert_text_reply,
    config_with,
    expected_cost,
    last_request,
)

GPT = "openai-main/gpt-5.5"
AZURE = "azure-eu/gpt-5.5"
CLAUDE = "claude-main/claude-sonnet-4.5"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": WEATHER_SCHEMA,
}
INSTRUCTIONS = "Answer briefly"


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


def store_url(gateway: GatewayProcess) -> str:
    return f"sqlite:///{gateway.config_path.parent / 'custos.db'}"


def expected_input_tokens(model: str, body: dict[str, Any]) -> int:
    """What the mock reports for ``body``: by the Responses formula for OpenAI-format
    accounts, by the Messages formula for the Anthropic request it becomes."""
    if model != CLAUDE:
        return input_tokens_responses(body)
    value = body["input"]
    assert isinstance(value, str), "translated expectations are built by hand below"
    system = body.get("instructions")
    messages = [{"role": "user", "content": value}]
    return prompt_tokens_anthropic({"system": system, "messages": messages})


# -- plain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [GPT, AZURE, CLAUDE])
def test_plain_response_usage_cost_and_record(client, gateway, mock_provider, model):
    prompt = "Say hello to the gateway please"
    meter = Meter(gateway, model)
    mock_provider.clear()

    raw = client.responses.with_raw_response.create(
        model=model, input=prompt, instructions=INSTRUCTIONS, max_output_tokens=200
    )
    response = raw.parse()

    assert raw.headers["x-custos-served-by"] == model
    request_id = raw.headers["x-custos-request-id"]
    assert response.model == model  # the caller's name, never the deployment or upstream's
    assert response.status == "completed"
    assert_text_reply(response.output_text, prompt)
    input_tokens = expected_input_tokens(model, {"input": prompt, "instructions": INSTRUCTIONS})
    assert response.usage.input_tokens == input_tokens
    assert response.usage.output_tokens == REPLY_WORDS
    assert response.usage.total_tokens == input_tokens + REPLY_WORDS
    charge = meter.delta()
    assert (charge.input, charge.output) == (input_tokens, REPLY_WORDS)
    assert charge.cost == expected_cost(model, input_tokens, REPLY_WORDS)

    record = one_call(store_url(gateway), request_id)
    assert record["api.operation"] == "responses"
    assert record["gen_ai.operation.name"] == "chat"
    assert record["gen_ai.request.model"] == model
    assert record["gen_ai.request.max_tokens"] == 200
    assert record["gen_ai.usage.input_tokens"] == input_tokens
    assert record["gen_ai.usage.output_tokens"] == REPLY_WORDS
    assert record["cost_micros"] == charge.cost
    assert record["outcome"] == "served"


def test_openai_and_azure_receive_the_body_as_sent_with_the_upstream_model(client, mock_provider):
    mock_provider.clear()
    client.responses.create(model=GPT, input="hi", store=False, metadata={"k": "v"})
    sent = last_request(mock_provider, "/responses")
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == {
        "model": "gpt-5.5",
        "input": "hi",
        "store": False,
        "metadata": {"k": "v"},
    }
    assert sent["headers"]["authorization"] == f"Bearer {MOCK_KEY}"

    client.responses.create(model=AZURE, input="hi")
    sent = last_request(mock_provider, "/responses")
    assert sent["path"] == "/openai/v1/responses"  # Azure's v1 surface: no deployment path
    assert sent["query"] == ""
    assert sent["body"] == {"model": "gpt55-eu", "input": "hi"}
    assert sent["headers"]["api-key"] == MOCK_KEY
    assert "authorization" not in sent["headers"]


def test_anthropic_receives_a_messages_request(client, mock_provider):
    mock_provider.clear()
    client.responses.create(
        model=CLAUDE,
        input=[
            {"role": "developer", "content": "Be terse"},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]},
        ],
        instructions=INSTRUCTIONS,
        max_output_tokens=2000,
        temperature=0.5,
        reasoning={"effort": "low"},
    )
    sent = last_request(mock_provider, "/v1/messages")
    assert sent["body"] == {
        "model": "claude-sonnet-4.5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        "max_tokens": 2000,
        "system": [{"type": "text", "text": INSTRUCTIONS}, {"type": "text", "text": "Be terse"}],
        "temperature": 0.5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }


def test_a_truncated_answer_is_incomplete(client):
    for model in (GPT, CLAUDE):
        response = client.responses.create(model=model, input="Tell me more", max_output_tokens=16)
        assert response.status == "incomplete", model
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.usage.output_tokens == 16


# -- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [GPT, AZURE, CLAUDE])
def test_streamed_events_usage_and_cost(client, gateway, model):
    prompt = "Stream a hello to the gateway"
    meter = Meter(gateway, model)
    raw = client.responses.with_raw_response.create(
        model=model, input=prompt, instructions=INSTRUCTIONS, stream=True
    )
    assert raw.headers["x-custos-served-by"] == model
    request_id = raw.headers["x-custos-request-id"]
    events = list(raw.parse())

    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert_text_reply(text, prompt)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text
    final = events[-1].response
    assert events[0].response.model == final.model == model
    assert final.output_text == text
    input_tokens = expected_input_tokens(model, {"input": prompt, "instructions": INSTRUCTIONS})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (input_tokens, REPLY_WORDS)
    charge = meter.delta()
    assert charge.cost == expected_cost(model, input_tokens, REPLY_WORDS)
    record = one_call(store_url(gateway), request_id)
    assert record["api.operation"] == "responses"
    assert record["gen_ai.request.stream"] is True
    assert record["gen_ai.usage.output_tokens"] == REPLY_WORDS


@pytest.mark.parametrize("model", [GPT, AZURE, CLAUDE])
def test_the_stream_helper(client, model):
    prompt = "Helper streaming please"
    with client.responses.stream(model=model, input=prompt) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert_text_reply(text, prompt)
    assert final.output_text == text
    assert final.model == model
    assert final.usage.output_tokens == REPLY_WORDS


# -- tools ---------------------------------------------------------------------------------------


def _tool_turns(model: str, client: openai.OpenAI, *, stream: bool) -> tuple[Any, Any]:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    if stream:
        with client.responses.stream(model=model, input=[question], tools=[WEATHER_TOOL]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == WEATHER_ARGS
    assert first.usage.output_tokens == WEATHER_CALL_TOKENS
    history = [
        question,
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]  # fmt: skip
    second = client.responses.create(model=model, input=history, tools=[WEATHER_TOOL])
    return call, second


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [GPT, AZURE, CLAUDE])
def test_function_tool_round_trip(client, mock_provider, model, stream):
    mock_provider.clear()
    call, second = _tool_turns(model, client, stream=stream)
    assert second.output_text.startswith("Mock reply to tool result")
    if model == CLAUDE:
        sent = last_request(mock_provider, "/v1/messages")["body"]
        assert sent["tools"] == [
            {"name": "get_weather", "input_schema": WEATHER_SCHEMA,
             "description": "Weather for a city"}
        ]  # fmt: skip
        tool_use = {"type": "tool_use", "id": call.call_id, "name": "get_weather",
                    "input": WEATHER_ARGS}  # fmt: skip
        result = {"type": "tool_result", "tool_use_id": call.call_id, "content": "Sunny, 21 C"}
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [result]},
        ]
        assert second.usage.input_tokens == prompt_tokens_anthropic(sent)
    else:
        sent = last_request(mock_provider, "/responses")["body"]
        assert sent["input"][1]["arguments"] == WEATHER_ARGS_JSON
        assert second.usage.input_tokens == input_tokens_responses(sent)


# -- refused, never dropped ----------------------------------------------------------------------


def _refused(client: openai.OpenAI, **fields: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**fields)
    return caught.value


def test_previous_response_id_passes_to_one_openai_account(client, mock_provider):
    mock_provider.clear()
    client.responses.create(model=GPT, input="and then?", previous_response_id="resp_abc")
    assert last_request(mock_provider, "/responses")["body"]["previous_response_id"] == "resp_abc"


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("chat-default", {"previous_response_id": "resp_abc"}, "previous_response_id"),
        ("chat-default", {"conversation": "conv_abc"}, "conversation"),
        (CLAUDE, {"previous_response_id": "resp_abc"}, "previous_response_id"),
        (CLAUDE, {"store": True}, "store"),
        (CLAUDE, {"background": True}, "background"),
        (CLAUDE, {"top_logprobs": 2}, "top_logprobs"),
        (CLAUDE, {"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            CLAUDE,
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": WEATHER_SCHEMA}}},
            "text.format",
        ),
        (CLAUDE, {"reasoning": {"generate_summary": "auto"}}, "reasoning.generate_summary"),
        (CLAUDE, {"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ],
)
def test_what_cannot_be_served_is_refused_naming_the_field(
    client, gateway, mock_provider, model, fields, param
):
    meter = Meter(gateway, GPT if model == "chat-default" else model)
    mock_provider.clear()
    error = _refused(client, model=model, **{"input": "hello", **fields})
    assert error.body["param"] == param
    assert param.split("[")[0].split(".")[0] in error.body["message"]
    assert mock_provider.requests() == []  # refused before any provider was called
    assert meter.unchanged()


def test_bad_input_is_a_400_in_openai_shape(gateway):
    headers = {"authorization": f"Bearer {gateway.token}"}
    for body, param in (
        ({"model": GPT}, "input"),
        ({"model": GPT, "input": []}, "input"),
        ({"model": GPT, "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ):
        answer = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers)
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == param
    # The gateway keeps no responses: reading one back is not a route here.
    stored = httpx.get(f"{gateway.url}/v1/responses/resp_1", headers=headers)
    assert stored.status_code == 404
    assert stored.json()["error"]["code"] == "unknown_route"


def test_provider_errors_reach_the_caller(client):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=GPT + "+status=429", input="hi")


def test_a_broken_stream_ends_with_a_typed_error_event(client, gateway):
    """The Responses protocol's own error event, numbered after the events relayed."""
    raw = client.responses.with_raw_response.create(
        model=GPT + "+drop_after=3", input="hi", stream=True
    )
    events = list(raw.parse())
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "error",
    ]
    assert events[-1].sequence_number == 3
    assert events[-1].code == "upstream_stream_broken"
    record = one_call(store_url(gateway), raw.headers["x-custos-request-id"])
    assert record["error.type"] == "upstream_stream_broken"


# -- limits --------------------------------------------------------------------------------------


@pytest.fixture
def limited(mock_provider: MockProvider, tmp_path: Path) -> Iterator[GatewayProcess]:
    def edit(config: dict[str, Any]) -> None:
        config["budgets"] = [{"id": "resp-budget", "when": {}, "limit_usd": 10, "period": "day"}]
        config["rate_limits"] = [
            {
                "id": "virtual-requests",
                "when": {"models": ["chat-default", CLAUDE]},
                "limit_to": 1,
                "unit": "requests_per_minute",
            },
            {"id": "resp-tokens", "limit_to": 1000, "unit": "tokens_per_day"},
        ]

    process = GatewayProcess(config_with(mock_provider.url, edit), tmp_path)
    yield process
    process.stop()


def test_the_rate_limit_counts_input_instructions_and_max_output_tokens(limited, mock_provider):
    """The estimate decides admission; the budget is then charged the actual cost."""
    with openai.OpenAI(base_url=limited.base_url, api_key=limited.token, max_retries=0) as sdk:
        mock_provider.clear()
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.responses.create(model=GPT, input="hi", max_output_tokens=2000)
        assert "can never admit this request" in caught.value.body["message"]
        assert mock_provider.requests() == []
        long_instructions = "word " * 400  # 2000 characters: about 500 tokens
        raw = sdk.responses.with_raw_response.create(
            model=GPT, input="hi", instructions=long_instructions, max_output_tokens=100
        )
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        assert 1000 - 100 - 510 <= remaining <= 1000 - 100 - 500
        assert raw.headers["x-custos-applied"].split(",")[1:] == ["resp-budget", "resp-tokens"]
        usage = raw.parse().usage
        cost = expected_cost(GPT, usage.input_tokens, usage.output_tokens)
        assert settled_budget(limited, "resp-budget")["spent_micros"] == cost


def test_a_stream_without_usage_is_estimated_and_recorded(client, gateway):
    raw = client.responses.with_raw_response.create(
        model=GPT + "+no_usage", input="Count these words please", stream=True
    )
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is None
    record = one_call(store_url(gateway), raw.headers["x-custos-request-id"])
    assert record["usage.estimated"] is True
    assert record["gen_ai.usage.output_tokens"] > 0
    assert record["gen_ai.usage.input_tokens"] > 0


def test_a_malformed_provider_answer_is_a_502(client):
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=GPT + "+malformed", input="hi")
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_malformed_response"


def test_a_refused_request_takes_nothing_from_the_limits(limited):
    with openai.OpenAI(base_url=limited.base_url, api_key=limited.token, max_retries=0) as sdk:
        for _ in range(2):
            refused = _refused(sdk, model="chat-default", input="hi", previous_response_id="r")
            assert refused.body["param"] == "previous_response_id"
        # The one request a minute is still there.
        raw = sdk.responses.with_raw_response.create(model="chat-default", input="hi")
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_chat_request_a_translation_refuses_takes_nothing_either(limited):
    """The same holds on the chat route: n > 1 has no Anthropic counterpart."""
    with openai.OpenAI(base_url=limited.base_url, api_key=limited.token, max_retries=0) as sdk:
        messages = [{"role": "user", "content": "hi"}]
        for _ in range(2):
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.chat.completions.create(model=CLAUDE, messages=messages, n=2)
            assert caught.value.body["param"] == "n"
            assert "Anthropic returns one choice" in caught.value.body["message"]
        raw = sdk.chat.completions.with_raw_response.create(model=CLAUDE, messages=messages)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"

"""The mock provider's Responses API, straight from the ``openai`` SDK: OpenAI's and Azure's
routes, plain and streamed, tools, usage by the published formula, errors and knobs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from custos.mock import (
    BackgroundMock,
    count_tokens,
    input_tokens_responses,
    serve_in_background,
)
from tests.sdk_helpers import REPLY_WORDS, WEATHER_ARGS, WEATHER_SCHEMA, assert_text_reply

TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}


@pytest.fixture(scope="module")
def mock() -> Iterator[BackgroundMock]:
    server = serve_in_background()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(mock: BackgroundMock) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock.openai_base_url, api_key="mock-key", max_retries=0) as sdk:
        yield sdk


def test_usage_follows_the_published_formula(client):
    body = {
        "instructions": "Be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hello, world!"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
        ],
    }
    expected = (4 + 2) + (4 + 4) + (4 + count_tokens("f") + count_tokens('{"a":1}')) + (4 + 1)
    assert input_tokens_responses(body) == expected
    response = client.responses.create(model="gpt-4o", **body)
    assert response.usage.input_tokens == expected
    assert response.output_text.startswith("Mock reply to tool result")
    assert response.usage.output_tokens == REPLY_WORDS
    assert response.usage.total_tokens == expected + REPLY_WORDS


def test_plain_and_streamed_answers_agree(client):
    plain = client.responses.create(model="gpt-4o", input="Hello there mock")
    assert_text_reply(plain.output_text, "Hello there mock")
    assert plain.id.startswith("resp_") and plain.object == "response"
    events = list(client.responses.create(model="gpt-4o", input="Hello there mock", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    final = events[-1].response
    assert final.output_text == plain.output_text
    assert final.usage == plain.usage


def test_a_function_tool_is_called_plain_and_streamed(client):
    plain = client.responses.create(model="gpt-4o", input="weather?", tools=[TOOL])
    call = plain.output[0]
    assert call.type == "function_call" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == WEATHER_ARGS
    with client.responses.stream(model="gpt-4o+chunks=3", input="weather?", tools=[TOOL]) as s:
        deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    assert len(deltas) == 3
    assert json.loads("".join(deltas)) == WEATHER_ARGS
    assert final.output[0].arguments == call.arguments
    none = client.responses.create(model="gpt-4o", input="x", tools=[TOOL], tool_choice="none")
    assert none.output[0].type == "message"


def test_knobs_and_errors(client, mock):
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="gpt-4o+status=429", input="hi")
    assert caught.value.body["code"] == "rate_limit_exceeded"
    events = list(client.responses.create(model="gpt-4o+no_usage", input="hi", stream=True))
    assert events[-1].response.usage is None
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gpt-4o", input="hi", max_output_tokens=3)
    assert bad.value.body["param"] == "max_output_tokens"
    truncated = client.responses.create(model="gpt-4o", input="hi", max_output_tokens=16)
    assert truncated.status == "incomplete"
    assert truncated.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(json.JSONDecodeError):  # the SDK cannot parse the garbage body
        client.responses.create(model="gpt-4o+malformed", input="hi")
    wrong_key = httpx.post(
        f"{mock.openai_base_url}/responses",
        json={"model": "gpt-4o", "input": "hi"},
        headers={"authorization": "Bearer nope"},
    )
    assert wrong_key.status_code == 401


def test_azure_v1_surface(mock):
    url = f"{mock.url}/openai/v1/responses"
    body = {"model": "my-deployment", "input": "hi"}
    answer = httpx.post(url, json=body, headers={"api-key": "mock-key"})
    assert answer.status_code == 200
    assert answer.json()["model"] == "my-deployment"
    refused = httpx.post(url, json=body, headers={"api-key": "nope"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "401"  # Azure's error shape

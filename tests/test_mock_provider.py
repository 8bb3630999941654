"""The mock provider, driven by the official openai and anthropic SDKs over real HTTP."""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from custos.mock import (
    PER_MESSAGE_TOKENS,
    BackgroundMock,
    count_tokens,
    prompt_tokens_anthropic,
    prompt_tokens_openai,
    serve_in_background,
)

KEY = "mock-key"
USER = [{"role": "user", "content": "Hello, how are you today?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "metric", "unit"],
        },
    },
}
WEATHER_ARGS = {"city": "mock", "days": 1, "metric": True, "unit": "c"}
CLAUDE_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest.fixture(scope="module")
def mock() -> Iterator[BackgroundMock]:
    server = serve_in_background()
    yield server
    server.stop()


@pytest.fixture
def oai(mock: BackgroundMock) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.openai_base_url, api_key=KEY, max_retries=0)


@pytest.fixture
def claude(mock: BackgroundMock) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.url, api_key=KEY, max_retries=0)


@pytest.fixture
def azure(mock: BackgroundMock) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=mock.url, api_version="2024-10-21", api_key=KEY, max_retries=0
    )


def _stats(mock: BackgroundMock) -> dict[str, int]:
    return httpx2.get(mock.url + "/_mock/stats").json()


def _wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------- tokenizer


def test_count_tokens_splits_words_and_punctuation() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  spaced\tout\nwords ") == 3
    assert count_tokens('{"city": "Paris"}') == count_tokens('{"city":"Paris"}') == 9
    assert count_tokens("") == 0


def test_prompt_token_formulas() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "sunny"},
        ]
    }
    # (4 + 3) + (4 + 2) + (4 + 1 + 2) + (4 + 1)
    assert prompt_tokens_openai(body) == 25
    claude_body = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi there"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "sunny"}],
                    }
                ],
            },
        ],
    }
    # system (4 + 3) + (4 + 2) + (4 + 1 + 7 for {"a":1}) + (4 + 1)
    assert prompt_tokens_anthropic(claude_body) == 30


# ------------------------------------------------------------------------ OpenAI chat


def test_openai_chat(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    result = oai.chat.completions.create(model="gpt-4o", messages=messages)
    choice = result.choices[0]
    assert choice.message.content.startswith("Mock reply to Hello how are you today")
    assert choice.finish_reason == "stop"
    assert result.model == "gpt-4o"
    assert result.id.startswith("chatcmpl-")
    assert result.usage is not None
    assert result.usage.completion_tokens == 20 == count_tokens(choice.message.content)
    expected_prompt = 2 * PER_MESSAGE_TOKENS + count_tokens("You are terse.") + 7
    assert (
        result.usage.prompt_tokens
        == expected_prompt
        == prompt_tokens_openai({"messages": messages})
    )
    assert result.usage.total_tokens == expected_prompt + 20


async def test_openai_async_chat(mock: BackgroundMock) -> None:
    client = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=KEY, max_retries=0)
    async with client:
        result = await client.chat.completions.create(model="m+words=7", messages=USER)
        stream = await client.chat.completions.create(model="m+words=7", messages=USER, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert result.usage is not None and result.usage.completion_tokens == 7
    assert "".join(pieces) == result.choices[0].message.content


def test_max_tokens_truncates(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    result = oai.chat.completions.create(model="m", messages=USER, max_completion_tokens=5)
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].message.content == "Mock reply to Hello how"
    assert result.usage is not None and result.usage.completion_tokens == 5
    message = claude.messages.create(model="c", max_tokens=4, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4


def test_openai_stream_without_usage(oai: openai.OpenAI) -> None:
    full = oai.chat.completions.create(model="m", messages=USER).choices[0].message.content
    chunks = list(oai.chat.completions.create(model="m+chunks=5", messages=USER, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len(chunks) == 1 + 5 + 1  # role, five content fragments, finish
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full


def test_openai_stream_include_usage(oai: openai.OpenAI, mock: BackgroundMock) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == prompt_tokens_openai({"messages": USER})
    # On the wire every other chunk carries an explicit "usage": null, as OpenAI sends it.
    body = {
        "model": "m",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raw = httpx2.post(
        mock.openai_base_url + "/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
    ).text
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert all("usage" in p for p in payloads)
    assert [p["usage"] is None for p in payloads] == [True] * (len(payloads) - 1) + [False]


def test_openai_no_usage_knob(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="m+no_usage", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_tool_call(oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(model="m", messages=USER, tools=[WEATHER_TOOL])
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    expected = count_tokens("get_weather") + count_tokens(call.function.arguments)
    assert result.usage is not None and result.usage.completion_tokens == expected
    # tool_choice "none" answers in text; a named tool_choice picks that tool.
    none = oai.chat.completions.create(
        model="m", messages=USER, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None
    other = {"type": "function", "function": {"name": "ping", "parameters": {}}}
    named = oai.chat.completions.create(
        model="m",
        messages=USER,
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "ping"}},
    )
    assert named.choices[0].message.tool_calls[0].function.name == "ping"
    assert named.choices[0].message.tool_calls[0].function.arguments == "{}"


def test_openai_streamed_tool_call(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="m+chunks=4", messages=USER, tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    kind = "tool_calls.function.arguments.delta"
    fragments = [e.arguments_delta for e in events if e.type == kind and e.arguments_delta]
    assert len(fragments) == 4  # the opening chunk carries id and name with empty arguments


def test_openai_tool_result_reply(oai: openai.OpenAI) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny and 21C"},
    ]
    result = oai.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.content.startswith("Mock reply to tool result Sunny and 21C")


# ------------------------------------------------------------------------- embeddings


def test_embeddings_float_and_base64(oai: openai.OpenAI, mock: BackgroundMock) -> None:
    default = oai.embeddings.create(model="e", input=["alpha beta", "gamma"])  # base64 on the wire
    floats = oai.embeddings.create(
        model="e", input=["alpha beta", "gamma"], encoding_format="float"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    vector = floats.data[0].embedding
    assert len(vector) == 16
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 3 == floats.usage.total_tokens
    wide = oai.embeddings.create(model="e", input="alpha beta", dimensions=64)
    assert len(wide.data[0].embedding) == 64
    tokens = oai.embeddings.create(model="e", input=[[1, 2, 3], [4]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 4
    # base64 is little-endian float32 of the same numbers
    raw = httpx2.post(
        mock.openai_base_url + "/embeddings",
        json={"model": "e", "input": "gamma", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    decoded = struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == floats.data[1].embedding


def test_models_list(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    assert "gpt-4o" in [m.id for m in oai.models.list()]
    assert [m.id for m in claude.models.list()]


# ------------------------------------------------------------------------------ Azure


def test_azure_chat_stream_and_embeddings(azure: openai.AzureOpenAI, mock: BackgroundMock) -> None:
    httpx2.delete(mock.url + "/_mock/requests")
    result = azure.chat.completions.create(model="my-deploy", messages=USER)
    assert result.model == "my-deploy"
    assert result.choices[0].message.content.startswith("Mock reply to Hello")
    with azure.chat.completions.stream(model="my-deploy+chunks=3", messages=USER) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == result.choices[0].message.content
    embedded = azure.embeddings.create(model="emb-deploy", input="hi")
    assert len(embedded.data[0].embedding) == 16
    recorded = httpx2.get(mock.url + "/_mock/requests").json()
    assert recorded[0]["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert recorded[0]["query"] == "api-version=2024-10-21"
    assert recorded[0]["headers"]["api-key"] == KEY


def test_azure_errors(azure: openai.AzureOpenAI, mock: BackgroundMock) -> None:
    url = mock.url + "/openai/deployments/d/chat/completions"
    missing = httpx2.post(url, json={"messages": USER}, headers={"api-key": KEY})
    assert missing.status_code == 400
    assert "api-version" in missing.json()["error"]["message"]
    wrong = openai.AzureOpenAI(
        azure_endpoint=mock.url, api_version="2024-10-21", api_key="nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.chat.completions.create(model="d", messages=USER)
    assert denied.value.body["code"] == "401"
    with pytest.raises(openai.RateLimitError) as limited:
        azure.chat.completions.create(model="d+status=429", messages=USER)
    assert limited.value.response.headers["retry-after"] == "1"


# -------------------------------------------------------------------------- Anthropic


def test_anthropic_message(claude: anthropic.Anthropic) -> None:
    body = {"system": "Be kind.", "messages": USER}
    message = claude.messages.create(model="claude-x", max_tokens=100, **body)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-x"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Mock reply to Hello how are you today")
    assert message.usage.input_tokens == prompt_tokens_anthropic(body) == 2 * 4 + 3 + 7
    assert message.usage.output_tokens == 20
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    counted = claude.messages.count_tokens(model="claude-x", **body)
    assert counted.input_tokens == message.usage.input_tokens


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    plain = claude.messages.create(model="c", max_tokens=100, messages=USER)
    with claude.messages.stream(model="c+chunks=6", max_tokens=100, messages=USER) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) == 6
    assert final.content[0].text == plain.content[0].text == "".join(texts)
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"
    raw = claude.messages.create(model="c+chunks=2", max_tokens=100, messages=USER, stream=True)
    kinds = [event.type for event in raw]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK skips "ping"


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="c", max_tokens=100, messages=USER, tools=[CLAUDE_TOOL])
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather" and block.input == WEATHER_ARGS
    with claude.messages.stream(
        model="c+chunks=3", max_tokens=100, messages=USER, tools=[CLAUDE_TOOL]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds.count("input_json") == 3
    assert final.content[0].input == WEATHER_ARGS
    assert final.stop_reason == "tool_use"
    result_turn = [
        *USER,
        {
            "role": "assistant",
            "content": [block.model_dump(include={"type", "id", "name", "input"})],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Rainy, 12C"}],
        },
    ]
    answer = claude.messages.create(
        model="c", max_tokens=100, messages=result_turn, tools=[CLAUDE_TOOL]
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text.startswith("Mock reply to tool result Rainy 12C")


def test_anthropic_no_usage_and_errors(claude: anthropic.Anthropic, mock: BackgroundMock) -> None:
    with claude.messages.stream(model="c+no_usage", max_tokens=50, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 0
    assert final.usage.input_tokens == prompt_tokens_anthropic({"messages": USER})
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="c+status=429", max_tokens=5, messages=USER)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="c+status=529", max_tokens=5, messages=USER)
    with pytest.raises(anthropic.InternalServerError) as failed:
        claude.messages.create(model="c+status=500", max_tokens=5, messages=USER)
    assert failed.value.body["error"]["type"] == "api_error"
    wrong = anthropic.Anthropic(base_url=mock.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        wrong.messages.create(model="c", max_tokens=5, messages=USER)
    assert denied.value.body["error"]["type"] == "authentication_error"
    no_version = httpx2.post(
        mock.url + "/v1/messages",
        json={"model": "c", "max_tokens": 5, "messages": USER},
        headers={"x-api-key": KEY},
    )
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="c", max_tokens=0, messages=USER)


def test_anthropic_malformed_and_drop(claude: anthropic.Anthropic) -> None:
    with pytest.raises(json.JSONDecodeError):
        claude.messages.create(model="c+malformed", max_tokens=5, messages=USER)
    with pytest.raises(json.JSONDecodeError):
        list(claude.messages.create(model="c+malformed", max_tokens=5, messages=USER, stream=True))
    received: list[str] = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.HTTPError)):
        stream = claude.messages.create(
            model="c+drop_after=4", max_tokens=50, messages=USER, stream=True
        )
        received.extend(event.type for event in stream)
    # message_start, content_block_start, ping (skipped by the SDK), one delta
    assert received == ["message_start", "content_block_start", "content_block_delta"]


# ------------------------------------------------------------------- OpenAI error knobs


def test_openai_status_knobs(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="gpt-4o+status=429", messages=USER)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as failed:
        oai.chat.completions.create(model="gpt-4o+status=500", messages=USER)
    assert failed.value.status_code == 500 and failed.value.type == "server_error"
    with pytest.raises(openai.InternalServerError) as unavailable:
        oai.embeddings.create(model="e+status=503", input="x")
    assert unavailable.value.status_code == 503
    with pytest.raises(openai.BadRequestError, match="unknown mock directive"):
        oai.chat.completions.create(model="gpt-4o+bogus=1", messages=USER)


def test_retry_after_is_honoured(mock: BackgroundMock) -> None:
    client = openai.OpenAI(base_url=mock.openai_base_url, api_key=KEY, max_retries=1)
    started = time.monotonic()
    result = client.chat.completions.create(
        model="m+status=429+fail_first=1+retry_after=0.3", messages=USER
    )
    elapsed = time.monotonic() - started
    assert result.choices[0].finish_reason == "stop"
    assert 0.3 <= elapsed < 2.0  # waited retry-after-ms, not the SDK's own backoff


def test_openai_malformed(oai: openai.OpenAI) -> None:
    with pytest.raises(json.JSONDecodeError):
        oai.chat.completions.create(model="m+malformed", messages=USER)
    with pytest.raises(json.JSONDecodeError):
        list(oai.chat.completions.create(model="m+malformed", messages=USER, stream=True))


def test_openai_drop_after(oai: openai.OpenAI, mock: BackgroundMock) -> None:
    before = _stats(mock)["streams_dropped"]
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(
            model="m+drop_after=3", messages=USER, stream=True
        ):
            received.append(chunk)
    assert len(received) == 3
    assert _stats(mock)["streams_dropped"] == before + 1


def test_latency_and_ttft(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    oai.chat.completions.create(model="m", messages=USER)
    fast = time.monotonic() - started
    started = time.monotonic()
    oai.chat.completions.create(model="m+latency_ms=250", messages=USER)
    slow = time.monotonic() - started
    assert slow >= 0.25 > fast
    started = time.monotonic()
    stream = oai.chat.completions.create(
        model="m+ttft_ms=200+chunk_delay_ms=10+chunks=5", messages=USER, stream=True
    )
    next(iter(stream))
    first = time.monotonic() - started
    list(stream)
    total = time.monotonic() - started
    assert first >= 0.2
    assert total >= first + 0.05  # six more events, 10 ms apart


def test_header_knobs(mock: BackgroundMock) -> None:
    client = openai.OpenAI(
        base_url=mock.openai_base_url,
        api_key=KEY,
        max_retries=0,
        default_headers={"x-mock-words": "6", "x-mock-latency-ms": "0"},
    )
    result = client.chat.completions.create(model="m+words=50", messages=USER)
    assert result.usage is not None and result.usage.completion_tokens == 6  # header wins


def test_wrong_key(mock: BackgroundMock) -> None:
    client = openai.OpenAI(base_url=mock.openai_base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        client.chat.completions.create(model="m", messages=USER)
    assert denied.value.status_code == 401
    assert denied.value.code == "invalid_api_key"
    assert set(denied.value.response.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx2.post(mock.openai_base_url + "/chat/completions", json={"model": "m"})
    assert missing.status_code == 401


def test_bad_input_is_400(mock: BackgroundMock) -> None:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    url = mock.openai_base_url + "/chat/completions"
    assert httpx2.post(url, content=b"{not json", headers=headers).status_code == 400
    assert httpx2.post(url, json={"model": "m"}, headers=headers).status_code == 400
    assert httpx2.post(url, json=[1], headers=headers).status_code == 400
    wrong_type = {"model": "m", "messages": USER, "tools": 5}
    assert httpx2.post(url, json=wrong_type, headers=headers).status_code == 400
    assert (
        httpx2.post(url, json={**wrong_type, "model": "m+words=x"}, headers=headers)
        .json()["error"]["message"]
        .startswith("mock directive 'words' needs a number")
    )
    assert httpx2.get(url, headers=headers).status_code == 405
    assert httpx2.get(mock.url + "/nowhere", headers=headers).status_code == 404


# ---------------------------------------------------------------- determinism, records


def test_determinism(mock: BackgroundMock) -> None:
    body = {"model": "m", "messages": USER, "tools": [WEATHER_TOOL]}
    headers = {"authorization": f"Bearer {KEY}"}
    url = mock.openai_base_url + "/chat/completions"
    first = httpx2.post(url, json=body, headers=headers)
    second = httpx2.post(url, json=body, headers=headers)
    assert first.content == second.content
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert (
        httpx2.post(url, json=stream_body, headers=headers).content
        == httpx2.post(url, json=stream_body, headers=headers).content
    )
    claude_body = {"model": "c", "max_tokens": 30, "messages": USER}
    claude_headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    one = httpx2.post(mock.url + "/v1/messages", json=claude_body, headers=claude_headers)
    two = httpx2.post(mock.url + "/v1/messages", json=claude_body, headers=claude_headers)
    assert one.content == two.content
    other = {**claude_body, "messages": [{"role": "user", "content": "Something else"}]}
    three = httpx2.post(mock.url + "/v1/messages", json=other, headers=claude_headers)
    assert three.json()["content"][0]["text"] != one.json()["content"][0]["text"]


def test_request_log(oai: openai.OpenAI, mock: BackgroundMock) -> None:
    assert httpx2.delete(mock.url + "/_mock/requests").status_code == 200
    oai.chat.completions.create(model="logged", messages=USER)
    recorded = httpx2.get(mock.url + "/_mock/requests").json()
    assert len(recorded) == 1
    entry = recorded[0]
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions"
    assert entry["headers"]["authorization"] == f"Bearer {KEY}"
    assert entry["body"]["model"] == "logged" and entry["body"]["messages"] == USER
    httpx2.delete(mock.url + "/_mock/requests")
    assert httpx2.get(mock.url + "/_mock/requests").json() == []


def test_cancelled_stream_is_counted(oai: openai.OpenAI, mock: BackgroundMock) -> None:
    before = _stats(mock)
    stream = oai.chat.completions.create(
        model="m+chunks=20+chunk_delay_ms=30", messages=USER, stream=True
    )
    iterator = iter(stream)
    next(iterator)
    next(iterator)
    assert _stats(mock)["active_streams"] == before["active_streams"] + 1
    stream.close()
    _wait_for(lambda: _stats(mock)["streams_cancelled"] == before["streams_cancelled"] + 1)
    after = _stats(mock)
    assert after["active_streams"] == before["active_streams"]
    assert after["streams_started"] == before["streams_started"] + 1
    assert after["streams_completed"] == before["streams_completed"]


def test_python_dash_m_entry_point() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "custos.cli",
            "mock-provider",
            "--port",
            str(port),
            "--api-key",
            "k2",
        ],
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k2", max_retries=0)

        def up() -> bool:
            try:
                return httpx2.get(f"http://127.0.0.1:{port}/_mock/health").status_code == 200
            except httpx2.HTTPError:
                return False

        _wait_for(up, timeout=10)
        result = client.chat.completions.create(model="m", messages=USER)
        assert result.choices[0].message.content.startswith("Mock reply")
    finally:
        process.terminate()
        process.wait(timeout=10)

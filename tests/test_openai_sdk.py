"""The official ``openai`` SDK through the gateway, to every kind of provider account.

Each test checks what the client got (content, usage, errors), what the mock provider received
(path, headers, body), and what the gateway charged (token and cost counters), to the token and
to the micro-dollar. Expected numbers come from the mock's published token formula and the prices
in ``standard_config``, never from the gateway's code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from custos.mock import (
    PER_MESSAGE_TOKENS,
    count_tokens,
    create_app,
    prompt_tokens_anthropic,
    prompt_tokens_openai,
)
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.sdk_helpers import (
    OPENAI_WEATHER_TOOL,
    REPLY_WORDS,
    WEATHER_ARGS,
    WEATHER_CALL_TOKENS,
    ASGIThread,
    Meter,
    assert_text_reply,
    config_with,
    expected_cost,
    last_request,
    openai_weather_call,
    user,
)

GPT = "openai-main/gpt-5.5"
AZURE = "azure-eu/gpt-5.5"
CLAUDE = "claude-main/claude-sonnet-4.5"
EMBED = "openai-main/text-embedding-3-small"
AZURE_EMBED = "azure-eu/text-embedding-3-small"
VLLM = "local-vllm/llama-3.1-8b"


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


# -- OpenAI account ------------------------------------------------------------------------------


def test_sync_chat_usage_and_cost_to_the_token(client, gateway, mock_provider):
    prompt = "Say hello to the gateway please"
    messages = user(prompt)
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    raw = client.chat.completions.with_raw_response.create(model=GPT, messages=messages)
    completion = raw.parse()

    assert raw.headers["x-custos-served-by"] == GPT
    assert raw.headers["x-custos-request-id"]
    assert_text_reply(completion.choices[0].message.content, prompt)
    assert completion.choices[0].finish_reason == "stop"
    # 6 words + 4 per message; the reply is 20 words.
    assert prompt_tokens_openai({"messages": messages}) == 10
    assert completion.usage.prompt_tokens == 10
    assert completion.usage.completion_tokens == REPLY_WORDS
    assert completion.usage.total_tokens == 30

    # 10 x 1.25 + 20 x 10.0 = 212.5 micro-dollars, rounded half up.
    assert meter.delta() == (10, 20, 213)
    assert expected_cost(GPT, 10, 20) == 213

    seen = last_request(mock_provider, "/v1/chat/completions")
    assert seen["body"] == {"model": "gpt-5.5", "messages": messages}
    assert seen["headers"]["authorization"] == f"Bearer {MOCK_KEY}"


async def test_async_chat_concurrent_requests_each_charged(gateway):
    prompts = ["One small step", "Two roads diverged in a wood", "Three, two, one, liftoff!"]
    meter = Meter(gateway, GPT)
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0
    ) as sdk:
        completions = await asyncio.gather(
            *(sdk.chat.completions.create(model=GPT, messages=user(p)) for p in prompts)
        )
    total_in = 0
    for prompt, completion in zip(prompts, completions, strict=True):
        expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
        assert completion.usage.prompt_tokens == expected_in
        assert completion.usage.completion_tokens == REPLY_WORDS
        assert_text_reply(completion.choices[0].message.content, prompt)
        total_in += expected_in
    assert total_in == 7 + 10 + 12
    cost = sum(
        expected_cost(GPT, PER_MESSAGE_TOKENS + count_tokens(p), REPLY_WORDS) for p in prompts
    )
    charged = meter.delta()
    assert (charged.input, charged.output) == (total_in, 3 * REPLY_WORDS)
    assert charged.cost == cost == 9 + 13 + 15 + 600  # 8.75, 12.5, 15 -> 9, 13, 15


def test_stream_without_include_usage_asks_upstream_and_strips_it(client, gateway, mock_provider):
    prompt = "Stream me a short answer"
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    chunks = list(client.chat.completions.create(model=GPT, messages=user(prompt), stream=True))

    assert all(chunk.usage is None for chunk in chunks), "a usage chunk the client did not ask for"
    assert all(chunk.choices for chunk in chunks), "the upstream usage chunk (choices: []) leaked"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert_text_reply(text, prompt)
    assert chunks[-1].choices[0].finish_reason == "stop"

    upstream = last_request(mock_provider, "/v1/chat/completions")["body"]
    assert upstream["stream"] is True
    assert upstream["stream_options"] == {"include_usage": True}
    assert upstream["model"] == "gpt-5.5"

    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)  # 9
    assert meter.delta() == (expected_in, REPLY_WORDS, expected_cost(GPT, expected_in, REPLY_WORDS))


def test_stream_with_include_usage_relays_the_providers_usage(client, gateway, mock_provider):
    prompt = "Count the tokens of this stream, please."
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    chunks = list(
        client.chat.completions.create(
            model=GPT, messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
    )

    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert expected_in == 4 + 9
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected_in, REPLY_WORDS)
    assert_text_reply(
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), prompt
    )
    assert last_request(mock_provider, "/v1/chat/completions")["body"]["stream_options"] == {
        "include_usage": True
    }
    assert meter.delta() == (expected_in, REPLY_WORDS, expected_cost(GPT, expected_in, REPLY_WORDS))


def test_tool_call(client, gateway):
    messages = user("What is the weather in Paris?")
    meter = Meter(gateway, GPT)

    completion = client.chat.completions.create(
        model=GPT, messages=messages, tools=[OPENAI_WEATHER_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    expected_in = prompt_tokens_openai({"messages": messages})
    assert expected_in == 4 + 7
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        expected_in,
        WEATHER_CALL_TOKENS,
    )
    assert meter.delta() == (
        expected_in,
        WEATHER_CALL_TOKENS,
        expected_cost(GPT, expected_in, WEATHER_CALL_TOKENS),
    )


def reassemble_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return calls


def test_tool_call_streamed(client, gateway):
    messages = user("What is the weather in Paris?")
    meter = Meter(gateway, GPT)

    chunks = list(
        client.chat.completions.create(
            model=GPT, messages=messages, tools=[OPENAI_WEATHER_TOOL], stream=True
        )
    )

    calls = reassemble_tool_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
    fragments = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(fragments) > 2, "arguments should arrive in several fragments"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected_in = 4 + 7
    assert meter.delta() == (
        expected_in,
        WEATHER_CALL_TOKENS,
        expected_cost(GPT, expected_in, WEATHER_CALL_TOKENS),
    )


def test_embeddings_float_base64_and_list_input(client, gateway, mock_provider):
    text = "The quick brown fox jumps over the lazy dog."
    meter = Meter(gateway, EMBED)
    mock_provider.clear()

    as_float = client.embeddings.create(model=EMBED, input=text, encoding_format="float")
    assert last_request(mock_provider, "/v1/embeddings")["body"]["encoding_format"] == "float"
    as_default = client.embeddings.create(model=EMBED, input=text)
    # The SDK asks for base64 by default and decodes it; the numbers must survive the gateway.
    assert last_request(mock_provider, "/v1/embeddings")["body"]["encoding_format"] == "base64"

    assert len(as_float.data[0].embedding) == 16
    assert as_default.data[0].embedding == as_float.data[0].embedding
    assert math.isclose(sum(v * v for v in as_float.data[0].embedding), 1.0, rel_tol=1e-5)
    assert (
        as_float.usage.prompt_tokens == as_default.usage.prompt_tokens == count_tokens(text) == 10
    )

    # A list input of 125 tokens: 125 x 0.02 = 2.5 micro-dollars, rounded half up to 3.
    inputs = [" ".join(["alpha"] * 100), " ".join(["beta"] * 25)]
    as_list = client.embeddings.create(model=EMBED, input=inputs, encoding_format="float")
    assert [d.index for d in as_list.data] == [0, 1]
    assert as_list.data[0].embedding != as_list.data[1].embedding
    assert as_list.usage.prompt_tokens == as_list.usage.total_tokens == 125

    charged = meter.delta()
    assert (charged.input, charged.output) == (10 + 10 + 125, 0)
    # Each call is rounded on its own: 0.2 -> 0, 0.2 -> 0, 2.5 -> 3.
    assert charged.cost == expected_cost(EMBED, 10) * 2 + expected_cost(EMBED, 125) == 3


def test_embeddings_base64_asked_for_explicitly_is_little_endian_float32(client):
    """Asked for explicitly, base64 reaches the client as a string: the provider's, intact."""
    encoded = client.embeddings.create(model=EMBED, input="vector", encoding_format="base64")
    as_float = client.embeddings.create(model=EMBED, input="vector", encoding_format="float")
    values = struct.unpack("<16f", base64.b64decode(encoded.data[0].embedding))
    assert list(values) == as_float.data[0].embedding


# -- Azure account ---------------------------------------------------------------------------------


def test_azure_chat_uses_deployment_api_key_and_api_version(client, gateway, mock_provider):
    prompt = "Bonjour from the EU region"
    messages = user(prompt)
    meter = Meter(gateway, AZURE)
    mock_provider.clear()

    raw = client.chat.completions.with_raw_response.create(model=AZURE, messages=messages)
    completion = raw.parse()

    seen = last_request(mock_provider)
    assert seen["path"] == "/openai/deployments/gpt55-eu/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == MOCK_KEY
    assert "authorization" not in seen["headers"]
    assert seen["body"]["messages"] == messages
    assert raw.headers["x-custos-served-by"] == AZURE

    assert_text_reply(completion.choices[0].message.content, prompt)
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert expected_in == 9
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, REPLY_WORDS)
    # 9 x 2.5 + 20 x 20.0 = 422.5 -> 423
    assert meter.delta() == (9, REPLY_WORDS, 423)
    assert expected_cost(AZURE, 9, REPLY_WORDS) == 423


def test_azure_stream_without_include_usage(client, gateway, mock_provider):
    """Azure's extra first chunk (``choices: []``, no usage) must pass; its usage chunk must not."""
    prompt = "Stream from Azure"
    meter = Meter(gateway, AZURE)
    mock_provider.clear()

    chunks = list(client.chat.completions.create(model=AZURE, messages=user(prompt), stream=True))

    assert all(chunk.usage is None for chunk in chunks)
    assert_text_reply(
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), prompt
    )
    seen = last_request(mock_provider)
    assert seen["path"] == "/openai/deployments/gpt55-eu/chat/completions"
    assert seen["body"]["stream_options"] == {"include_usage": True}
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert meter.delta() == (
        expected_in,
        REPLY_WORDS,
        expected_cost(AZURE, expected_in, REPLY_WORDS),
    )


def test_azure_embeddings(client, gateway, mock_provider):
    inputs = [" ".join(["token"] * 60), " ".join(["more"] * 40)]
    meter = Meter(gateway, AZURE_EMBED)
    mock_provider.clear()

    result = client.embeddings.create(model=AZURE_EMBED, input=inputs)

    seen = last_request(mock_provider)
    assert seen["path"] == "/openai/deployments/emb-eu/embeddings"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == MOCK_KEY
    assert "authorization" not in seen["headers"]
    assert seen["body"]["input"] == inputs
    assert [len(d.embedding) for d in result.data] == [16, 16]
    assert result.usage.prompt_tokens == 100
    assert meter.delta() == (100, 0, 4)  # 100 x 0.04
    assert expected_cost(AZURE_EMBED, 100) == 4


# -- openai_compatible account without a key ------------------------------------------------------
#
# The standard gateway's local-vllm points at the mock, which (like OpenAI) refuses a request that
# carries no key, so a keyless account cannot succeed there. It gets a gateway of its own, in front
# of a server that needs no key.


class KeylessServer:
    """An OpenAI-compatible server run without a key (``vllm serve`` without ``--api-key``):
    it serves whatever comes, and records each request's headers and body as they arrived.
    The mock behind it insists on a key, so this front hands it one."""

    def __init__(self) -> None:
        self.mock = create_app(MOCK_KEY)
        self.arrived: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.mock(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.arrived.append((headers, body))

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:  # after the body: wait for the disconnect, as the server would
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        keyed = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
        keyed.append((b"authorization", f"Bearer {MOCK_KEY}".encode()))
        await self.mock({**scope, "headers": keyed}, replay, send)


@pytest.fixture(scope="module")
def keyless(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory):
    server = KeylessServer()
    front = ASGIThread(server)

    def point_vllm_at_front(config: dict[str, Any]) -> None:
        config["providers"]["local-vllm"]["base_url"] = f"{front.url}/v1"

    config = config_with(mock_provider.url, point_vllm_at_front)
    process = GatewayProcess(config, tmp_path_factory.mktemp("keyless-gateway"))
    yield process, server
    process.stop()
    front.stop()


def test_openai_compatible_account_without_key(keyless):
    gateway, server = keyless
    prompt = "Hello local model"
    meter = Meter(gateway, VLLM)
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=VLLM, messages=user(prompt))
        stream = list(sdk.chat.completions.create(model=VLLM, messages=user(prompt), stream=True))
    completion = raw.parse()

    assert raw.headers["x-custos-served-by"] == VLLM
    assert_text_reply(completion.choices[0].message.content, prompt)
    assert_text_reply("".join(c.choices[0].delta.content or "" for c in stream), prompt)
    assert all(c.usage is None for c in stream)
    # No credential of any kind reached the keyless server: not the client's, not a provider's.
    assert len(server.arrived) == 2
    for headers, body in server.arrived:
        assert "authorization" not in headers and "api-key" not in headers
        assert json.loads(body)["model"] == "llama-3.1-8b"
    # Two calls of 7 + 20 tokens: 7 x 0.1 + 20 x 0.2 = 4.7 -> 5 each.
    assert completion.usage.prompt_tokens == 7
    assert meter.delta(at_least_input=14) == (14, 2 * REPLY_WORDS, 10)
    assert expected_cost(VLLM, 7, REPLY_WORDS) == 5


# -- Anthropic account, through the OpenAI SDK --------------------------------------------------


def anthropic_system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, list):
        return "\n\n".join(block["text"] for block in system)
    return system


def test_claude_plain_with_system_prompt(client, gateway, mock_provider):
    system, prompt = "Be brief, be kind.", "Hello, Claude!"
    meter = Meter(gateway, CLAUDE)
    mock_provider.clear()

    raw = client.chat.completions.with_raw_response.create(
        model=CLAUDE,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        max_tokens=300,
    )
    completion = raw.parse()

    seen = last_request(mock_provider, "/v1/messages")
    assert seen["headers"]["x-api-key"] == MOCK_KEY
    assert seen["headers"]["anthropic-version"]
    assert "authorization" not in seen["headers"]
    body = seen["body"]
    assert body["model"] == "claude-sonnet-4.5"
    assert body["max_tokens"] == 300
    assert anthropic_system_text(body) == system
    assert [m["role"] for m in body["messages"]] == ["user"], "the system turn must leave messages"

    assert raw.headers["x-custos-served-by"] == CLAUDE
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert_text_reply(completion.choices[0].message.content, prompt)
    # system: 4 + 6, user: 4 + 4
    expected_in = prompt_tokens_anthropic(body)
    assert expected_in == 18
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (18, REPLY_WORDS)
    assert completion.usage.total_tokens == 18 + REPLY_WORDS
    assert meter.delta() == (18, REPLY_WORDS, 18 * 3 + 20 * 15)


@pytest.mark.parametrize("include_usage", [True, False])
def test_claude_stream(client, gateway, mock_provider, include_usage):
    prompt = "Stream it from Claude"
    meter = Meter(gateway, CLAUDE)
    mock_provider.clear()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}

    chunks = list(
        client.chat.completions.create(model=CLAUDE, messages=user(prompt), stream=True, **options)
    )

    assert last_request(mock_provider, "/v1/messages")["body"]["stream"] is True
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert_text_reply("".join(c.choices[0].delta.content or "" for c in content), prompt)
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        usage = chunks[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (expected_in, REPLY_WORDS)
        assert usage.total_tokens == expected_in + REPLY_WORDS
    else:
        assert usage_chunks == []
    assert meter.delta() == (
        expected_in,
        REPLY_WORDS,
        expected_cost(CLAUDE, expected_in, REPLY_WORDS),
    )


def test_claude_tool_call_round_trip(client, gateway, mock_provider):
    meter = Meter(gateway, CLAUDE)
    _, call, follow_up = openai_weather_call(client, CLAUDE)

    mock_provider.clear()
    second = client.chat.completions.create(
        model=CLAUDE, messages=follow_up, tools=[OPENAI_WEATHER_TOOL]
    )

    body = last_request(mock_provider, "/v1/messages")["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    (tool_use,) = body["messages"][1]["content"]
    upstream_id = "toolu_" + call.id.removeprefix("call_")  # Anthropic's shape again
    assert tool_use == {
        "type": "tool_use",
        "id": upstream_id,
        "name": "get_weather",
        "input": WEATHER_ARGS,
    }
    (tool_result,) = body["messages"][2]["content"]
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == upstream_id
    assert tool_result["content"] in ("Sunny, 21 C", [{"type": "text", "text": "Sunny, 21 C"}])
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"] == OPENAI_WEATHER_TOOL["function"]["parameters"]

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content.startswith("Mock reply to tool result Sunny 21 C ")
    # user 4 + 7; assistant 4 + name + compact JSON input; tool result 4 + 4
    second_in = 11 + (PER_MESSAGE_TOKENS + WEATHER_CALL_TOKENS) + 8
    assert second_in == prompt_tokens_anthropic(body)
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (second_in, REPLY_WORDS)

    charged = meter.delta()
    assert (charged.input, charged.output) == (11 + second_in, WEATHER_CALL_TOKENS + REPLY_WORDS)
    assert charged.cost == expected_cost(CLAUDE, 11, WEATHER_CALL_TOKENS) + expected_cost(
        CLAUDE, second_in, REPLY_WORDS
    )


def test_claude_tool_call_streamed(client, gateway):
    meter = Meter(gateway, CLAUDE)
    chunks = list(
        client.chat.completions.create(
            model=CLAUDE,
            messages=user("What is the weather in Paris?"),
            tools=[OPENAI_WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    calls = reassemble_tool_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        11,
        WEATHER_CALL_TOKENS,
    )
    assert meter.delta() == (
        11,
        WEATHER_CALL_TOKENS,
        expected_cost(CLAUDE, 11, WEATHER_CALL_TOKENS),
    )


# -- virtual models --------------------------------------------------------------------------------


def test_virtual_model_retries_then_falls_back_to_azure(client, gateway, mock_provider):
    prompt = "Route me somewhere healthy"
    failures = gateway.metric(
        "custos_upstream_attempts_total", account="openai-main", outcome="upstream_unavailable"
    )
    meter = Meter(gateway, AZURE)
    first_target = Meter(gateway, "openai-main/gpt-5.5+status=503")
    mock_provider.clear()

    raw = client.chat.completions.with_raw_response.create(
        model="chat-default", messages=user(prompt)
    )

    assert raw.status_code == 200
    assert raw.headers["x-custos-served-by"] == AZURE
    assert_text_reply(raw.parse().choices[0].message.content, prompt)
    seen = [(r["path"], r["body"]["model"]) for r in mock_provider.requests()]
    assert seen == [
        ("/v1/chat/completions", "gpt-5.5+status=503"),
        ("/v1/chat/completions", "gpt-5.5+status=503"),
        ("/openai/deployments/gpt55-eu/chat/completions", "gpt55-eu"),
    ]
    assert (
        gateway.metric(
            "custos_upstream_attempts_total", account="openai-main", outcome="upstream_unavailable"
        )
        - failures
        == 2
    )
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert meter.delta() == (
        expected_in,
        REPLY_WORDS,
        expected_cost(AZURE, expected_in, REPLY_WORDS),
    )
    assert first_target.unchanged(), "failed attempts are not charged"


def test_virtual_model_does_not_fall_back_on_a_client_error(client, mock_provider):
    mock_provider.clear()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat-no-fallback", messages=user("hi"))
    assert info.value.status_code == 400
    assert info.value.body["code"] == "upstream_invalid_request"
    assert [r["body"]["model"] for r in mock_provider.requests()] == ["gpt-5.5+status=400"]


# -- provider errors -------------------------------------------------------------------------------


def test_rate_limited_upstream_is_a_rate_limit_error_with_retry_after(client, gateway):
    model = "openai-main/gpt-5.5+status=429"
    meter = Meter(gateway, model)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=model, messages=user("hi"))
    error = info.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    assert error.body["code"] == "upstream_rate_limited"
    assert error.body["type"] == "rate_limit_error"
    assert "openai-main" in error.body["message"]
    assert meter.unchanged()


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("latency_ms=5000", 504, "upstream_timeout"),
        ("status=500", 502, "upstream_error"),
        ("status=401", 502, "upstream_auth_failed"),
        ("malformed", 502, "upstream_malformed_response"),
    ],
)
def test_provider_failures_are_gateway_errors(client, gateway, directive, status, code):
    model = f"{GPT}+{directive}"
    meter = Meter(gateway, model)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=user("hi"))
    elapsed = time.monotonic() - started
    error = info.value
    assert error.status_code == status
    assert error.body["code"] == code
    assert error.body["type"] == "api_error"
    assert MOCK_KEY not in error.response.text
    assert "Traceback" not in error.response.text
    if directive.startswith("latency_ms"):
        assert 1.8 <= elapsed < 4.5, "timeout_s is 2 for openai-main"
    if directive == "status=401":
        # The provider's text about credentials can echo part of a key: it is not passed on.
        assert "Incorrect API key" not in error.body["message"]
    assert meter.unchanged()


def test_stream_without_provider_usage_is_charged_from_an_estimate(client, gateway):
    model = f"{GPT}+no_usage"
    prompt = "Nobody will count these tokens for us"
    meter = Meter(gateway, model)

    chunks = list(
        client.chat.completions.create(
            model=model, messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
    )

    assert_text_reply(
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), prompt
    )
    charged = meter.delta()
    assert charged.input > 0 and charged.output > 0
    assert charged.cost == charged.input + charged.output  # both prices are 1 USD / Mtok
    # An estimate, not a guess out of range: about 4 characters per token.
    assert PER_MESSAGE_TOKENS <= charged.input <= 2 * (PER_MESSAGE_TOKENS + count_tokens(prompt))
    assert REPLY_WORDS // 2 <= charged.output <= 4 * REPLY_WORDS


def test_dropped_stream_raises_and_the_gateway_keeps_serving(client, gateway, mock_provider):
    model = f"{GPT}+drop_after=3"
    dropped = mock_provider.stats()["streams_dropped"]
    meter = Meter(gateway, model)
    received: list[Any] = []

    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model=model, messages=user("hi"), stream=True):
            received.append(chunk)

    # Three upstream events: the role chunk, "Mock", " reply"; then an error event, not [DONE].
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Mock reply"
    assert info.value.body["code"] == "upstream_stream_broken"
    assert mock_provider.stats()["streams_dropped"] == dropped + 1
    charged = meter.delta()
    assert charged.input > 0 and charged.output > 0, "a broken stream is still charged"
    assert charged.cost == charged.input + charged.output

    completion = client.chat.completions.create(model=GPT, messages=user("still there?"))
    assert completion.choices[0].finish_reason == "stop"
    assert gateway.metric("custos_active_streams") == 0


# -- a request that cannot even be sent ----------------------------------------------------------


@pytest.fixture(scope="module")
def unsendable(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory):
    """An account whose requests cannot be built (its host name cannot be encoded), first in a
    virtual model that falls back to Azure."""

    def add_unsendable(config: dict[str, Any]) -> None:
        config["providers"]["unsendable"] = {
            "type": "openai_compatible",
            "base_url": "http://bad..host/v1",
            "models": {"gpt-5.5": {"input_per_mtok": 1, "output_per_mtok": 1}},
        }
        config["virtual_models"]["chat-unsendable-first"] = {
            "targets": [{"model": "unsendable/gpt-5.5"}, {"model": AZURE}]
        }

    process = GatewayProcess(
        config_with(mock_provider.url, add_unsendable), tmp_path_factory.mktemp("unsendable")
    )
    yield process
    process.stop()


def test_a_request_that_cannot_be_sent_is_an_upstream_error_and_falls_back(unsendable):
    with openai.OpenAI(
        base_url=unsendable.base_url, api_key=unsendable.token, max_retries=0
    ) as sdk:
        with pytest.raises(openai.InternalServerError) as info:
            sdk.chat.completions.create(model="unsendable/gpt-5.5", messages=user("hi"))
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_request_failed"
        assert "unsendable" in info.value.body["message"]
        raw = sdk.chat.completions.with_raw_response.create(
            model="chat-unsendable-first", messages=user("hi")
        )
        assert raw.status_code == 200
        assert raw.headers["x-custos-served-by"] == AZURE
        streamed = list(
            sdk.chat.completions.create(
                model="chat-unsendable-first", messages=user("hi"), stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert (
        unsendable.metric(
            "custos_upstream_attempts_total",
            account="unsendable",
            outcome="upstream_request_failed",
        )
        == 3
    )
    assert "Traceback" not in unsendable.log()

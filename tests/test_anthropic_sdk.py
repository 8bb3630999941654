"""The official ``anthropic`` SDK through the gateway's ``/v1/messages``, to an Anthropic account
(passthrough: the body goes upstream as the client sent it, model renamed) and to an OpenAI
account (translated both ways).

As in ``test_openai_sdk.py``, expected tokens come from the mock's published formula and expected
cost from the prices in ``standard_config``; what the gateway charged is read from its counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from custos.mock import (
    PER_MESSAGE_TOKENS,
    count_tokens,
    prompt_tokens_anthropic,
    prompt_tokens_openai,
)
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.sdk_helpers import (
    ANTHROPIC_WEATHER_TOOL,
    REPLY_WORDS,
    WEATHER_ARGS,
    WEATHER_ARGS_JSON,
    WEATHER_CALL_TOKENS,
    Meter,
    assert_text_reply,
    config_with,
    expected_cost,
    last_request,
    reply_words,
    user,
)

CLAUDE = "claude-main/claude-sonnet-4.5"
GPT = "openai-main/gpt-5.5"
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
#: 4 per message + "What is the weather in Paris ?"
WEATHER_QUESTION_TOKENS = 11


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


def text_of(message: Any) -> str:
    assert all(block.type == "text" for block in message.content)
    return "".join(block.text for block in message.content)


def assert_anthropic_error(error: anthropic.APIStatusError, status: int, kind: str) -> None:
    """An Anthropic-format error: ``{"type": "error", "error": {"type", "message"}, ...}``."""
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert error.type == kind
    assert error.request_id and error.request_id == body["request_id"]
    assert MOCK_KEY not in error.response.text
    assert "Traceback" not in error.response.text


# -- Anthropic account: passthrough ---------------------------------------------------------------


def test_passthrough_body_is_what_the_client_sent(client, gateway, mock_provider):
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    messages = [
        {"role": "user", "content": "Hello, Claude!"},
        {"role": "assistant", "content": "Hello. What do you need?"},
        {"role": "user", "content": [{"type": "text", "text": "A haiku about gateways, please."}]},
    ]
    meter = Meter(gateway, CLAUDE)
    mock_provider.clear()

    raw = client.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=300,
        system=system,
        messages=messages,
        metadata={"user_id": "user-42"},
        stop_sequences=["END"],
    )
    message = raw.parse()

    sent = raw.http_request.content
    seen = last_request(mock_provider, "/v1/messages")
    assert seen["body"] == {**json.loads(sent), "model": "claude-sonnet-4.5"}
    assert list(seen["body"]) == list(json.loads(sent)), "the body was re-serialised"
    renamed = sent.replace(
        b'"model":"claude-main/claude-sonnet-4.5"', b'"model":"claude-sonnet-4.5"'
    )
    assert renamed != sent
    assert int(seen["headers"]["content-length"]) == len(renamed)
    assert seen["headers"]["x-api-key"] == MOCK_KEY
    # The version the client speaks goes on: the body is written in it.
    assert seen["headers"]["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert "authorization" not in seen["headers"]
    assert raw.headers["x-custos-served-by"] == CLAUDE

    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert_text_reply(text_of(message), "A haiku about gateways, please.")
    # system 4 + 4; user 4 + 4; assistant 4 + 7; user 4 + 7
    expected_in = prompt_tokens_anthropic(json.loads(sent))
    assert expected_in == 38
    assert (message.usage.input_tokens, message.usage.output_tokens) == (38, REPLY_WORDS)
    assert message.usage.cache_read_input_tokens == 0
    assert meter.delta() == (38, REPLY_WORDS, 38 * 3 + REPLY_WORDS * 15)
    assert expected_cost(CLAUDE, 38, REPLY_WORDS) == 414


def test_passthrough_stream_and_final_message(client, gateway, mock_provider):
    prompt = "Stream a reply, Claude."
    meter = Meter(gateway, CLAUDE)
    mock_provider.clear()

    with client.messages.stream(model=CLAUDE, max_tokens=200, messages=user(prompt)) as stream:
        kinds = []
        texts = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "text":
                texts.append(event.text)
        final = stream.get_final_message()

    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    } <= set(kinds)
    assert len(texts) > 1, "the reply should arrive in several deltas"
    assert "".join(texts) == text_of(final)
    assert_text_reply(text_of(final), prompt)
    assert final.stop_reason == "end_turn"
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert expected_in == 10
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, REPLY_WORDS)
    assert last_request(mock_provider, "/v1/messages")["body"] == {
        "max_tokens": 200,
        "messages": user(prompt),
        "model": "claude-sonnet-4.5",
        "stream": True,
    }
    assert meter.delta() == (10, REPLY_WORDS, expected_cost(CLAUDE, 10, REPLY_WORDS))


def test_passthrough_tool_use_round_trip(client, gateway, mock_provider):
    meter = Meter(gateway, CLAUDE)

    first = client.messages.create(
        model=CLAUDE, max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=WEATHER_QUESTION
    )

    assert first.stop_reason == "tool_use"
    (tool_use,) = first.content
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather"
    assert tool_use.input == WEATHER_ARGS
    assert (first.usage.input_tokens, first.usage.output_tokens) == (
        WEATHER_QUESTION_TOKENS,
        WEATHER_CALL_TOKENS,
    )

    mock_provider.clear()
    follow_up = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": [block.model_dump(exclude_none=True) for block in first.content],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21 C"}
            ],
        },
    ]
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=follow_up
    )
    second = raw.parse()

    sent = json.loads(raw.http_request.content)
    assert last_request(mock_provider, "/v1/messages")["body"] == {
        **sent,
        "model": "claude-sonnet-4.5",
    }
    assert second.stop_reason == "end_turn"
    assert text_of(second).startswith("Mock reply to tool result Sunny 21 C ")
    # question 11; assistant 4 + name + compact JSON input; tool result 4 + 4
    second_in = WEATHER_QUESTION_TOKENS + PER_MESSAGE_TOKENS + WEATHER_CALL_TOKENS + 8
    assert second_in == prompt_tokens_anthropic(sent)
    assert (second.usage.input_tokens, second.usage.output_tokens) == (second_in, REPLY_WORDS)

    charged = meter.delta()
    assert (charged.input, charged.output) == (
        WEATHER_QUESTION_TOKENS + second_in,
        WEATHER_CALL_TOKENS + REPLY_WORDS,
    )
    assert charged.cost == expected_cost(
        CLAUDE, WEATHER_QUESTION_TOKENS, WEATHER_CALL_TOKENS
    ) + expected_cost(CLAUDE, second_in, REPLY_WORDS)


async def test_async_client_create_and_stream_concurrently(gateway):
    meter = Meter(gateway, CLAUDE)
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=gateway.token, max_retries=0
    ) as sdk:

        async def streamed() -> Any:
            async with sdk.messages.stream(
                model=CLAUDE, max_tokens=100, messages=user("Async stream, please")
            ) as stream:
                return await stream.get_final_message()

        plain, final = await asyncio.gather(
            sdk.messages.create(model=CLAUDE, max_tokens=100, messages=user("Async plain, please")),
            streamed(),
        )
    assert_text_reply(text_of(plain), "Async plain, please")
    assert_text_reply(text_of(final), "Async stream, please")
    assert plain.usage.input_tokens == final.usage.input_tokens == 8
    charged = meter.delta(at_least_input=16)  # the two settle independently
    assert charged == (16, 2 * REPLY_WORDS, 2 * expected_cost(CLAUDE, 8, REPLY_WORDS))


def test_stream_without_output_usage_is_charged_from_an_estimate(client, gateway):
    """``+no_usage``: Anthropic's stream reports output_tokens 0 for a 20-word reply. The client
    sees what the provider sent; the gateway must not believe a reply costs nothing."""
    model = f"{CLAUDE}+no_usage"
    meter = Meter(gateway, model)
    with client.messages.stream(model=model, max_tokens=100, messages=user("Count me")) as stream:
        final = stream.get_final_message()
    assert_text_reply(text_of(final), "Count me")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 0)
    charged = meter.delta()
    assert charged.input == 6
    assert REPLY_WORDS // 2 <= charged.output <= 4 * REPLY_WORDS
    assert charged.cost == expected_cost(CLAUDE, 6, charged.output)


# -- OpenAI account: translated -------------------------------------------------------------------


def test_openai_account_plain(client, gateway, mock_provider):
    system, prompt = "Answer like a pirate.", "Hello, GPT!"
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    raw = client.messages.with_raw_response.create(
        model=GPT, max_tokens=300, system=system, messages=user(prompt)
    )
    message = raw.parse()

    seen = last_request(mock_provider, "/v1/chat/completions")
    assert seen["headers"]["authorization"] == f"Bearer {MOCK_KEY}"
    assert "x-api-key" not in seen["headers"]
    body = seen["body"]
    assert body["model"] == "gpt-5.5"
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert [(m["role"], m["content"]) for m in body["messages"]] in (
        [("system", system), ("user", prompt)],
        [("system", system), ("user", [{"type": "text", "text": prompt}])],
    )
    assert raw.headers["x-custos-served-by"] == GPT

    assert message.type == "message" and message.role == "assistant"
    assert message.model == GPT
    assert message.id
    assert message.stop_reason == "end_turn"
    assert_text_reply(text_of(message), prompt)
    # system 4 + 5, user 4 + 4
    expected_in = prompt_tokens_openai(body)
    assert expected_in == 17
    assert (message.usage.input_tokens, message.usage.output_tokens) == (17, REPLY_WORDS)
    # 17 x 1.25 + 20 x 10 = 221.25 -> 221
    assert meter.delta() == (17, REPLY_WORDS, 221)
    assert expected_cost(GPT, 17, REPLY_WORDS) == 221


def test_openai_account_stream(client, gateway, mock_provider):
    prompt = "Stream it, GPT"
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    with client.messages.stream(model=GPT, max_tokens=100, messages=user(prompt)) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert kinds.count("message_delta") == 1
    upstream = last_request(mock_provider, "/v1/chat/completions")["body"]
    assert upstream["stream"] is True
    assert upstream["stream_options"] == {"include_usage": True}
    assert final.model == GPT
    assert final.stop_reason == "end_turn"
    assert_text_reply(text_of(final), prompt)
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert expected_in == 8
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, REPLY_WORDS)
    assert meter.delta() == (8, REPLY_WORDS, expected_cost(GPT, 8, REPLY_WORDS))


def create_or_stream(client: anthropic.Anthropic, stream: bool, **kwargs: Any) -> Any:
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", ["end_turn", "max_tokens", "tool_use"])
def test_openai_account_stop_reasons(client, gateway, mock_provider, case, stream):
    meter = Meter(gateway, GPT)
    mock_provider.clear()
    kwargs: dict[str, Any] = {"model": GPT, "max_tokens": 100, "messages": WEATHER_QUESTION}
    if case == "max_tokens":
        kwargs["max_tokens"] = 5
    if case == "tool_use":
        kwargs["tools"] = [ANTHROPIC_WEATHER_TOOL]

    message = create_or_stream(client, stream, **kwargs)

    assert message.stop_reason == case
    upstream = last_request(mock_provider, "/v1/chat/completions")["body"]
    assert upstream["max_completion_tokens"] == kwargs["max_tokens"]
    if case == "tool_use":
        assert upstream["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": ANTHROPIC_WEATHER_TOOL["input_schema"],
                },
            }
        ]
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.input == WEATHER_ARGS
        assert block.id
        output = WEATHER_CALL_TOKENS
    else:
        output = 5 if case == "max_tokens" else REPLY_WORDS
        words = reply_words(text_of(message))
        assert len(words) == output
        assert words[:5] == ["Mock", "reply", "to", "What", "is"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        WEATHER_QUESTION_TOKENS,
        output,
    )
    assert meter.delta() == (
        WEATHER_QUESTION_TOKENS,
        output,
        expected_cost(GPT, WEATHER_QUESTION_TOKENS, output),
    )


def test_openai_account_tool_round_trip(client, gateway, mock_provider):
    first = client.messages.create(
        model=GPT, max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=WEATHER_QUESTION
    )
    (tool_use,) = first.content
    meter = Meter(gateway, GPT)
    mock_provider.clear()

    second = client.messages.create(
        model=GPT,
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            *WEATHER_QUESTION,
            {"role": "assistant", "content": [tool_use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21 C"}
                ],
            },
        ],
    )

    body = last_request(mock_provider, "/v1/chat/completions")["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
    (call,) = body["messages"][1]["tool_calls"]
    # The id goes back in OpenAI's shape; it still pairs the call with its result.
    assert tool_use.id.startswith("toolu_")
    upstream_id = "call_" + tool_use.id.removeprefix("toolu_")
    assert call["id"] == upstream_id and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == WEATHER_ARGS
    assert body["messages"][2]["tool_call_id"] == upstream_id
    assert body["messages"][2]["content"] in (
        "Sunny, 21 C",
        [{"type": "text", "text": "Sunny, 21 C"}],
    )

    assert second.stop_reason == "end_turn"
    assert text_of(second).startswith("Mock reply to tool result Sunny 21 C ")
    # question 11; assistant 4 + name + arguments; tool 4 + 4
    expected_in = WEATHER_QUESTION_TOKENS + PER_MESSAGE_TOKENS + WEATHER_CALL_TOKENS + 8
    assert count_tokens(call["function"]["arguments"]) == count_tokens(WEATHER_ARGS_JSON)
    assert expected_in == prompt_tokens_openai(body)
    assert (second.usage.input_tokens, second.usage.output_tokens) == (expected_in, REPLY_WORDS)
    assert meter.delta() == (expected_in, REPLY_WORDS, expected_cost(GPT, expected_in, REPLY_WORDS))


# -- provider errors, in Anthropic's format --------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "error_class", "status", "kind"),
    [
        ("latency_ms=5000", anthropic.GatewayTimeoutError, 504, "timeout_error"),
        ("status=429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("status=500", anthropic.InternalServerError, 502, "api_error"),
        ("status=401", anthropic.InternalServerError, 502, "api_error"),
        ("malformed", anthropic.InternalServerError, 502, "api_error"),
    ],
)
def test_openai_account_errors(client, gateway, directive, error_class, status, kind):
    model = f"{GPT}+{directive}"
    meter = Meter(gateway, model)
    started = time.monotonic()
    with pytest.raises(error_class) as info:
        client.messages.create(model=model, max_tokens=50, messages=user("hi"))
    assert_anthropic_error(info.value, status, kind)
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"
    if status == 504:
        assert 1.8 <= time.monotonic() - started < 4.5, "timeout_s is 2 for openai-main"
    assert meter.unchanged()


def test_openai_account_dropped_stream(client, gateway, mock_provider):
    model = f"{GPT}+drop_after=3"
    dropped = mock_provider.stats()["streams_dropped"]
    meter = Meter(gateway, model)
    texts: list[str] = []

    with pytest.raises(anthropic.APIStatusError) as info:  # noqa: SIM117
        with client.messages.stream(model=model, max_tokens=100, messages=user("hi")) as stream:
            for event in stream:
                if event.type == "text":
                    texts.append(event.text)

    assert "".join(texts) == "Mock reply"
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert mock_provider.stats()["streams_dropped"] == dropped + 1
    charged = meter.delta()
    assert charged.input > 0 and charged.output > 0
    assert charged.cost == charged.input + charged.output

    again = client.messages.create(model=GPT, max_tokens=50, messages=user("still there?"))
    assert again.stop_reason == "end_turn"


# -- Anthropic account errors: a gateway whose claude-main has the mock's directives -------------

NATIVE_DIRECTIVES = [
    "status=429", "status=500", "status=401", "malformed", "drop_after=6", "status=529",
]  # fmt: skip


@pytest.fixture(scope="module")
def native(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory):
    def add_directive_models(config: dict[str, Any]) -> None:
        models = config["providers"]["claude-main"]["models"]
        for directive in NATIVE_DIRECTIVES:
            models[f"claude-sonnet-4.5+{directive}"] = {"input_per_mtok": 3, "output_per_mtok": 15}

    process = GatewayProcess(
        config_with(mock_provider.url, add_directive_models), tmp_path_factory.mktemp("native")
    )
    with anthropic.Anthropic(base_url=process.url, api_key=process.token, max_retries=0) as sdk:
        yield process, sdk
    process.stop()


@pytest.mark.parametrize(
    ("directive", "error_class", "status", "kind"),
    [
        ("status=429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("status=500", anthropic.InternalServerError, 502, "api_error"),
        ("status=401", anthropic.InternalServerError, 502, "api_error"),
        ("malformed", anthropic.InternalServerError, 502, "api_error"),
        # Anthropic's "overloaded" is a provider asking for a pause, as 503 says, not a failure.
        ("status=529", anthropic.InternalServerError, 503, "overloaded_error"),
    ],
)
def test_anthropic_account_errors(native, directive, error_class, status, kind):
    gateway, sdk = native
    model = f"{CLAUDE}+{directive}"
    meter = Meter(gateway, model)
    with pytest.raises(error_class) as info:
        sdk.messages.create(model=model, max_tokens=50, messages=user("hi"))
    assert_anthropic_error(info.value, status, kind)
    if status in (429, 503):  # the provider's own pause is passed on
        assert info.value.response.headers["retry-after"] == "1"
    if directive == "status=529":
        assert info.value.body["error"]["message"].startswith("provider claude-main is overloaded")
    if directive == "status=401":
        assert "x-api-key" not in info.value.body["error"]["message"]
    assert meter.unchanged()


def test_anthropic_account_dropped_stream(native, mock_provider):
    """Six events: message_start, content_block_start, ping, then "Mock", " reply", " to"."""
    gateway, sdk = native
    model = f"{CLAUDE}+drop_after=6"
    meter = Meter(gateway, model)
    texts: list[str] = []

    with pytest.raises(anthropic.APIStatusError) as info:  # noqa: SIM117
        with sdk.messages.stream(model=model, max_tokens=100, messages=user("hi")) as stream:
            for event in stream:
                if event.type == "text":
                    texts.append(event.text)

    assert "".join(texts) == "Mock reply to"
    assert info.value.body["type"] == "error"
    charged = meter.delta()
    assert charged.input == PER_MESSAGE_TOKENS + 1
    # message_start said output_tokens 1, but three words had been streamed when it broke.
    assert charged.output >= 3
    assert charged.cost == expected_cost(CLAUDE, charged.input, charged.output)

    again = sdk.messages.create(model=CLAUDE, max_tokens=50, messages=user("still there?"))
    assert again.stop_reason == "end_turn"

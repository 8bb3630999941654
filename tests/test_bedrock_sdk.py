"""The official ``openai`` and ``anthropic`` SDKs through the gateway to a bedrock account (the
mock's Converse and ConverseStream, which verify the SigV4 signature with the mock's key as the
secret access key): plain, streamed, a tool-call round trip, usage and cost to the token and
micro-dollar, errors mapped, corrupt event streams.

Expected tokens come from the mock's published formula, expected cost from this file's prices
with ``Decimal``; what the gateway charged is read from its counters.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from custos.mock import PER_MESSAGE_TOKENS, count_tokens
from tests.audit_helpers import one_call, recorded
from tests.conftest import (
    MOCK_KEY,
    TOKEN_KEY,
    GatewayProcess,
    MockProvider,
    standard_config,
)
from tests.sdk_helpers import (
    ANTHROPIC_WEATHER_TOOL,
    OPENAI_WEATHER_TOOL,
    REPLY_WORDS,
    WEATHER_ARGS,
    WEATHER_ARGS_JSON,
    WEATHER_CALL_TOKENS,
    Meter,
    assert_text_reply,
    last_request,
    openai_weather_call,
    user,
)
from tests.test_config import check

ACCOUNT = "aws-us"
MODEL = f"{ACCOUNT}/claude"
UPSTREAM = "anthropic.claude-sonnet-4-5-v1:0"
ACCESS_KEY_ID = "AKIDBEDROCKTEST"
PRICES = {"input": "3.0", "output": "15.0", "cached": "0.3", "write": "3.75"}
DIRECTIVES = (
    "+cached_tokens=3+cache_write_tokens=2",
    "+status=429",
    "+status=400",
    "+status=403",
    "+status=404",
    "+status=408",
    "+status=503",
    "+malformed",
    "+malformed+chunk_delay_ms=50",
    "+stream_exception+chunk_delay_ms=50",
    "+drop_after=3",
)


def _model(directive: str = "") -> dict[str, str]:
    return {
        "upstream_model": UPSTREAM + directive,
        "input_per_mtok": PRICES["input"],
        "output_per_mtok": PRICES["output"],
        "cached_input_per_mtok": PRICES["cached"],
        "cache_write_per_mtok": PRICES["write"],
    }


def bedrock_config(mock_url: str, secret_ref: str = "${env:CUSTOS_TEST_MOCK_KEY}") -> str:
    config = yaml.safe_load(standard_config(mock_url))
    models = {"claude": _model()}
    models.update({f"claude{d}": _model(d) for d in DIRECTIVES})
    config["providers"][ACCOUNT] = {
        "type": "bedrock",
        "base_url": mock_url,
        "region": "eu-central-1",
        "access_key_id": "${env:CUSTOS_TEST_AWS_KEY_ID}",
        "secret_access_key": secret_ref,
        "timeout_s": 5,
        "models": models,
    }
    return yaml.safe_dump(config, sort_keys=False)


ENV = {"CUSTOS_TEST_AWS_KEY_ID": ACCESS_KEY_ID, "CUSTOS_TEST_WRONG_SECRET": "not-the-secret"}


@pytest.fixture(scope="module")
def gateway(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        bedrock_config(mock_provider.url), tmp_path_factory.mktemp("bedrock"), env=ENV
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def oai(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def claude(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


def cost(uncached: int, output: int, cached: int = 0, written: int = 0) -> int:
    exact = (
        uncached * Decimal(PRICES["input"])
        + output * Decimal(PRICES["output"])
        + cached * Decimal(PRICES["cached"])
        + written * Decimal(PRICES["write"])
    )
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def converse_request(mock: MockProvider) -> dict:
    return last_request(mock, "/model/")


# -- what goes upstream ---------------------------------------------------------------------------


def test_openai_request_is_signed_converse(oai, gateway, mock_provider):
    mock_provider.clear()
    prompt = "Hello Bedrock, how are you?"
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *user(prompt)],
        max_tokens=300,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
    )
    sent = converse_request(mock_provider)
    assert sent["path"] == f"/model/{UPSTREAM}/converse"
    assert sent["body"] == {
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {
            "maxTokens": 300,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
        },
    }
    authorization = sent["headers"]["authorization"]
    assert authorization.startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/{sent['headers']['x-amz-date'][:8]}"
        "/eu-central-1/bedrock/aws4_request, SignedHeaders="
    )
    assert MOCK_KEY not in json.dumps(sent["headers"])  # the secret signs, never travels
    assert_text_reply(reply.choices[0].message.content, prompt)
    assert reply.model == MODEL
    assert reply.id.startswith("chatcmpl-")


def test_wrong_secret_is_the_operators_problem(mock_provider, tmp_path):
    config = bedrock_config(mock_provider.url, "${env:CUSTOS_TEST_WRONG_SECRET}")
    process = GatewayProcess(config, tmp_path, env=ENV)
    try:
        response = httpx.post(
            f"{process.base_url}/chat/completions",
            headers=process.headers,
            json={"model": MODEL, "messages": user("hi")},
        )
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_auth_failed"
        assert "not-the-secret" not in response.text
        assert "not-the-secret" not in process.log()
        record = recorded(process, response.headers["x-custos-request-id"])
        assert "not-the-secret" not in json.dumps(record)
        assert "not-the-secret" not in httpx.get(f"{process.url}/metrics").text
    finally:
        process.stop()


# -- the openai SDK -------------------------------------------------------------------------------


def test_openai_plain_usage_and_cost(oai, gateway, mock_provider):
    meter = Meter(gateway, MODEL)
    prompt = "Count my tokens exactly"
    reply = oai.chat.completions.create(model=MODEL, messages=user(prompt))
    # No max_tokens asked for, none sent: the model's own limit applies.
    assert converse_request(mock_provider)["body"] == {
        "messages": [{"role": "user", "content": [{"text": prompt}]}]
    }
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == expected_in
    assert reply.usage.completion_tokens == REPLY_WORDS
    assert reply.usage.total_tokens == expected_in + REPLY_WORDS
    assert meter.delta() == (expected_in, REPLY_WORDS, cost(expected_in, REPLY_WORDS))


def test_openai_stream_with_usage(oai, gateway):
    model = MODEL + "+cached_tokens=3+cache_write_tokens=2"
    meter = Meter(gateway, model)
    prompt = "Stream me a reply please"
    stream = oai.chat.completions.create(
        model=model, messages=user(prompt), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert_text_reply(text, prompt)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    usage = chunks[-1].usage
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert usage.prompt_tokens == expected_in
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens == REPLY_WORDS
    assert meter.delta() == (
        expected_in,
        REPLY_WORDS,
        cost(expected_in - 5, REPLY_WORDS, cached=3, written=2),
    )


def test_openai_tool_round_trip(oai, gateway, mock_provider):
    meter = Meter(gateway, MODEL)
    first, call, follow_up = openai_weather_call(oai, MODEL)
    assert call.id.startswith("call_tooluse_")  # the caller's shape around Bedrock's id
    issued = call.id.removeprefix("call_")
    mock_provider.clear()
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=follow_up,
        tools=[OPENAI_WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Mock reply to tool result Sunny 21 C ")
    sent = converse_request(mock_provider)
    assert sent["path"] == f"/model/{UPSTREAM}/converse-stream"
    assert sent["body"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": issued, "name": "get_weather", "input": WEATHER_ARGS}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": issued, "content": [{"text": "Sunny, 21 C"}]}}
            ],
        },
    ]
    assert sent["body"]["toolConfig"]["tools"] == [
        {
            "toolSpec": {
                "name": "get_weather",
                "inputSchema": {"json": OPENAI_WEATHER_TOOL["function"]["parameters"]},
                "description": "Weather for a city",
            }
        }
    ]
    second_in = chunks[-1].usage.prompt_tokens
    charged = meter.delta(at_least_input=first.usage.prompt_tokens + second_in)
    assert charged.output == WEATHER_CALL_TOKENS + REPLY_WORDS
    assert charged.cost == cost(first.usage.prompt_tokens, WEATHER_CALL_TOKENS) + cost(
        second_in, REPLY_WORDS
    )


def test_openai_streamed_tool_call(oai):
    stream = oai.chat.completions.create(
        model=MODEL + "+cached_tokens=3+cache_write_tokens=2",
        messages=user("Weather in Paris?"),
        tools=[OPENAI_WEATHER_TOOL],
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or ())]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_tooluse_")
    assert "".join(tc.function.arguments or "" for tc in calls) == WEATHER_ARGS_JSON
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("seed", 7),
        ("logprobs", True),
        ("response_format", {"type": "json_object"}),
        ("presence_penalty", 0.5),
        ("reasoning_effort", "high"),
        ("parallel_tool_calls", False),
        ("logit_bias", {"50256": -100}),
    ],
)
def test_openai_fields_without_a_converse_form_are_refused(gateway, mock_provider, field, value):
    mock_provider.clear()
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers,
        json={"model": MODEL, "messages": user("hi"), field: value},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert not [r for r in mock_provider.requests() if r["path"].startswith("/model/")]


# -- the anthropic SDK ----------------------------------------------------------------------------


def test_anthropic_plain_with_cache_usage(claude, gateway, mock_provider):
    model = MODEL + "+cached_tokens=3+cache_write_tokens=2"
    meter = Meter(gateway, model)
    mock_provider.clear()
    prompt = "Tell me about caching"
    message = claude.messages.create(
        model=model,
        max_tokens=100,
        system=[
            {"type": "text", "text": "Long system prompt", "cache_control": {"type": "ephemeral"}}
        ],
        messages=user(prompt),
        extra_body={"top_k": 5},  # the SDK has no field for it any more
        metadata={"user_id": "u-42"},
    )
    sent = converse_request(mock_provider)["body"]
    assert sent["system"] == [{"text": "Long system prompt"}, {"cachePoint": {"type": "default"}}]
    assert sent["additionalModelRequestFields"] == {"top_k": 5}
    assert sent["requestMetadata"] == {"user_id": "u-42"}
    total_in = 2 * PER_MESSAGE_TOKENS + count_tokens("Long system prompt") + count_tokens(prompt)
    assert message.id.startswith("msg_")
    assert message.model == model
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == total_in - 5
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.cache_creation_input_tokens == 2
    assert message.usage.output_tokens == REPLY_WORDS
    assert meter.delta() == (
        total_in,
        REPLY_WORDS,
        cost(total_in - 5, REPLY_WORDS, cached=3, written=2),
    )


def test_anthropic_stream(claude, gateway):
    meter = Meter(gateway, MODEL)
    prompt = "Stream from Bedrock"
    with claude.messages.stream(model=MODEL, max_tokens=200, messages=user(prompt)) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("text") > 1
    assert_text_reply(final.content[0].text, prompt)
    expected_in = PER_MESSAGE_TOKENS + count_tokens(prompt)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (expected_in, REPLY_WORDS)
    assert final.stop_reason == "end_turn"
    assert meter.delta() == (expected_in, REPLY_WORDS, cost(expected_in, REPLY_WORDS))


def test_anthropic_streamed_tool_use_round_trip(claude, gateway, mock_provider):
    meter = Meter(gateway, MODEL)
    question = user("What is the weather in Paris?")
    with claude.messages.stream(
        model=MODEL, max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=question
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (tool_use,) = first.content
    assert tool_use.name == "get_weather" and tool_use.input == WEATHER_ARGS
    follow_up = [
        *question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "content": [{"type": "text", "text": "Rain"}],
                    "is_error": True,
                }
            ],
        },
    ]
    mock_provider.clear()
    with claude.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER_TOOL],
        tool_choice={"type": "auto"},
        messages=follow_up,
    ) as stream:
        second = stream.get_final_message()
    sent = converse_request(mock_provider)["body"]
    assert sent["toolConfig"]["toolChoice"] == {"auto": {}}
    assert sent["messages"][2]["content"] == [
        {
            "toolResult": {
                "toolUseId": tool_use.id.removeprefix("toolu_"),  # the id Bedrock issued
                "content": [{"text": "Rain"}],
                "status": "error",
            }
        }
    ]
    assert second.content[0].text.startswith("Mock reply to tool result Rain ")
    charged = meter.delta(at_least_input=first.usage.input_tokens + second.usage.input_tokens)
    assert charged == (
        first.usage.input_tokens + second.usage.input_tokens,
        WEATHER_CALL_TOKENS + REPLY_WORDS,
        cost(first.usage.input_tokens, WEATHER_CALL_TOKENS)
        + cost(second.usage.input_tokens, REPLY_WORDS),
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_tier", "priority"),
        ("mcp_servers", []),
        ("tool_choice", {"type": "none"}),
        ("container", "c-1"),
    ],
)
def test_anthropic_fields_without_a_converse_form_are_refused(gateway, mock_provider, field, value):
    mock_provider.clear()
    body = {"model": MODEL, "max_tokens": 10, "messages": user("hi"), field: value}
    if field == "tool_choice":
        body["tools"] = [ANTHROPIC_WEATHER_TOOL]
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={**gateway.headers, "anthropic-version": "2023-06-01"},
        json=body,
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert field in response.json()["error"]["message"]
    assert not [r for r in mock_provider.requests() if r["path"].startswith("/model/")]


# -- errors ----------------------------------------------------------------------------------------


ERRORS = [
    ("+status=429", 429, "upstream_rate_limited"),
    ("+status=400", 400, "upstream_invalid_request"),
    ("+status=403", 502, "upstream_auth_failed"),
    ("+status=404", 502, "upstream_not_found"),
    ("+status=408", 504, "upstream_timeout"),
    ("+status=503", 503, "upstream_unavailable"),
]


@pytest.mark.parametrize(
    ("directive", "status", "code", "stream"),
    [
        *((*case, stream) for case in ERRORS for stream in (False, True)),
        # A malformed stream starts with 200: see the stream tests below.
        ("+malformed", 502, "upstream_malformed_response", False),
    ],
)
def test_errors_are_mapped(gateway, directive, status, code, stream):
    meter = Meter(gateway, MODEL + directive)
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers,
        json={"model": MODEL + directive, "messages": user("hi"), "stream": stream},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if status == 400:  # the caller's mistake keeps AWS's explanation
        assert "Malformed input request" in response.json()["error"]["message"]
    if status in (429, 503):
        assert response.headers["retry-after"] == "1"
    assert meter.unchanged()


def _anthropic_stream_events(gateway: GatewayProcess, model: str) -> list[tuple[str, dict]]:
    events = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        headers={**gateway.headers, "anthropic-version": "2023-06-01"},
        json={"model": model, "max_tokens": 50, "messages": user("hi"), "stream": True},
    ) as response:
        assert response.status_code == 200
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_stream_exception_event_reaches_the_client(gateway):
    # Paced, so the exception comes after bytes went to the client (an error in the first read
    # is a failed attempt, answered 502 before any byte: see test_routing_faults.py).
    events = _anthropic_stream_events(gateway, MODEL + "+stream_exception+chunk_delay_ms=50")
    assert [name for name, _ in events][:2] == ["message_start", "content_block_start"]
    name, error = events[-1]
    assert name == "error"
    assert error["error"]["type"] == "rate_limit_error"
    assert "throttlingException" in error["error"]["message"]


def test_corrupt_event_stream_crc_is_a_malformed_stream(gateway):
    events = _anthropic_stream_events(gateway, MODEL + "+malformed+chunk_delay_ms=50")
    name, error = events[-1]
    assert name == "error"
    assert "malformed stream" in error["error"]["message"]
    assert not any(n == "message_stop" for n, _ in events)


def test_dropped_event_stream_is_broken(oai):
    stream = oai.chat.completions.create(
        model=MODEL + "+drop_after=3", messages=user("hi"), stream=True
    )
    with pytest.raises(openai.APIError, match="ended the stream early"):
        list(stream)


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return check(path, **ENV, CUSTOS_TEST_MOCK_KEY=MOCK_KEY, CUSTOS_TEST_TOKEN_KEY=TOKEN_KEY)


def test_config_check_accepts_a_bedrock_account(mock_provider, tmp_path: Path):
    path = tmp_path / "custos.yaml"
    path.write_text(bedrock_config(mock_provider.url))
    result = config_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert MOCK_KEY not in result.stdout + result.stderr


def test_the_record_names_bedrock_its_region_and_the_cache_counts(gateway):
    model = MODEL + "+cached_tokens=3+cache_write_tokens=2"
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers,
        json={"model": model, "messages": user("audit me"), "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")
    store_url = f"sqlite:///{gateway.config_path.parent / 'custos.db'}"
    record = one_call(store_url, response.headers["x-custos-request-id"])
    assert record["gen_ai.provider.name"] == "aws.bedrock"
    assert record["cloud.region"] == "eu-central-1"
    assert record["provider.upstream_model"] == UPSTREAM + "+cached_tokens=3+cache_write_tokens=2"
    expected_in = PER_MESSAGE_TOKENS + count_tokens("audit me")
    assert record["gen_ai.usage.input_tokens"] == expected_in
    assert record["gen_ai.usage.cache_read.input_tokens"] == 3
    assert record["gen_ai.usage.cache_creation.input_tokens"] == 2
    assert record["gen_ai.usage.output_tokens"] == REPLY_WORDS
    assert MOCK_KEY not in json.dumps(record) and MOCK_KEY not in gateway.log()


def test_config_check_names_what_a_bedrock_account_lacks(mock_provider, tmp_path: Path):
    config = yaml.safe_load(bedrock_config(mock_provider.url))
    del config["providers"][ACCOUNT]["region"]
    path = tmp_path / "custos.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = config_check(path)
    assert result.returncode == 1
    assert f"providers.{ACCOUNT}" in result.stderr and "bedrock needs region" in result.stderr
    assert MOCK_KEY not in result.stdout + result.stderr

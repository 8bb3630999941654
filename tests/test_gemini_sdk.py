"""The official ``openai`` and ``anthropic`` SDKs through the gateway to ``gemini`` (AI Studio) and
``vertex`` (Vertex AI) accounts on the mock provider: plain, streaming, a tool call round trip,
usage and cost to the token and micro-dollar, errors, and Vertex's service-account tokens.

Expected tokens come from the mock's published formula (``prompt_tokens_gemini`` restates it for
Gemini's ``contents``), expected cost from the prices written below with ``Decimal``.
"""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_HALF_UP, Decimal
from hashlib import blake2b
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anthropic
import httpx
import jwt
import openai
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from custos.mock import PER_MESSAGE_TOKENS, count_tokens
from tests.audit_helpers import one_call, recorded
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.google_helpers import service_account
from tests.sdk_helpers import (
    ANTHROPIC_WEATHER_TOOL,
    OPENAI_WEATHER_TOOL,
    REPLY_WORDS,
    WEATHER_ARGS,
    WEATHER_ARGS_JSON,
    WEATHER_CALL_TOKENS,
    Meter,
    assert_text_reply,
    config_with,
    user,
)

GEMINI = "gemini-main/gemini-2.5-flash"
VERTEX = "vertex-eu/gemini-2.5-pro"
SHORT = "vertex-short/gemini-2.5-pro"
BROKEN = "vertex-broken/gemini-2.5-pro"
#: USD per million tokens: (input, cached input, output).
PRICES = {
    "gemini-2.5-flash": (Decimal("0.3"), Decimal("0.075"), Decimal("2.5")),
    "gemini-2.5-pro": (Decimal("1.25"), Decimal("0.31"), Decimal("10")),
}
DIRECTIVES = [
    "status=429", "status=500", "status=503", "blocked", "drop_after=2",
    "cached_tokens=5+thoughts_tokens=7",
]  # fmt: skip
#: The short account's token endpoint: tokens live 10 s, each exchange takes 1 s.
SHORT_TOKENS = "expires_in=10&latency_ms=1000"
PROMPT = "Hello there, Gemini!"
#: One content: 4 + "Hello there , Gemini !"
PROMPT_TOKENS = PER_MESSAGE_TOKENS + count_tokens(PROMPT)


def expected_cost(model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> int:
    price_in, price_cached, price_out = PRICES[model.split("/", 1)[1].split("+")[0]]
    exact = (input_tokens - cached) * price_in + cached * price_cached + output_tokens * price_out
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def key_file(path: Path, token_uri: str) -> rsa.RSAPublicKey:
    key = service_account(token_uri)
    path.write_text(key.json)
    return key.public_key


class Google:
    def __init__(self, gateway: GatewayProcess, public_key: rsa.RSAPublicKey) -> None:
        self.gateway = gateway
        self.public_key = public_key
        self.openai = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0)
        self.anthropic = anthropic.Anthropic(
            base_url=gateway.url, api_key=gateway.token, max_retries=0
        )


@pytest.fixture(scope="module")
def google(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("google")
    public_key = key_file(tmp / "sa.json", f"{mock_provider.url}/token")
    key_file(tmp / "sa-short.json", f"{mock_provider.url}/token?{SHORT_TOKENS}")
    key_file(tmp / "sa-broken.json", f"{mock_provider.url}/token?status=500")

    def add_google_accounts(config: dict[str, Any]) -> None:
        flash = {"input_per_mtok": 0.3, "output_per_mtok": 2.5, "cached_input_per_mtok": 0.075}
        pro = {"input_per_mtok": 1.25, "output_per_mtok": 10, "cached_input_per_mtok": 0.31}
        models = {"gemini-2.5-flash": flash}
        models.update({f"gemini-2.5-flash+{d}": flash for d in DIRECTIVES})
        providers = config["providers"]
        providers["gemini-main"] = {
            "type": "gemini",
            "base_url": mock_provider.url,
            "api_key": "${env:CUSTOS_TEST_MOCK_KEY}",
            "region": "us",
            "models": models,
        }
        providers["gemini-badkey"] = {
            "type": "gemini",
            "base_url": mock_provider.url,
            "api_key": "${file:wrong.key}",  # a key the mock does not know
            "models": {"gemini-2.5-flash": flash},
        }
        for account, file in (
            ("vertex-eu", "sa.json"),
            ("vertex-short", "sa-short.json"),
            ("vertex-broken", "sa-broken.json"),
        ):
            providers[account] = {
                "type": "vertex",
                "base_url": mock_provider.url,
                "credentials": f"${{file:{file}}}",
                "region": "europe-west4",
                "models": {"gemini-2.5-pro": pro},
            }

    (tmp / "wrong.key").write_text("not-the-key")
    process = GatewayProcess(config_with(mock_provider.url, add_google_accounts), tmp)
    yield Google(process, public_key)
    process.stop()


def upstream(mock: MockProvider, part: str) -> dict[str, Any]:
    matching = [r for r in mock.requests() if part in r["path"]]
    assert matching, f"the mock received no request on {part!r}"
    return matching[-1]


# -- OpenAI clients ------------------------------------------------------------------------------


def test_openai_plain_to_gemini(google: Google, mock_provider: MockProvider) -> None:
    meter = Meter(google.gateway, GEMINI)
    raw = google.openai.chat.completions.with_raw_response.create(
        model=GEMINI, messages=user(PROMPT), max_completion_tokens=100, temperature=0.2
    )
    completion = raw.parse()
    assert raw.headers["x-custos-served-by"] == GEMINI
    assert completion.model == GEMINI and completion.id.startswith("chatcmpl-")
    assert_text_reply(completion.choices[0].message.content, PROMPT)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        PROMPT_TOKENS,
        REPLY_WORDS,
    )
    sent = upstream(mock_provider, ":generateContent")
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["query"] == ""  # the key is never in the URL
    assert sent["headers"]["x-goog-api-key"] == MOCK_KEY
    assert sent["body"] == {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.2},
    }
    assert meter.delta() == (
        PROMPT_TOKENS,
        REPLY_WORDS,
        expected_cost(GEMINI, PROMPT_TOKENS, REPLY_WORDS),
    )


def test_openai_stream_to_gemini_with_usage(google: Google, mock_provider: MockProvider) -> None:
    meter = Meter(google.gateway, GEMINI)
    stream = google.openai.chat.completions.create(
        model=GEMINI, messages=user(PROMPT), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert_text_reply(text, PROMPT)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        PROMPT_TOKENS,
        REPLY_WORDS,
    )
    assert upstream(mock_provider, "GenerateContent")["query"] == "alt=sse"
    assert meter.delta() == (
        PROMPT_TOKENS,
        REPLY_WORDS,
        expected_cost(GEMINI, PROMPT_TOKENS, REPLY_WORDS),
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_cached_and_reasoning_tokens_are_exact(google: Google, stream: bool) -> None:
    model = f"{GEMINI}+cached_tokens=5+thoughts_tokens=7"
    meter = Meter(google.gateway, model)
    if stream:
        chunks = list(
            google.openai.chat.completions.create(
                model=model,
                messages=user(PROMPT),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
    else:
        usage = google.openai.chat.completions.create(model=model, messages=user(PROMPT)).usage
    assert usage is not None
    assert usage.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == REPLY_WORDS + 7  # thoughts are billed as output
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 7
    assert meter.delta() == (
        PROMPT_TOKENS,
        REPLY_WORDS + 7,
        expected_cost(model, PROMPT_TOKENS, REPLY_WORDS + 7, cached=5),
    )


def test_openai_tool_round_trip_to_gemini(google: Google, mock_provider: MockProvider) -> None:
    question = user("What is the weather in Paris?")
    first = google.openai.chat.completions.create(
        model=GEMINI, messages=question, tools=[OPENAI_WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == WEATHER_ARGS  # type: ignore[union-attr]
    assert first.usage is not None and first.usage.completion_tokens == WEATHER_CALL_TOKENS
    sent = upstream(mock_provider, ":generateContent")["body"]
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": OPENAI_WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    meter = Meter(google.gateway, GEMINI)
    second = google.openai.chat.completions.create(
        model=GEMINI,
        messages=[
            *question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ],
        tools=[OPENAI_WEATHER_TOOL],
    )
    assert (second.choices[0].message.content or "").startswith("Mock reply to tool result")
    contents = upstream(mock_provider, ":generateContent")["body"]["contents"]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": WEATHER_ARGS}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "Sunny, 21 C"}}}
            ],
        },
    ]
    # 4 + question (7) ; 4 + name + args ; 4 + name + {"result":"Sunny, 21 C"}
    expected_input = (
        PER_MESSAGE_TOKENS * 3
        + count_tokens("What is the weather in Paris?")
        + WEATHER_CALL_TOKENS
        + count_tokens("get_weather")
        + count_tokens('{"result":"Sunny, 21 C"}')
    )
    assert second.usage is not None and second.usage.prompt_tokens == expected_input
    assert meter.delta() == (
        expected_input,
        REPLY_WORDS,
        expected_cost(GEMINI, expected_input, REPLY_WORDS),
    )


def test_a_thinking_models_signed_call_goes_back_signed(
    google: Google, mock_provider: MockProvider
) -> None:
    model = f"{GEMINI}+cached_tokens=5+thoughts_tokens=7"
    question = user("What is the weather in Paris?")
    first = google.openai.chat.completions.create(
        model=model, messages=question, tools=[OPENAI_WEATHER_TOOL]
    )
    signature = upstream_response_signature(mock_provider)
    message = first.choices[0].message
    assert message.tool_calls is not None
    call_id = message.tool_calls[0].id
    with google.anthropic.messages.stream(
        model=model,
        max_tokens=100,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            *question,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": "get_weather",
                        "input": WEATHER_ARGS,
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "Sunny"}],
            },
        ],
    ) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"
    contents = upstream(mock_provider, "GenerateContent")["body"]["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == signature


def upstream_response_signature(mock: MockProvider) -> str:
    """The signature the mock gave its last function call (a function of the response id)."""
    from custos.mock.gemini_wire import thought_signature

    sent = upstream(mock, ":generateContent")
    digest = blake2b(
        sent["path"].encode() + b"\0" + orjson.dumps(sent["body"]), digest_size=12
    ).hexdigest()
    return thought_signature(digest)


def test_openai_field_without_gemini_equivalent_is_a_400(google: Google, mock_provider) -> None:
    before = len(mock_provider.requests())
    with pytest.raises(openai.BadRequestError) as info:
        google.openai.chat.completions.create(model=GEMINI, messages=user("hi"), logprobs=True)
    assert info.value.body["param"] == "logprobs"  # type: ignore[index]
    assert "logprobs" in info.value.body["message"]  # type: ignore[index]
    assert len(mock_provider.requests()) == before  # nothing went upstream


@pytest.mark.parametrize(
    ("directive", "error_class", "status", "code"),
    [
        ("status=429", openai.RateLimitError, 429, "upstream_rate_limited"),
        ("status=500", openai.InternalServerError, 502, "upstream_error"),
        ("status=503", openai.InternalServerError, 503, "upstream_unavailable"),
        ("blocked", openai.BadRequestError, 400, "content_filter"),
    ],
)
def test_openai_errors_from_gemini(google: Google, directive, error_class, status, code) -> None:
    model = f"{GEMINI}+{directive}"
    with pytest.raises(error_class) as info:
        google.openai.chat.completions.create(model=model, messages=user("hi"))
    assert info.value.status_code == status
    assert info.value.body["code"] == code  # type: ignore[index]
    if status in (429, 503):
        assert info.value.response.headers["retry-after"] == "1"
    if directive == "blocked":
        assert "SAFETY" in info.value.body["message"]  # type: ignore[index]


def test_a_wrong_gemini_key_is_a_502_not_the_callers_400(google: Google) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        google.openai.chat.completions.create(
            model="gemini-badkey/gemini-2.5-flash", messages=user("hi")
        )
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert "not-the-key" not in str(info.value.body)
    gateway = google.gateway
    record = recorded(gateway, info.value.response.headers["x-custos-request-id"])
    assert "not-the-key" not in orjson.dumps(record).decode()
    assert "not-the-key" not in gateway.log()
    assert "not-the-key" not in httpx.get(f"{gateway.url}/metrics").text


def test_openai_stream_dropped_by_gemini_ends_in_an_error(google: Google) -> None:
    with pytest.raises(openai.APIError):
        for _ in google.openai.chat.completions.create(
            model=f"{GEMINI}+drop_after=2", messages=user(PROMPT), stream=True
        ):
            pass


# -- Anthropic clients ---------------------------------------------------------------------------


def test_anthropic_plain_to_gemini(google: Google, mock_provider: MockProvider) -> None:
    meter = Meter(google.gateway, GEMINI)
    message = google.anthropic.messages.create(
        model=GEMINI,
        max_tokens=100,
        system="Be brief.",
        messages=user(PROMPT),
        extra_body={"top_k": 20},
    )
    assert message.id.startswith("msg_") and message.model == GEMINI
    assert message.stop_reason == "end_turn"
    assert_text_reply("".join(b.text for b in message.content if b.type == "text"), PROMPT)
    prompt_tokens = PROMPT_TOKENS + PER_MESSAGE_TOKENS + count_tokens("Be brief.")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt_tokens, REPLY_WORDS)
    sent = upstream(mock_provider, ":generateContent")["body"]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 100, "topK": 20}
    assert meter.delta() == (
        prompt_tokens,
        REPLY_WORDS,
        expected_cost(GEMINI, prompt_tokens, REPLY_WORDS),
    )


def test_anthropic_streamed_tool_conversation_with_gemini(google: Google) -> None:
    question = user("What is the weather in Paris?")
    with google.anthropic.messages.stream(
        model=GEMINI, max_tokens=200, messages=question, tools=[ANTHROPIC_WEATHER_TOOL]
    ) as stream:
        first = stream.get_final_message()
    assert first.id.startswith("msg_") and first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use" and tool_use.id.startswith("toolu_")
    assert (tool_use.name, tool_use.input) == ("get_weather", WEATHER_ARGS)
    assert first.usage.output_tokens == WEATHER_CALL_TOKENS
    assert first.usage.input_tokens == PER_MESSAGE_TOKENS + count_tokens(
        "What is the weather in Paris?"
    )
    meter = Meter(google.gateway, GEMINI)
    with google.anthropic.messages.stream(
        model=GEMINI,
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": [tool_use.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny"}
                ],
            },
        ],
    ) as stream:
        texts = list(stream.text_stream)
        second = stream.get_final_message()
    assert "".join(texts).startswith("Mock reply to tool result")
    assert second.stop_reason == "end_turn"
    expected_input = (
        PER_MESSAGE_TOKENS * 3
        + count_tokens("What is the weather in Paris?")
        + count_tokens("get_weather")
        + count_tokens(WEATHER_ARGS_JSON)
        + count_tokens("get_weather")
        + count_tokens('{"result":"Sunny"}')
    )
    assert second.usage.input_tokens == expected_input
    assert meter.delta() == (
        expected_input,
        REPLY_WORDS,
        expected_cost(GEMINI, expected_input, REPLY_WORDS),
    )


@pytest.mark.parametrize(
    ("directive", "error_class", "status", "kind"),
    [
        ("status=429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("status=500", anthropic.InternalServerError, 502, "api_error"),
        ("status=503", anthropic.InternalServerError, 503, "overloaded_error"),
        ("blocked", anthropic.BadRequestError, 400, "invalid_request_error"),
    ],
)
def test_anthropic_errors_from_gemini(google: Google, directive, error_class, status, kind) -> None:
    meter = Meter(google.gateway, f"{GEMINI}+{directive}")
    with pytest.raises(error_class) as info:
        google.anthropic.messages.create(
            model=f"{GEMINI}+{directive}", max_tokens=10, messages=user("hi")
        )
    assert info.value.status_code == status
    assert info.value.body["error"]["type"] == kind  # type: ignore[index]
    if directive != "blocked":  # a blocked prompt is billed by Google; the others are not
        assert meter.unchanged()


def test_anthropic_field_without_gemini_equivalent_is_a_400(google: Google) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        google.anthropic.messages.create(
            model=GEMINI,
            max_tokens=10,
            messages=user("hi"),
            extra_body={"container": "c-1"},
        )
    assert "container" in info.value.body["error"]["message"]  # type: ignore[index]


# -- Vertex AI -------------------------------------------------------------------------------------


def token_requests(mock: MockProvider, query: str = "") -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r["path"] == "/token" and r["query"] == query]


def test_the_record_names_google_and_the_accounts_region(google: Google) -> None:
    raw = google.openai.chat.completions.with_raw_response.create(
        model=VERTEX, messages=user("record me")
    )
    store_url = f"sqlite:///{google.gateway.config_path.parent / 'custos.db'}"
    record = one_call(store_url, raw.headers["x-custos-request-id"])
    assert record["gen_ai.provider.name"] == "gcp.vertex_ai"
    assert record["cloud.region"] == "europe-west4"
    assert record["provider.upstream_model"] == "gemini-2.5-pro"
    assert record["gen_ai.usage.input_tokens"] == PER_MESSAGE_TOKENS + count_tokens("record me")


def test_vertex_with_both_sdks_and_a_signed_token(google: Google, mock_provider: MockProvider):
    meter = Meter(google.gateway, VERTEX)
    completion = google.openai.chat.completions.create(model=VERTEX, messages=user(PROMPT))
    assert_text_reply(completion.choices[0].message.content, PROMPT)
    with google.anthropic.messages.stream(
        model=VERTEX, max_tokens=100, messages=user(PROMPT)
    ) as stream:
        message = stream.get_final_message()
    assert message.usage.input_tokens == PROMPT_TOKENS
    assert meter.delta() == (
        2 * PROMPT_TOKENS,
        2 * REPLY_WORDS,
        expected_cost(VERTEX, PROMPT_TOKENS, REPLY_WORDS) * 2,
    )
    sent = upstream(mock_provider, "/projects/")
    assert sent["path"] == (
        "/v1/projects/acme-prod/locations/europe-west4/publishers/google/models/"
        "gemini-2.5-pro:streamGenerateContent"
    )
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    exchanges = token_requests(mock_provider)
    assert len(exchanges) == 1  # one token served both requests
    form = dict(parse_qsl(exchanges[0]["body"]))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(
        form["assertion"],
        google.public_key,
        algorithms=["RS256"],
        audience=f"{mock_provider.url}/token",
    )
    assert claims["iss"] == "custos@acme-prod.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(form["assertion"])["kid"] == "kid-1"


async def _concurrent(google: Google, count: int, tag: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{google.gateway.base_url}/chat/completions",
                    headers=google.gateway.headers,
                    json={"model": SHORT, "messages": user(f"{tag} {i}")},
                )
                for i in range(count)
            )
        )


def _tokens_used(mock: MockProvider, tag: str) -> set[str]:
    return {
        r["headers"]["authorization"]
        for r in mock.requests()
        if r["path"].startswith("/v1/projects/") and tag in orjson.dumps(r["body"]).decode()
    }


def test_vertex_token_is_refreshed_once_for_concurrent_requests_and_ahead_of_expiry(
    google: Google, mock_provider: MockProvider
) -> None:
    """The short account's tokens live 10 s from the start of their 1 s exchange: usable until
    9 s, refreshed in the background from 5 s on. Each burst of concurrent requests that finds
    no usable token waits for one exchange; requests that find a stale one go on with it while
    one exchange runs behind them."""

    def exchanges() -> int:
        return len(token_requests(mock_provider, SHORT_TOKENS))

    before = exchanges()
    responses = asyncio.run(_concurrent(google, 8, "first burst"))
    assert [r.status_code for r in responses] == [200] * 8
    assert exchanges() == before + 1
    assert len(_tokens_used(mock_provider, "first burst")) == 1

    time.sleep(10)  # expired
    responses = asyncio.run(_concurrent(google, 8, "second burst"))
    assert [r.status_code for r in responses] == [200] * 8
    assert exchanges() == before + 2
    (second,) = _tokens_used(mock_provider, "second burst")

    time.sleep(5)  # about 6 s into the token's life: stale, still usable
    responses = asyncio.run(_concurrent(google, 4, "stale"))
    assert [r.status_code for r in responses] == [200] * 4
    # Nobody waited the second the new exchange takes: all four went on with the old token.
    assert _tokens_used(mock_provider, "stale") == {second}
    deadline = time.monotonic() + 5
    while exchanges() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # the exchange's answer arrives a second after its request
    assert exchanges() == before + 3  # one background exchange for the four
    responses = asyncio.run(_concurrent(google, 1, "after refresh"))
    assert responses[0].status_code == 200
    assert _tokens_used(mock_provider, "after refresh") - {second}


def test_vertex_token_endpoint_failure_is_a_502_without_secrets(
    google: Google, mock_provider: MockProvider
) -> None:
    before = len(token_requests(mock_provider, "status=500"))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            google.openai.chat.completions.create(model=BROKEN, messages=user("hi"))
    # The second request, right after the failure, is refused without another exchange.
    assert len(token_requests(mock_provider, "status=500")) == before + 1
    assert info.value.status_code == 502
    body = info.value.body
    assert body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert "token endpoint refused the service account (500)" in body["message"]  # type: ignore[index]
    log = google.gateway.log()
    assert "PRIVATE KEY" not in log and "assertion" not in log


def test_a_config_reload_keeps_the_vertex_token(google: Google, mock_provider: MockProvider):
    google.openai.chat.completions.create(model=VERTEX, messages=user("before reload"))
    before = len(token_requests(mock_provider))
    revision = google.gateway.revision()
    config = yaml.safe_load(google.gateway.config_path.read_text())
    config["providers"]["vertex-eu"]["models"]["gemini-2.5-flash"] = {
        "input_per_mtok": 0.3,
        "output_per_mtok": 2.5,
    }
    google.gateway.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    google.gateway.sighup()
    deadline = time.monotonic() + 10
    while google.gateway.revision() == revision and time.monotonic() < deadline:
        time.sleep(0.05)
    assert google.gateway.revision() != revision
    completion = google.openai.chat.completions.create(
        model="vertex-eu/gemini-2.5-flash", messages=user("after reload")
    )
    assert completion.choices[0].message.content
    assert len(token_requests(mock_provider)) == before  # the key is the same: so is the token

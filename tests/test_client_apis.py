"""The routes and headers today's SDKs rely on, with the official ``openai`` and ``anthropic``
SDKs against the gateway and the mock provider: ``messages.count_tokens``, ``models.list`` and
``models.retrieve`` in each protocol's shape, ``anthropic-beta`` and ``OpenAI-Beta`` passed on
by an allow-list, structured output through an Anthropic account, and ids in the caller's
protocol's shape across translation, plain and streamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from custos.mock import prompt_tokens_anthropic
from tests.conftest import GatewayProcess, MockProvider
from tests.sdk_helpers import (
    ANTHROPIC_WEATHER_TOOL,
    OPENAI_WEATHER_TOOL,
    WEATHER_SCHEMA,
    Meter,
    last_request,
)

CLAUDE = "claude-main/claude-sonnet-4.5"
GPT = "openai-main/gpt-5.5"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def claude_sdk(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def openai_sdk(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


# -- count_tokens -----------------------------------------------------------------------------


def test_count_tokens_from_an_anthropic_account_is_the_accounts_own_count(
    claude_sdk, gateway, mock_provider
):
    meter = Meter(gateway, CLAUDE)
    mock_provider.clear()
    raw = claude_sdk.messages.with_raw_response.count_tokens(
        model=CLAUDE, messages=QUESTION, tools=[ANTHROPIC_WEATHER_TOOL]
    )
    count = raw.parse()
    sent = last_request(mock_provider, "/v1/messages/count_tokens")
    assert sent["body"]["model"] == "claude-sonnet-4.5"
    assert sent["body"]["tools"] == [ANTHROPIC_WEATHER_TOOL]
    assert count.input_tokens == prompt_tokens_anthropic(sent["body"])
    assert "x-custos-estimated" not in raw.headers
    assert raw.headers["x-custos-served-by"]
    # A count is not a use of the model: nothing is charged.
    assert meter.unchanged()


def test_count_tokens_elsewhere_is_estimated_and_marked(claude_sdk, gateway, mock_provider):
    meter = Meter(gateway, GPT)
    mock_provider.clear()
    raw = claude_sdk.messages.with_raw_response.count_tokens(
        model=GPT, messages=QUESTION, system="Be brief."
    )
    assert raw.headers["x-custos-estimated"] == "true"
    assert raw.parse().input_tokens > 0
    assert mock_provider.requests() == []  # OpenAI has no count endpoint to ask
    assert meter.unchanged()


def test_count_tokens_is_governed_like_the_other_routes(claude_sdk, gateway):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude_sdk.messages.count_tokens(model="nobody/nothing", messages=QUESTION)
    assert caught.value.body["error"]["type"] == "not_found_error"
    wrong_key = anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0)
    with wrong_key as sdk, pytest.raises(anthropic.AuthenticationError):
        sdk.messages.count_tokens(model=CLAUDE, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude_sdk.messages.count_tokens(model=CLAUDE, messages=[])
    assert caught.value.body["type"] == "error"


# -- models -------------------------------------------------------------------------------------


def test_models_in_anthropic_shape_for_anthropic_clients(claude_sdk, openai_sdk):
    names = sorted(m.id for m in openai_sdk.models.list())
    page = claude_sdk.models.list(limit=3)
    assert [m.id for m in page.data] == names[:3]
    assert all(m.type == "model" and m.display_name == m.id for m in page.data)
    assert page.has_more and page.first_id == names[0] and page.last_id == names[2]
    # The SDK's auto-paging walks every page by after_id.
    assert [m.id for m in claude_sdk.models.list(limit=2)] == names
    model = claude_sdk.models.retrieve(CLAUDE)
    assert (model.type, model.id, model.display_name) == ("model", CLAUDE, CLAUDE)
    assert model.created_at.year == 1970


def test_models_retrieve_in_openai_shape(openai_sdk):
    model = openai_sdk.models.retrieve(CLAUDE)
    assert (model.id, model.object, model.owned_by) == (CLAUDE, "model", "claude-main")
    assert openai_sdk.models.retrieve("chat-default").owned_by == "custos"


def test_models_retrieve_of_an_unknown_model_is_a_404_in_the_callers_protocol(
    claude_sdk, openai_sdk
):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_sdk.models.retrieve("nobody/nothing")
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as caught_anthropic:
        claude_sdk.models.retrieve("nobody/nothing")
    assert caught_anthropic.value.body["error"]["type"] == "not_found_error"


def test_distinct_model_ids_add_no_metric_series(gateway):
    """``/v1/models/{id}`` is a template: distinct ids (and after_id values), with and without
    a credential, add no metric series (the lists' caches are keyed by grant, not by id)."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        before = len(client.get("/metrics").content)
        anthropic_headers = {**gateway.headers, "anthropic-version": "2023-06-01"}
        for i in range(400):
            headers = gateway.headers if i % 3 else {"authorization": f"Bearer nope-{i}"}
            response = client.get(f"/v1/models/probe-{i}", headers=headers)
            assert response.status_code in (401, 404)
            page = client.get(f"/v1/models?after_id=probe-{i}", headers=anthropic_headers)
            assert page.status_code == 200
        after = client.get("/metrics").text
    assert "probe-" not in after
    assert len(after.encode()) < before + 2048, "a metric series per model id"


@pytest.mark.parametrize("raw_id", ["gpt%1B%5B2J", "gpt%0D%0Ax-a:%20b", "gpt%C2%85", "m" * 5000])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_model_id_with_control_characters_or_too_long_is_a_400_not_echoed(
    gateway, raw_id, protocol
):
    """As for ``model`` in a body: the id would be echoed in the error."""
    headers = dict(gateway.headers)
    if protocol == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    response = httpx.get(f"{gateway.url}/v1/models/{raw_id}", headers=headers, timeout=10)
    assert response.status_code == 400, response.text
    body = response.json()
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("'model'") and "gpt" not in error["message"]
    assert "mmmm" not in response.text


def test_models_limit_out_of_range_is_a_400(gateway):
    headers = {**gateway.headers, "anthropic-version": "2023-06-01"}
    response = httpx.get(f"{gateway.url}/v1/models?limit=0", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- provider headers ---------------------------------------------------------------------------


def test_anthropic_beta_reaches_anthropic_accounts_and_nothing_else_does(claude_sdk, mock_provider):
    mock_provider.clear()
    message = claude_sdk.beta.messages.create(
        model=CLAUDE,
        max_tokens=50,
        messages=QUESTION,
        betas=["output-128k-2025-02-19", "interleaved-thinking-2025-05-14"],
        extra_headers={"x-internal-secret": "s3cret", "anthropic-version": "2023-06-01"},
    )
    assert message.content
    headers = last_request(mock_provider, "/v1/messages")["headers"]
    assert headers["anthropic-beta"] == "output-128k-2025-02-19,interleaved-thinking-2025-05-14"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "x-internal-secret" not in headers


def test_betas_are_dropped_on_the_way_to_the_other_protocol(claude_sdk, openai_sdk, mock_provider):
    mock_provider.clear()
    claude_sdk.beta.messages.create(
        model=GPT, max_tokens=50, messages=QUESTION, betas=["output-128k-2025-02-19"]
    )
    assert "anthropic-beta" not in last_request(mock_provider, "/chat/completions")["headers"]
    openai_sdk.chat.completions.create(
        model=GPT, messages=QUESTION, extra_headers={"OpenAI-Beta": "assistants=v2"}
    )
    assert last_request(mock_provider, "/chat/completions")["headers"]["openai-beta"] == (
        "assistants=v2"
    )
    openai_sdk.chat.completions.create(
        model=CLAUDE, messages=QUESTION, extra_headers={"OpenAI-Beta": "assistants=v2"}
    )
    assert "openai-beta" not in last_request(mock_provider, "/v1/messages")["headers"]


def test_a_malformed_beta_header_is_a_400_naming_it(claude_sdk, mock_provider):
    mock_provider.clear()
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude_sdk.messages.create(
            model=CLAUDE,
            max_tokens=50,
            messages=QUESTION,
            extra_headers={"anthropic-beta": "bad value;drop table"},
        )
    assert "anthropic-beta" in caught.value.body["error"]["message"]
    assert mock_provider.requests() == []


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("anthropic-beta", [b"output-128k\x85,interleaved"]),  # C1 NEL, which \s matches
        ("anthropic-beta", [b"output-128k,\xa0interleaved"]),  # no-break space
        ("OpenAI-Beta", [b"assistants=v2\x85"]),
        ("anthropic-version", [b"2023-06-01\xa0"]),
        ("anthropic-beta", [b"x" * 2000]),
        ("anthropic-beta", [b"beta-%d" % i for i in range(300)]),  # each short, 2.4 KB joined
    ],
)
def test_provider_headers_with_odd_characters_or_too_long_are_a_400_naming_them(
    gateway, mock_provider, name, values
):
    """Only the names the allow-list's form allows are forwarded: no whitespace but a space
    around commas, and no value (repeats joined) longer than a provider would take."""
    mock_provider.clear()
    protocol_anthropic = name != "OpenAI-Beta"
    path = "/v1/messages" if protocol_anthropic else "/v1/chat/completions"
    model = CLAUDE if protocol_anthropic else GPT
    body: dict[str, Any] = {"model": model, "max_tokens": 5, "messages": QUESTION}
    headers = [(k.encode(), v.encode()) for k, v in gateway.headers.items()]
    headers += [(name.encode(), value) for value in values]
    response = httpx.post(f"{gateway.url}{path}", headers=headers, json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert name.lower() in response.json()["error"]["message"]
    assert mock_provider.requests() == []


def test_spaces_and_tabs_around_commas_are_not_forwarded(gateway, mock_provider):
    mock_provider.clear()
    body = {"model": CLAUDE, "max_tokens": 5, "messages": QUESTION}
    headers = {**gateway.headers, "anthropic-beta": "output-128k-2025-02-19 ,\tinterleaved"}
    response = httpx.post(f"{gateway.url}/v1/messages", headers=headers, json=body, timeout=10)
    assert response.status_code == 200, response.text
    sent = last_request(mock_provider, "/v1/messages")["headers"]["anthropic-beta"]
    assert sent == "output-128k-2025-02-19,interleaved"


# -- translation: structured output, ids, usage -----------------------------------------------


def test_response_format_through_an_anthropic_account_returns_the_json(openai_sdk, mock_provider):
    mock_provider.clear()
    completion = openai_sdk.chat.completions.create(
        model=CLAUDE,
        messages=QUESTION,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA},
        },
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    answer = json.loads(choice.message.content or "")
    assert set(answer) <= set(WEATHER_SCHEMA["properties"]) and answer
    sent = last_request(mock_provider, "/v1/messages")["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather"}
    assert sent["tools"][0]["input_schema"] == WEATHER_SCHEMA
    assert completion.id.startswith("chatcmpl-")


def test_response_format_streamed_through_an_anthropic_account(openai_sdk):
    stream = openai_sdk.chat.completions.create(
        model=CLAUDE,
        messages=QUESTION,
        response_format={"type": "json_object"},
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.id.startswith("chatcmpl-") for c in chunks)


def test_translated_ids_take_the_openai_shape(openai_sdk):
    completion = openai_sdk.chat.completions.create(
        model=CLAUDE, messages=QUESTION, tools=[OPENAI_WEATHER_TOOL]
    )
    assert completion.id.startswith("chatcmpl-")
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert call.id.startswith("call_")


def test_a_streamed_multi_turn_tool_conversation_through_translation(claude_sdk, mock_provider):
    messages: list[dict[str, Any]] = list(QUESTION)
    with claude_sdk.messages.stream(
        model=GPT, max_tokens=200, messages=messages, tools=[ANTHROPIC_WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        first = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens > 0  # estimated, then corrected by message_delta
    assert first.id.startswith("msg_") and first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.id.startswith("toolu_")
    upstream = last_request(mock_provider, "/chat/completions")["body"]
    assert first.usage.input_tokens == upstream_prompt_tokens(mock_provider)
    assert "max_tokens" not in upstream and upstream["max_completion_tokens"] == 200
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C, sunny"}
            ],
        },
    ]
    with claude_sdk.messages.stream(
        model=GPT, max_tokens=200, messages=messages, tools=[ANTHROPIC_WEATHER_TOOL]
    ) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn" and second.id.startswith("msg_")
    assert second.content[0].type == "text" and second.content[0].text
    sent = last_request(mock_provider, "/chat/completions")["body"]["messages"]
    # The tool's id pairs the call with its result upstream, in OpenAI's shape again.
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"]
    assert sent[2]["tool_call_id"].startswith("call_")


def upstream_prompt_tokens(mock: MockProvider) -> int:
    """The prompt tokens the mock reported for its last chat call (its published formula)."""
    from custos.mock import prompt_tokens_openai

    return prompt_tokens_openai(last_request(mock, "/chat/completions")["body"])


def test_a_stream_via_a_virtual_model_has_a_message_id(claude_sdk):
    with claude_sdk.messages.stream(
        model="chat-default", max_tokens=50, messages=QUESTION
    ) as stream:
        events = list(stream)
    start = next(e for e in events if e.type == "message_start")
    assert start.message.id.startswith("msg_") and len(start.message.id) > len("msg_")


def test_a_models_max_tokens_field_decides_what_a_translated_request_sets() -> None:
    from custos.config.schema import ProviderSettings
    from custos.providers.base import ProviderCall
    from custos.providers.openai import OpenAICompatibleAdapter

    settings = ProviderSettings.model_validate(
        {
            "type": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "models": {
                "old-server": {"unpriced": "allow", "max_tokens_field": "max_tokens"},
                "new-server": {"unpriced": "allow"},
            },
        }
    )
    adapter = OpenAICompatibleAdapter("local", settings)
    body = {"model": "local/x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    sent = {}
    for model in ("old-server", "new-server"):
        call = ProviderCall("anthropic", "messages", body, json.dumps(body).encode(),
                            "local/" + model, model, False, False)  # fmt: skip
        sent[model] = json.loads(adapter.build_request(call).body)
    assert (
        sent["old-server"]["max_tokens"] == 64 and "max_completion_tokens" not in sent["old-server"]
    )
    assert (
        sent["new-server"]["max_completion_tokens"] == 64 and "max_tokens" not in sent["new-server"]
    )

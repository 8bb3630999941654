"""The Gemini and Vertex AI adapters: upstream requests (golden bytes), responses and streams for
both client protocols, usage, refusals, and the service-account credentials."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter, ValidationError

from custos.config.schema import ProviderSettings
from custos.errors import GatewayError
from custos.providers.base import ProviderCall, UpstreamMalformed
from custos.providers.gemini import GeminiAdapter, GeminiToOpenAIStream, usage_from_gemini
from custos.providers.registry import adapter_for
from custos.providers.sse import SSEDecoder, SSEEvent
from custos.providers.vertex import VertexAdapter
from custos.wire import Usage
from tests.google_helpers import service_account

KEY = "AIza-test-key"
PRICES = {"gemini-x": {"input_per_mtok": 1.25, "output_per_mtok": 10}}


def settings(**fields: Any) -> ProviderSettings:
    values: dict[str, Any] = {"type": "gemini", "api_key": KEY, "models": PRICES}
    values.update(fields)
    return ProviderSettings.model_validate(values)


def adapter(**fields: Any) -> GeminiAdapter:
    return GeminiAdapter("gem", settings(**fields))


SA_KEY = service_account().json


def vertex_settings(**fields: Any) -> ProviderSettings:
    """A vertex account; a field given as None is left out."""
    values: dict[str, Any] = {
        "type": "vertex",
        "region": "europe-west4",
        "credentials": SA_KEY,
        "models": PRICES,
    }
    values.update(fields)
    return ProviderSettings.model_validate({k: v for k, v in values.items() if v is not None})


def vertex(**fields: Any) -> VertexAdapter:
    return VertexAdapter("vtx", vertex_settings(**fields))


def call(
    protocol: str, body: dict[str, Any], *, stream: bool = False, wants_usage: bool = False
) -> ProviderCall:
    raw = orjson.dumps(body)
    return ProviderCall(
        protocol=protocol,  # type: ignore[arg-type]
        operation="messages" if protocol == "anthropic" else "chat",
        body=body,
        raw_body=raw,
        requested_model="gem/gemini-x",
        upstream_model="gemini-x",
        stream=stream,
        client_wants_usage=wants_usage,
    )


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
OPENAI_BODY: dict[str, Any] = {
    "model": "gem/gemini-x",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER,
            },
        }
    ],
    "tool_choice": "auto",
    "max_completion_tokens": 200,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["END"],
    "seed": 7,
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}},
    "reasoning_effort": "low",
    "user": "u-1",
}
#: The request as Google documents it, byte for byte (orjson's compact form, keys in this order).
OPENAI_GOLDEN = (
    b'{"contents":['
    b'{"role":"user","parts":[{"text":"Weather here?"},'
    b'{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}}]},'
    b'{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Oslo"}}}]},'
    b'{"role":"user","parts":[{"functionResponse":{"name":"get_weather",'
    b'"response":{"result":"4 degrees"}}}]}],'
    b'"systemInstruction":{"parts":[{"text":"Be brief."}]},'
    b'"tools":[{"functionDeclarations":[{"name":"get_weather","description":"Weather for a city",'
    b'"parametersJsonSchema":{"type":"object","properties":{"city":{"type":"string"}},'
    b'"required":["city"],"additionalProperties":false}}]}],'
    b'"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}},'
    b'"generationConfig":{"maxOutputTokens":200,"temperature":0.5,"topP":0.9,"seed":7,'
    b'"stopSequences":["END"],"responseMimeType":"application/json",'
    b'"responseJsonSchema":{"type":"object","properties":{"city":{"type":"string"}},'
    b'"required":["city"],"additionalProperties":false},'
    b'"thinkingConfig":{"thinkingLevel":"low"}}}'
)


def test_the_registry_serves_gemini_and_vertex_accounts() -> None:
    assert type(adapter_for("gem", settings())) is GeminiAdapter
    assert type(adapter_for("vtx", vertex().settings)) is VertexAdapter


def test_openai_request_golden_bytes_url_and_headers() -> None:
    request = adapter().build_request(call("openai", OPENAI_BODY))
    assert request.method == "POST"
    assert request.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-x:generateContent"
    )
    assert request.body == OPENAI_GOLDEN
    assert request.headers == {
        "content-type": "application/json",
        "accept": "application/json",
        "x-goog-api-key": KEY,
    }
    assert KEY not in request.url  # in a header, never in the URL a log could hold


def test_openai_streaming_request_golden() -> None:
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    request = adapter().build_request(call("openai", body, stream=True, wants_usage=True))
    assert request.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-x:streamGenerateContent?alt=sse"
    )
    assert request.headers["accept"] == "text/event-stream"
    assert request.body == OPENAI_GOLDEN  # the method, not the body, says "stream"


def test_configured_headers_cannot_replace_the_key_and_the_model_is_quoted() -> None:
    gemini = adapter(headers={"x-goog-api-key": "other", "x-extra": "1"})
    request = gemini.build_request(call("openai", {**OPENAI_BODY, "model": "gem/gemini-x"}))
    assert request.headers["x-goog-api-key"] == KEY and request.headers["x-extra"] == "1"
    odd = call("openai", OPENAI_BODY)
    odd.upstream_model = "gemini-x+status=429"
    assert "/models/gemini-x%2Bstatus%3D429:generateContent" in gemini.build_request(odd).url


ANTHROPIC_BODY: dict[str, Any] = {
    "model": "gem/gemini-x",
    "max_tokens": 300,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 degrees"}],
        },
    ],
    "tools": [{"name": "get_weather", "input_schema": WEATHER}],
    "tool_choice": {"type": "tool", "name": "get_weather"},
    "top_k": 40,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "u-1"},
    "stop_sequences": ["END"],
}
ANTHROPIC_GOLDEN = (
    b'{"contents":['
    b'{"role":"user","parts":[{"text":"Weather in Oslo?"}]},'
    b'{"role":"model","parts":[{"text":"Checking."},'
    b'{"functionCall":{"name":"get_weather","args":{"c":1}}}]},'
    b'{"role":"user","parts":[{"functionResponse":{"name":"get_weather",'
    b'"response":{"result":"4 degrees"}}}]}],'
    b'"systemInstruction":{"parts":[{"text":"Be brief."}]},'
    b'"tools":[{"functionDeclarations":[{"name":"get_weather",'
    b'"parametersJsonSchema":{"type":"object","properties":{"city":{"type":"string"}},'
    b'"required":["city"],"additionalProperties":false}}]}],'
    b'"toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_weather"]}},'
    b'"generationConfig":{"maxOutputTokens":300,"stopSequences":["END"],"topK":40,'
    b'"thinkingConfig":{"thinkingBudget":1024}}}'
)


def test_anthropic_request_golden_bytes() -> None:
    request = adapter().build_request(call("anthropic", ANTHROPIC_BODY))
    assert request.body == ANTHROPIC_GOLDEN
    streaming = adapter().build_request(
        call("anthropic", {**ANTHROPIC_BODY, "stream": True}, stream=True)
    )
    assert streaming.url.endswith(":streamGenerateContent?alt=sse")
    assert streaming.body == ANTHROPIC_GOLDEN


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("logprobs", True, "logprobs"),
        ("top_logprobs", 2, "top_logprobs"),
        ("functions", [{"name": "f"}], "functions"),
        ("modalities", ["audio"], "modalities"),
        ("logit_bias", {"1": 2}, "logit_bias"),
        ("prediction", {"type": "content", "content": "x"}, "prediction"),
        ("web_search_options", {}, "web_search_options"),
        ("metadata", {"k": "v"}, "metadata"),
        ("n", 2, "n"),
        ("parallel_tool_calls", False, "parallel_tool_calls"),
        ("store", True, "store"),
        ("service_tier", "flex", "service_tier"),
        ("reasoning_effort", "extreme", "reasoning_effort"),
        ("response_format", {"type": "grammar"}, "response_format"),
        ("max_completion_tokens", 0, "max_completion_tokens"),
        ("temperature", "hot", "temperature"),
        ("stop", 3, "stop"),
        ("tool_choice", "required", "tool_choice"),  # without tools
        ("a_future_field", 1, "a_future_field"),
    ],
)
def test_openai_fields_without_a_gemini_equivalent_are_refused_by_name(
    field: str, value: Any, param: str
) -> None:
    body = {"model": "gem/gemini-x", "messages": [{"role": "user", "content": "Hi"}], field: value}
    with pytest.raises(GatewayError) as caught:
        adapter().build_request(call("openai", body))
    assert caught.value.status == 400
    assert caught.value.param == param
    assert param.split(".")[0] in caught.value.message


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "tool_call_id": "nope", "content": "x"}, "messages[1].tool_call_id"),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/i.png"}}],
            },
            "messages[1].content[0]",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {}}]}, "messages[1].content[0]"),
        ({"role": "narrator", "content": "x"}, "messages[1].role"),
        ({"role": "user", "content": "x", "name": "alice"}, "messages[1].name"),
        (
            {"role": "assistant", "content": None, "function_call": {"name": "f"}},
            "messages[1].function_call",
        ),
    ],
)
def test_openai_messages_gemini_cannot_take_are_refused(
    message: dict[str, Any], param: str
) -> None:
    body = {"model": "gem/gemini-x", "messages": [{"role": "user", "content": "Hi"}, message]}
    with pytest.raises(GatewayError) as caught:
        adapter().build_request(call("openai", body))
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("container", "c1", "container"),
        ("mcp_servers", [], "mcp_servers"),
        ("context_management", {}, "context_management"),
        ("metadata", {"user_id": "u", "trace": "t"}, "metadata.trace"),
        ("thinking", {"type": "enabled"}, "thinking"),
        ("top_k", 0, "top_k"),
        ("service_tier", "priority", "service_tier"),
        (
            "tool_choice",
            {"type": "auto", "disable_parallel_tool_use": True},
            "tool_choice.disable_parallel_tool_use",
        ),
        (
            "messages",
            [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            "messages[0].content[0]",
        ),
    ],
)
def test_anthropic_fields_without_a_gemini_equivalent_are_refused_by_name(
    field: str, value: Any, param: str
) -> None:
    body = {
        "model": "gem/gemini-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
        field: value,
    }
    if field == "tool_choice":
        body["tools"] = [{"name": "f", "input_schema": {"type": "object"}}]
    with pytest.raises(GatewayError) as caught:
        adapter().build_request(call("anthropic", body))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert "OpenAI" not in caught.value.message


@pytest.mark.parametrize(
    ("effort", "config"),
    [
        ("none", {"thinkingBudget": 0}),
        ("minimal", {"thinkingLevel": "minimal"}),
        ("high", {"thinkingLevel": "high"}),
    ],
)
def test_reasoning_effort_maps_to_thinking_config(effort: str, config: dict[str, Any]) -> None:
    body = {
        "model": "gem/gemini-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "reasoning_effort": effort,
        "response_format": {"type": "json_object"},
    }
    sent = orjson.loads(adapter().build_request(call("openai", body)).body)
    assert sent["generationConfig"] == {
        "responseMimeType": "application/json",
        "thinkingConfig": config,
    }


def test_embeddings_are_not_supported() -> None:
    assert not adapter().supports("embeddings")
    assert adapter().supports("chat") and adapter().supports("messages")


# -- responses -------------------------------------------------------------------------------------

USAGE_METADATA = {
    "promptTokenCount": 120,
    "candidatesTokenCount": 9,
    "cachedContentTokenCount": 100,
    "thoughtsTokenCount": 31,
    "totalTokenCount": 160,
}
USAGE = Usage(input_tokens=120, output_tokens=40, cached_input_tokens=100, reasoning_tokens=31)
TEXT_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"text": "thinking...", "thought": True}, {"text": "Hello"}],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": USAGE_METADATA,
    "modelVersion": "gemini-x-001",
    "responseId": "resp1",
}
TOOL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": USAGE_METADATA,
    "responseId": "resp2",
}


def test_usage_normalises_cached_and_thought_tokens() -> None:
    assert usage_from_gemini(USAGE_METADATA) == USAGE
    with_tools = {**USAGE_METADATA, "toolUsePromptTokenCount": 5}
    assert usage_from_gemini(with_tools).input_tokens == 125  # type: ignore[union-attr]
    assert usage_from_gemini({"totalTokenCount": 3}) is None


def test_openai_client_response_field_by_field() -> None:
    parsed = adapter().parse_response(call("openai", OPENAI_BODY), orjson.dumps(TEXT_RESPONSE))
    completion = ChatCompletion.model_validate_json(parsed.body)
    assert completion.id == "chatcmpl-resp1"
    assert completion.model == "gem/gemini-x"
    assert completion.choices[0].message.content == "Hello"  # the thought is not the answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "total_tokens": 160,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 31},
    }
    assert parsed.usage == USAGE


def test_openai_client_tool_call_response() -> None:
    parsed = adapter().parse_response(call("openai", OPENAI_BODY), orjson.dumps(TOOL_RESPONSE))
    completion = ChatCompletion.model_validate_json(parsed.body)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    tool_call = choice.message.tool_calls[0]
    assert tool_call.id == "call_resp2_1" and tool_call.type == "function"
    assert (tool_call.function.name, tool_call.function.arguments) == (
        "get_weather",
        '{"city":"Oslo"}',
    )


def test_anthropic_client_response_field_by_field() -> None:
    anthropic = call("anthropic", ANTHROPIC_BODY)
    message = Message.model_validate_json(
        adapter().parse_response(anthropic, orjson.dumps(TEXT_RESPONSE)).body
    )
    assert message.id == "msg_resp1" and message.model == "gem/gemini-x"
    assert [b.type for b in message.content] == ["text"] and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 100)
    assert message.usage.output_tokens == 40
    tool = Message.model_validate_json(
        adapter().parse_response(anthropic, orjson.dumps(TOOL_RESPONSE)).body
    )
    assert tool.stop_reason == "tool_use"
    block = tool.content[0]
    assert block.type == "tool_use" and block.id == "toolu_resp2_1"
    assert (block.name, block.input) == ("get_weather", {"city": "Oslo"})


@pytest.mark.parametrize(
    ("reason", "openai", "anthropic"),
    [
        ("STOP", "stop", "end_turn"),
        ("MAX_TOKENS", "length", "max_tokens"),
        ("SAFETY", "content_filter", "refusal"),
        ("RECITATION", "content_filter", "refusal"),
        ("PROHIBITED_CONTENT", "content_filter", "refusal"),
        ("OTHER", "stop", "end_turn"),
    ],
)
def test_finish_reasons_map_to_both_protocols(reason: str, openai: str, anthropic: str) -> None:
    data = {
        "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}],
        "usageMetadata": USAGE_METADATA,
    }
    body = orjson.dumps(data)
    completion = orjson.loads(adapter().parse_response(call("openai", OPENAI_BODY), body).body)
    assert completion["choices"][0]["finish_reason"] == openai
    message = orjson.loads(adapter().parse_response(call("anthropic", ANTHROPIC_BODY), body).body)
    assert message["stop_reason"] == anthropic


def test_a_blocked_prompt_is_a_400_naming_the_reason() -> None:
    body = orjson.dumps(
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {}}
    )
    for protocol, request in (("openai", OPENAI_BODY), ("anthropic", ANTHROPIC_BODY)):
        with pytest.raises(GatewayError) as caught:
            adapter().parse_response(call(protocol, request), body)
        assert (caught.value.status, caught.value.code) == (400, "content_filter")
        assert "PROHIBITED_CONTENT" in caught.value.message


@pytest.mark.parametrize("body", [b"<html>", b"[]", b"{}", b'{"candidates":[3]}'])
def test_bodies_that_are_not_gemini_responses_are_malformed(body: bytes) -> None:
    with pytest.raises(UpstreamMalformed):
        adapter().parse_response(call("openai", OPENAI_BODY), body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error":{"code":429,"message":"Quota","status":"RESOURCE_EXHAUSTED"}}',
            "RESOURCE_EXHAUSTED: Quota",
        ),
        (b'[{"error":{"code":503,"message":"Busy","status":"UNAVAILABLE"}}]', "UNAVAILABLE: Busy"),
        (b'{"error":{"message":"Bad"}}', "Bad"),
        (b"not json", None),
    ],
)
def test_error_message_reads_google_errors(body: bytes, message: str | None) -> None:
    assert adapter().error_message(body) == message


# -- streams ---------------------------------------------------------------------------------------


def gemini_events(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


STREAM = gemini_events(
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
        "usageMetadata": {"promptTokenCount": 120},
        "responseId": "r1",
    },
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}}],
        "responseId": "r1",
    },
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": {"name": "now", "args": {"tz": "UTC"}}}],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": USAGE_METADATA,
        "responseId": "r1",
    },
)


def decoded(stream: bytes, piece: int = 7) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(stream), piece):
        events.extend(decoder.feed(stream[start : start + piece]))
    return events + decoder.close()


@pytest.mark.parametrize("wants_usage", [True, False])
def test_openai_client_stream_is_translated(wants_usage: bool) -> None:
    translator = adapter().stream_translator(
        call("openai", OPENAI_BODY, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(translator, GeminiToOpenAIStream)
    out = b""
    for event in decoded(STREAM):
        assert not translator.complete  # no finishReason yet
        out += translator.feed(event)
    assert translator.complete
    out += translator.finish()
    payloads = [e.data for e in decoded(out, 1000)]
    assert payloads[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    assert {c.id for c in chunks} == {"chatcmpl-r1"}
    assert {c.model for c in chunks} == {"gem/gemini-x"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(tc.index, tc.id, tc.function.name, tc.function.arguments) for tc in calls] == [
        (0, "call_r1_1", "now", '{"tz":"UTC"}')  # type: ignore[union-attr]
    ]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == (1 if wants_usage else 0)
    if wants_usage:
        assert usage_chunks[0].usage.completion_tokens_details.reasoning_tokens == 31  # type: ignore[union-attr]
    assert translator.usage == USAGE
    assert translator.output_chars == len("Hello") + len('{"tz":"UTC"}')


def test_anthropic_client_stream_is_translated() -> None:
    translator = adapter().stream_translator(call("anthropic", ANTHROPIC_BODY, stream=True))
    out = b"".join(translator.feed(e) for e in decoded(STREAM))
    assert translator.complete
    out += translator.finish()
    events = decoded(out, 1000)
    validate = TypeAdapter(RawMessageStreamEvent).validate_json
    parsed = [validate(e.data) for e in events]
    assert [e.event for e in events] == [p.type for p in parsed]
    assert [p.type for p in parsed] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert parsed[0].message.id == "msg_r1"  # type: ignore[union-attr]
    # Gemini's first chunk says how long the prompt is: message_start says so too.
    assert parsed[0].message.usage.input_tokens == 120  # type: ignore[union-attr]
    assert parsed[5].content_block.id == "toolu_r1_1"  # type: ignore[union-attr]
    delta = parsed[8]
    assert delta.delta.stop_reason == "tool_use"  # type: ignore[union-attr]
    assert delta.usage.output_tokens == 40  # type: ignore[union-attr]
    assert delta.usage.cache_read_input_tokens == 100  # type: ignore[union-attr]
    assert translator.usage == USAGE


def test_a_stream_cut_before_its_finish_reason_is_not_complete() -> None:
    translator = adapter().stream_translator(call("openai", OPENAI_BODY, stream=True))
    for event in decoded(STREAM)[:-1]:
        translator.feed(event)
    assert not translator.complete


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_errors_and_blocked_prompts_in_a_stream_are_relayed(protocol: str) -> None:
    body = OPENAI_BODY if protocol == "openai" else ANTHROPIC_BODY
    for event in (
        {"error": {"code": 500, "message": "Internal", "status": "INTERNAL"}},
        {"promptFeedback": {"blockReason": "SAFETY"}},
    ):
        translator = adapter().stream_translator(call(protocol, body, stream=True))
        out = translator.feed(SSEEvent(None, orjson.dumps(event)))
        assert translator.upstream_error and not translator.complete
        assert b"error" in out


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_stream_errors_text_is_cut_as_an_error_bodys_is(protocol: str) -> None:
    body = OPENAI_BODY if protocol == "openai" else ANTHROPIC_BODY
    event = {"error": {"code": 500, "message": "y" * 100_000, "status": "x" * 5000}}
    translator = adapter().stream_translator(call(protocol, body, stream=True))
    out = translator.feed(SSEEvent(None, orjson.dumps(event)))
    assert translator.upstream_error and len(out) < 1000


def test_malformed_stream_events_are_refused() -> None:
    translator = adapter().stream_translator(call("openai", OPENAI_BODY, stream=True))
    with pytest.raises(UpstreamMalformed):
        translator.feed(SSEEvent(None, b"{oops"))


# -- vertex ----------------------------------------------------------------------------------------


def test_vertex_url_is_regional_and_per_project() -> None:
    vtx = vertex()
    assert vtx.base_url == "https://europe-west4-aiplatform.googleapis.com"
    request = vtx.build_request(call("openai", OPENAI_BODY, stream=True))
    assert request.url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/acme-prod/locations/"
        "europe-west4/publishers/google/models/gemini-x:streamGenerateContent?alt=sse"
    )
    assert request.body == OPENAI_GOLDEN
    assert "x-goog-api-key" not in request.headers
    overridden = vertex(base_url="http://127.0.0.1:9/", project="other")
    assert overridden.build_request(call("openai", OPENAI_BODY)).url == (
        "http://127.0.0.1:9/v1/projects/other/locations/europe-west4/publishers/google/models/"
        "gemini-x:generateContent"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"region": None}, "vertex needs region"),
        ({"region": "eu/../x"}, "vertex needs region"),
        ({"credentials": None}, "vertex needs credentials"),
        ({"credentials": "{not json"}, "not a JSON service-account key"),
        ({"credentials": '{"type": "authorized_user"}'}, '"type": "service_account"'),
        (
            {"credentials": orjson.dumps({**orjson.loads(SA_KEY), "private_key": "x"}).decode()},
            "not a PEM private key",
        ),
        (
            {
                "credentials": orjson.dumps(
                    {**orjson.loads(SA_KEY), "token_uri": "ftp://x"}
                ).decode()
            },
            "token_uri",
        ),
    ],
)
def test_vertex_settings_are_checked_without_echoing_the_key(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        vertex_settings(**fields)
    assert message in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


def test_gemini_needs_a_key_and_a_key_never_shows_in_repr() -> None:
    with pytest.raises(ValidationError, match="gemini needs api_key"):
        ProviderSettings.model_validate({"type": "gemini", "models": PRICES})
    assert KEY not in repr(settings())
    assert "PRIVATE KEY" not in repr(vertex().settings)


@pytest.mark.parametrize(
    ("status", "body", "treated_as"),
    [
        (
            400,
            b'{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT",'
            b'"details":[{"reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}',
            401,
        ),
        (400, b'{"error":{"code":400,"message":"Bad","status":"INVALID_ARGUMENT"}}', 400),
        (429, b'{"error":{"code":429,"message":"Quota","status":"RESOURCE_EXHAUSTED"}}', 429),
        (500, b"<html>", 500),
    ],
)
def test_a_bad_key_is_the_gateways_credential_not_the_callers_mistake(
    status: int, body: bytes, treated_as: int
) -> None:
    assert adapter().error_status(status, body) == treated_as


def test_a_thought_signature_travels_in_the_call_id_and_goes_back_upstream() -> None:
    """Thinking models sign their calls and want the signature back: the gateway keeps no
    state, so the signature rides in the id the client returns."""
    signature = "+/+/YWI="
    signed = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                            "thoughtSignature": signature,
                        }
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "responseId": "r_ts_9",  # a mark in the response id cannot confuse the parse
    }
    for protocol, request in (("openai", OPENAI_BODY), ("anthropic", ANTHROPIC_BODY)):
        parsed = orjson.loads(
            adapter().parse_response(call(protocol, request), orjson.dumps(signed)).body
        )
        if protocol == "openai":
            call_id = parsed["choices"][0]["message"]["tool_calls"][0]["id"]
        else:
            call_id = parsed["content"][0]["id"]
        assert re.fullmatch(r"[A-Za-z0-9_-]+", call_id)  # fit for Anthropic's ids too
        history = {
            "model": "gem/gemini-x",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": "4 degrees"},
            ],
        }
        sent = orjson.loads(adapter().build_request(call("openai", history)).body)
        assert sent["contents"][1]["parts"] == [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                "thoughtSignature": signature,
            }
        ]
    streamed = adapter().stream_translator(call("openai", OPENAI_BODY, stream=True))
    out = streamed.feed(SSEEvent(None, orjson.dumps(signed)))
    assert b"_ts_-_-_YWI" in out


def test_an_sdk_message_echoed_back_with_its_empty_fields_is_accepted() -> None:
    echoed = {
        "role": "assistant",
        "content": "Hi",
        "refusal": None,
        "audio": None,
        "function_call": None,
        "tool_calls": None,
        "annotations": [],
    }
    body = {"model": "gem/gemini-x", "messages": [{"role": "user", "content": "Hi"}, echoed]}
    sent = orjson.loads(adapter().build_request(call("openai", body)).body)
    assert sent["contents"][1] == {"role": "model", "parts": [{"text": "Hi"}]}


# -- every field of both protocols: mapped, or refused by name -----------------------------------

#: A value for each request field whose effect can be seen in the upstream body; fields not
#: listed get a string and must be refused with a 400 naming them.
OPENAI_SAMPLES: dict[str, Any] = {
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "max_completion_tokens": 5,
    "max_tokens": 5,
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "seed": 3,
    "stop": "END",
    "temperature": 0.1,
    "top_p": 0.5,
    "tools": [OPENAI_BODY["tools"][0]],
    "n": 2,
    "parallel_tool_calls": False,
    "store": True,
    "logprobs": True,
    "tool_choice": "required",  # without tools
}
#: Accepted and documented as not sent (docs/architecture.md says why).
OPENAI_NOT_SENT = {"user", "safety_identifier", "prompt_cache_key", "stream_options"}
ANTHROPIC_SAMPLES: dict[str, Any] = {
    "max_tokens": 5,
    "system": "Be brief.",
    "stop_sequences": ["END"],
    "thinking": {"type": "enabled", "budget_tokens": 100},
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any"},
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    "service_tier": "priority",
}
ANTHROPIC_NOT_SENT = {"metadata", "cache_control"}
ANTHROPIC_LEGACY = {"temperature": 0.5, "top_p": 0.5, "top_k": 5}  # no longer in the SDK's params


def _sdk_fields(params: Any) -> set[str]:
    return set(params.__required_keys__ | params.__optional_keys__)


def _mapped_or_refused(protocol: str, base: dict[str, Any], field: str, value: Any) -> str:
    baseline = adapter().build_request(call(protocol, base)).body
    try:
        sent = adapter().build_request(call(protocol, {**base, field: value})).body
    except GatewayError as err:
        assert err.status == 400 and err.param is not None, (field, err.message)
        assert err.param.split(".")[0].split("[")[0] == field, (field, err.param)
        return "refused"
    return "mapped" if sent != baseline else "not sent"


def test_every_openai_chat_field_is_mapped_or_refused() -> None:
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    base = {"model": "gem/gemini-x", "messages": [{"role": "user", "content": "Hi"}]}
    for field in sorted(_sdk_fields(CompletionCreateParamsBase) - {"model", "messages"}):
        value = OPENAI_SAMPLES.get(field, "x")
        outcome = _mapped_or_refused("openai", base, field, value)
        expected = "not sent" if field in OPENAI_NOT_SENT else outcome
        assert outcome != "not sent" or field in OPENAI_NOT_SENT, f"{field} was dropped silently"
        assert outcome == expected, field


def test_every_anthropic_messages_field_is_mapped_or_refused() -> None:
    from anthropic.types.message_create_params import MessageCreateParamsBase

    base = {
        "model": "gem/gemini-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    fields = _sdk_fields(MessageCreateParamsBase) | set(ANTHROPIC_LEGACY)
    for field in sorted(fields - {"model", "messages"}):
        value = {**ANTHROPIC_SAMPLES, **ANTHROPIC_LEGACY}.get(field, "x")
        if field in ANTHROPIC_NOT_SENT:
            value = {"user_id": "u"} if field == "metadata" else {"type": "ephemeral"}
        outcome = _mapped_or_refused("anthropic", base, field, value)
        assert outcome != "not sent" or field in ANTHROPIC_NOT_SENT, f"{field} was dropped silently"


def test_anthropic_output_config_maps_to_json_output_and_thinking_level() -> None:
    body = {
        "model": "gem/gemini-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": WEATHER}, "effort": "max"},
    }
    sent = orjson.loads(adapter().build_request(call("anthropic", body)).body)
    assert sent["generationConfig"] == {
        "maxOutputTokens": 10,
        "responseMimeType": "application/json",
        "responseJsonSchema": WEATHER,
        "thinkingConfig": {"thinkingLevel": "high"},
    }
    for bad, param in (
        ({"format": {"type": "text"}}, "output_config.format"),
        ({"format": "json"}, "output_config.format"),
        ({"effort": "extreme"}, "output_config.effort"),
        ({"verbosity": 1}, "output_config.verbosity"),
    ):
        with pytest.raises(GatewayError) as caught:
            adapter().build_request(call("anthropic", {**body, "output_config": bad}))
        assert caught.value.param == param

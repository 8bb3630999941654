"""The Anthropic adapter: upstream requests, responses and streams for both client protocols."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from custos.config.schema import ProviderSettings
from custos.errors import GatewayError
from custos.providers.anthropic import AnthropicAdapter, AnthropicPassthroughStream
from custos.providers.base import ProviderCall, UpstreamMalformed
from custos.providers.registry import adapter_for
from custos.providers.sse import SSEDecoder, SSEEvent
from custos.providers.translate import AnthropicToOpenAIStream
from custos.wire import Usage

KEY = "sk-ant-test-key"


def settings(**fields: Any) -> ProviderSettings:
    values: dict[str, Any] = {
        "type": "anthropic",
        "base_url": "https://api.anthropic.com",
        "api_key": KEY,
        "models": {"claude-x": {"input_per_mtok": 3, "output_per_mtok": 15}},
    }
    values.update(fields)
    return ProviderSettings.model_validate(values)


def adapter(**fields: Any) -> AnthropicAdapter:
    return AnthropicAdapter("claude-main", settings(**fields))


def call(
    protocol: str, raw: bytes, *, stream: bool = False, wants_usage: bool = False
) -> ProviderCall:
    return ProviderCall(
        protocol=protocol,  # type: ignore[arg-type]
        operation="messages" if protocol == "anthropic" else "chat",
        body=orjson.loads(raw),
        raw_body=raw,
        requested_model="claude-main/claude-x",
        upstream_model="claude-x",
        stream=stream,
        client_wants_usage=wants_usage,
    )


# Deliberately odd spacing and key order: a forwarded body must keep every byte but the model.
ANTHROPIC_RAW = (
    b'{"max_tokens":  512, "model" : "claude-main/claude-x",\n'
    b' "messages":[{"role":"user","content":"Hi \\u00e9"}], "metadata": {"user_id": "u1"}}'
)
OPENAI_RAW = orjson.dumps(
    {
        "model": "claude-main/claude-x",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 100,
    }
)


def test_the_registry_serves_anthropic_accounts_with_this_adapter() -> None:
    assert isinstance(adapter_for("claude-main", settings()), AnthropicAdapter)


def test_anthropic_client_body_is_forwarded_byte_for_byte_except_the_model() -> None:
    request = adapter().build_request(call("anthropic", ANTHROPIC_RAW))
    assert (request.method, request.url) == ("POST", "https://api.anthropic.com/v1/messages")
    assert request.body == ANTHROPIC_RAW.replace(
        b'"model" : "claude-main/claude-x"', b'"model":"claude-x"'
    )
    assert request.headers == {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": KEY,
    }


def test_streaming_asks_for_an_event_stream() -> None:
    raw = (
        b'{"model":"claude-main/claude-x","max_tokens":5,"stream":true,'
        b'"messages":[{"role":"user","content":"Hi"}]}'
    )
    request = adapter().build_request(call("anthropic", raw, stream=True))
    assert request.headers["accept"] == "text/event-stream"
    assert orjson.loads(request.body)["stream"] is True


def test_openai_client_body_is_translated() -> None:
    request = adapter().build_request(call("openai", OPENAI_RAW))
    body = orjson.loads(request.body)
    assert body == {
        "model": "claude-x",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 100,
    }
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY


def test_openai_streaming_client_gets_an_anthropic_stream_request() -> None:
    raw = orjson.dumps(
        {
            "model": "claude-main/claude-x",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    request = adapter().build_request(call("openai", raw, stream=True, wants_usage=True))
    body = orjson.loads(request.body)
    TypeAdapter(MessageCreateParamsStreaming).validate_python(body)
    assert body["stream"] is True and "stream_options" not in body
    assert request.headers["accept"] == "text/event-stream"


def test_openai_client_mistakes_are_a_400_before_any_upstream_call() -> None:
    raw = orjson.dumps(
        {"model": "claude-main/claude-x", "messages": [{"role": "user", "content": "Hi"}], "n": 3}
    )
    with pytest.raises(GatewayError) as caught:
        adapter().build_request(call("openai", raw))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("https://proxy.internal/anthropic/v1", "https://proxy.internal/anthropic/v1/messages"),
        ("http://127.0.0.1:9000/v1/", "http://127.0.0.1:9000/v1/messages"),
    ],
)
def test_url_does_not_double_v1(base_url: str, url: str) -> None:
    assert adapter(base_url=base_url).build_request(call("anthropic", ANTHROPIC_RAW)).url == url


def test_configured_headers_set_the_version_and_add_betas_but_not_the_key() -> None:
    headers = {
        "Anthropic-Version": "2024-01-01",
        "anthropic-beta": "tools-2024",
        "x-api-key": "other",
    }
    request = adapter(headers=headers).build_request(call("anthropic", ANTHROPIC_RAW))
    assert request.headers["Anthropic-Version"] == "2024-01-01"
    assert "anthropic-version" not in request.headers  # no second, conflicting version header
    assert request.headers["anthropic-beta"] == "tools-2024"
    assert request.headers["x-api-key"] == KEY  # the account's key, whatever the headers say


def test_embeddings_are_not_supported() -> None:
    anthropic = adapter()
    assert not anthropic.supports("embeddings")
    assert anthropic.supports("chat") and anthropic.supports("messages")
    embeddings = call("openai", b'{"model":"claude-main/claude-x","input":"hi"}')
    embeddings.operation = "embeddings"
    with pytest.raises(GatewayError) as caught:
        anthropic.build_request(embeddings)
    assert caught.value.status == 400


RESPONSE = orjson.dumps(
    {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 5,
            "output_tokens": 4,
        },
    }
)
RESPONSE_USAGE = Usage(
    input_tokens=105, output_tokens=4, cached_input_tokens=90, cache_write_tokens=5
)


def test_anthropic_client_response_is_returned_unchanged_but_its_name_with_usage() -> None:
    Message.model_validate_json(RESPONSE)
    parsed = adapter().parse_response(call("anthropic", ANTHROPIC_RAW), RESPONSE)
    assert parsed.body == RESPONSE.replace(b'"claude-x"', b'"claude-main/claude-x"', 1)
    assert parsed.usage == RESPONSE_USAGE


def test_openai_client_response_is_translated_with_usage() -> None:
    parsed = adapter().parse_response(call("openai", OPENAI_RAW), RESPONSE)
    completion = ChatCompletion.model_validate_json(parsed.body)
    assert completion.model == "claude-main/claude-x"
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (105, 4)
    assert parsed.usage == RESPONSE_USAGE


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[]", b'"text"'])
def test_a_body_that_is_not_json_object_is_malformed(body: bytes) -> None:
    for protocol, raw in (("anthropic", ANTHROPIC_RAW), ("openai", OPENAI_RAW)):
        with pytest.raises(UpstreamMalformed):
            adapter().parse_response(call(protocol, raw), body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            "overloaded_error: Overloaded",
        ),
        (b'{"type":"error","error":{"message":"Bad"}}', "Bad"),
        (b'{"error":"plain"}', "plain"),
        (b"not json", None),
        (b'{"type":"error"}', None),
    ],
)
def test_error_message_reads_anthropic_errors(body: bytes, message: str | None) -> None:
    assert adapter().error_message(body) == message


# -- streams -------------------------------------------------------------------------------------

_EVENT = TypeAdapter(RawMessageStreamEvent)
STREAM_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1},
        },
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi there"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"tz":"UTC"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 17},
    },
    {"type": "message_stop"},
]
STREAM = b"".join(
    b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in STREAM_EVENTS
)


def decoded(stream: bytes, piece: int = 5) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(stream), piece):
        events.extend(decoder.feed(stream[start : start + piece]))
    return events + decoder.close()


def test_the_stream_fixture_is_real_anthropic() -> None:
    for event in STREAM_EVENTS:
        if event["type"] != "ping":
            _EVENT.validate_python(event)


def test_passthrough_forwards_every_event_unchanged_but_the_name_and_tracks_usage() -> None:
    translator = adapter().stream_translator(call("anthropic", ANTHROPIC_RAW, stream=True))
    assert isinstance(translator, AnthropicPassthroughStream)
    out = b""
    for event in decoded(STREAM):
        assert not translator.complete
        out += translator.feed(event)
    assert translator.complete
    out += translator.finish()
    assert out == STREAM.replace(b'"claude-x"', b'"claude-main/claude-x"', 1)
    assert translator.usage == Usage(input_tokens=120, output_tokens=17, cached_input_tokens=100)
    assert translator.output_chars == len("Hi there") + len('{"tz":"UTC"}')


def test_passthrough_names_events_a_server_left_unnamed() -> None:
    translator = AnthropicPassthroughStream("claude-x")
    assert (
        translator.feed(SSEEvent(None, b'{"type":"ping"}'))
        == b'event: ping\ndata: {"type":"ping"}\n\n'
    )


def test_passthrough_without_message_stop_is_not_complete() -> None:
    translator = AnthropicPassthroughStream("claude-x")
    for event in decoded(STREAM)[:-1]:
        translator.feed(event)
    assert not translator.complete
    assert translator.usage == Usage(input_tokens=120, output_tokens=17, cached_input_tokens=100)


def test_passthrough_refuses_malformed_events() -> None:
    with pytest.raises(UpstreamMalformed):
        AnthropicPassthroughStream("claude-x").feed(SSEEvent("message_start", b"{oops"))


@pytest.mark.parametrize("wants_usage", [True, False])
def test_openai_client_stream_is_translated(wants_usage: bool) -> None:
    translator = adapter().stream_translator(
        call("openai", OPENAI_RAW, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(translator, AnthropicToOpenAIStream)
    assert translator.requested_model == "claude-main/claude-x"
    out = b"".join(translator.feed(event) for event in decoded(STREAM)) + translator.finish()
    assert translator.complete
    payloads = [e.data for e in decoded(out, 1000)]
    assert payloads[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    assert [c.usage is not None for c in chunks].count(True) == (1 if wants_usage else 0)
    assert chunks[-2 if wants_usage else -1].choices[0].finish_reason == "tool_calls"
    assert translator.usage == Usage(input_tokens=120, output_tokens=17, cached_input_tokens=100)

"""The bedrock adapter without a network: golden wire tests (request bytes and the SigV4
signature for a fixed clock, computed here from AWS's published algorithm), a ConverseStream
byte sequence framed here by hand and decoded, responses translated field by field, refusals,
and the account's config."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from custos.config.loader import ConfigError, parse_config
from custos.config.schema import ProviderSettings
from custos.errors import GatewayError
from custos.providers.base import ProviderCall, UpstreamMalformed
from custos.providers.bedrock import BedrockAdapter
from custos.providers.eventstream import EventStreamDecoder, encode_message
from custos.providers.registry import adapter_for
from custos.providers.sse import SSEEvent
from custos.wire import Usage

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-3"
UPSTREAM = "anthropic.claude-sonnet-4-5-v1:0"
CLOCK = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
PRICE = {"input_per_mtok": 3, "output_per_mtok": 15}


def settings(**extra: Any) -> ProviderSettings:
    fields = {
        "type": "bedrock",
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET,
        "models": {"claude": PRICE},
        **extra,
    }
    return ProviderSettings.model_validate(fields)


def adapter(**extra: Any) -> BedrockAdapter:
    made = adapter_for("aws", settings(**extra))
    assert isinstance(made, BedrockAdapter)
    return made


def call(protocol: str, body: dict[str, Any], *, stream: bool = False) -> ProviderCall:
    return ProviderCall(
        protocol=protocol,  # type: ignore[arg-type]
        operation="chat" if protocol == "openai" else "messages",
        body=body,
        raw_body=orjson.dumps(body),
        requested_model="aws/claude",
        upstream_model=UPSTREAM,
        stream=stream,
        client_wants_usage=True,
    )


# -- SigV4, computed from the algorithm's definition ----------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def expected_authorization(
    path: str, headers: dict[str, str], body: bytes, host: str, secret: str = SECRET
) -> str:
    """Canonical request -> string to sign -> derived key -> signature, as AWS documents it.
    Non-S3 services encode the path twice: the canonical URI encodes the request's path."""
    signed = {**{k.lower(): v.strip() for k, v in headers.items()}, "host": host}
    names = sorted(signed)
    canonical_uri = "/".join(
        "".join(c if c.isalnum() or c in "-._~" else f"%{ord(c):02X}" for c in segment)
        for segment in path.split("/")
    )
    canonical = "\n".join(
        [
            "POST",
            canonical_uri,
            "",
            *(f"{name}:{signed[name]}" for name in names),
            "",
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    day = CLOCK.strftime("%Y%m%d")
    scope = f"{day}/{REGION}/bedrock/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            CLOCK.strftime("%Y%m%dT%H%M%SZ"),
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), REGION), "bedrock"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


def test_a_signed_converse_request_for_a_fixed_clock():
    body = {
        "model": "aws/claude",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    request = adapter().build_request(call("anthropic", body), now=CLOCK)

    assert request.method == "POST"
    host = f"bedrock-runtime.{REGION}.amazonaws.com"
    path = f"/model/{UPSTREAM}/converse"
    assert request.url == f"https://{host}{path}"
    assert request.body == (
        b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}],'
        b'"inferenceConfig":{"maxTokens":64}}'
    )
    unsigned = {"content-type": "application/json", "accept": "application/json"}
    date = {"X-Amz-Date": "20260304T050607Z"}
    assert request.headers == {
        **unsigned,
        **date,
        "Authorization": expected_authorization(path, {**unsigned, **date}, request.body, host),
    }


def test_a_session_token_is_sent_and_signed_and_streams_ask_for_the_event_stream():
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    made = adapter(session_token="FQoGZXIvYXdzEXAMPLE", base_url="http://127.0.0.1:9")
    request = made.build_request(call("anthropic", body, stream=True), now=CLOCK)

    path = f"/model/{UPSTREAM}/converse-stream"
    assert request.url == f"http://127.0.0.1:9{path}"
    assert request.headers["accept"] == "application/vnd.amazon.eventstream"
    assert request.headers["X-Amz-Security-Token"] == "FQoGZXIvYXdzEXAMPLE"
    signed = {k: v for k, v in request.headers.items() if k != "Authorization"}
    assert request.headers["Authorization"] == expected_authorization(
        path, signed, request.body, "127.0.0.1:9"
    )
    assert SECRET not in repr(request) and SECRET not in repr(made.settings)


def test_an_inference_profile_arn_keeps_its_slash_encoded():
    arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-v1:0"
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    made_call = call("anthropic", body)
    made_call.upstream_model = arn
    request = adapter().build_request(made_call, now=CLOCK)
    assert request.url.endswith(
        "/model/arn:aws:bedrock:eu-west-3:123456789012:inference-profile%2Feu.anthropic.claude-v1:0"
        "/converse"
    )


# -- request bodies -------------------------------------------------------------------------------

PNG = "iVBORw0KGgo="


def test_anthropic_request_maps_field_by_field():
    body = {
        "model": "aws/claude",
        "max_tokens": 512,
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 40,
        "stop_sequences": ["###"],
        "stream": False,
        "metadata": {"user_id": "user-7"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Sys", "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "tool", "name": "lookup"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "See"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "tooluse_1", "name": "lookup", "input": {"q": 1}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "tooluse_1", "content": "42"}],
            },
        ],
    }
    request = adapter().build_request(call("anthropic", body), now=CLOCK)
    assert orjson.loads(request.body) == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "See"},
                    {"image": {"format": "png", "source": {"bytes": PNG}}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "lookup", "input": {"q": 1}}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "42"}]}}
                ],
            },
        ],
        "system": [{"text": "Sys"}, {"cachePoint": {"type": "default"}}],
        "inferenceConfig": {
            "maxTokens": 512,
            "temperature": 0.3,
            "topP": 0.8,
            "stopSequences": ["###"],
        },
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "lookup",
                        "inputSchema": {"json": {"type": "object"}},
                        "description": "Look up",
                    }
                }
            ],
            "toolChoice": {"tool": {"name": "lookup"}},
        },
        "additionalModelRequestFields": {
            "top_k": 40,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        "requestMetadata": {"user_id": "user-7"},
    }


def test_openai_request_maps_field_by_field():
    body = {
        "model": "aws/claude",
        "messages": [
            {"role": "developer", "content": "Dev"},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "max_completion_tokens": 100,
        "temperature": 1.2,
        "top_p": 0.5,
        "stop": "STOP",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "alice",
        "n": 1,
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
    }
    request = adapter().build_request(call("openai", body, stream=True), now=CLOCK)
    assert request.body == orjson.dumps(
        {
            "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "system": [{"text": "Dev"}],
            "inferenceConfig": {
                "maxTokens": 100,
                "temperature": 1.2,
                "topP": 0.5,
                "stopSequences": ["STOP"],
            },
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"any": {}},
            },
            "requestMetadata": {"user_id": "alice"},
        }
    )


@pytest.mark.parametrize(
    ("protocol", "field", "value"),
    [
        ("openai", "seed", 1),
        ("openai", "n", 3),
        ("openai", "logprobs", True),
        ("openai", "top_logprobs", 2),
        ("openai", "frequency_penalty", 0.1),
        ("openai", "response_format", {"type": "json_schema", "json_schema": {}}),
        ("openai", "modalities", ["text", "audio"]),
        ("openai", "audio", {"voice": "x"}),
        ("openai", "prediction", {"type": "content", "content": "x"}),
        ("openai", "service_tier", "flex"),
        ("openai", "web_search_options", {}),
        ("openai", "metadata", {"k": "v"}),
        ("openai", "store", True),
        ("openai", "functions", [{"name": "f"}]),
        ("anthropic", "service_tier", "auto"),
        ("anthropic", "container", "x"),
        ("anthropic", "mcp_servers", []),
        ("anthropic", "context_management", {}),
        ("anthropic", "output_format", {}),
        ("anthropic", "metadata", {"other": 1}),
    ],
)
def test_every_other_field_is_refused_by_name(protocol, field, value):
    body = {"model": "aws/claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    body[field] = value
    with pytest.raises(GatewayError) as refused:
        adapter().build_request(call(protocol, body), now=CLOCK)
    assert refused.value.status == 400
    assert field in refused.value.message and refused.value.param == field


def test_documents_map_with_a_name():
    pdf = {"type": "base64", "media_type": "application/pdf", "data": PNG}
    content = [
        {"type": "document", "source": pdf, "title": "Q3 report: final!!"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Hi"}},
        {"type": "text", "text": "Summarise"},
    ]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    request = adapter().build_request(call("anthropic", body), now=CLOCK)
    assert orjson.loads(request.body)["messages"][0]["content"] == [
        {"document": {"format": "pdf", "source": {"bytes": PNG}, "name": "Q3 report final"}},
        {"document": {"format": "txt", "source": {"bytes": "SGk="}, "name": "document-0-1"}},
        {"text": "Summarise"},
    ]


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}, "content[0]"),
        ({"type": "document", "source": {"type": "url", "url": "https://x/d.pdf"}}, "content[0]"),
        (
            {"type": "document", "source": {"type": "text", "data": "d"}, "context": "c"},
            "content[0].context",
        ),
        ({"type": "tool_use", "name": "f", "input": {}}, "content[0]"),
        ({"type": "tool_result", "content": "x"}, "content[0].tool_use_id"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}},
            "content[0]",
        ),
    ],
)
def test_blocks_without_a_converse_form_are_refused_by_position(block, named):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [block]}]}
    with pytest.raises(GatewayError) as refused:
        adapter().build_request(call("anthropic", body), now=CLOCK)
    assert refused.value.status == 400 and f"messages[0].{named}" in refused.value.message


# -- responses ------------------------------------------------------------------------------------

CONVERSE_RESPONSE = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"reasoningContent": {"reasoningText": {"text": "think", "signature": "s1"}}},
                {"text": "Calling."},
                {"toolUse": {"toolUseId": "tooluse_A", "name": "lookup", "input": {"q": "x"}}},
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {
        "inputTokens": 10,
        "outputTokens": 7,
        "totalTokens": 27,
        "cacheReadInputTokens": 6,
        "cacheWriteInputTokens": 4,
    },
    "metrics": {"latencyMs": 120},
}
USAGE = Usage(input_tokens=20, output_tokens=7, cached_input_tokens=6, cache_write_tokens=4)


def test_a_converse_response_for_an_anthropic_client():
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    parsed = adapter().parse_response(call("anthropic", body), orjson.dumps(CONVERSE_RESPONSE))
    message = orjson.loads(parsed.body)
    assert message.pop("id").startswith("msg_")
    assert message == {
        "type": "message",
        "role": "assistant",
        "model": "aws/claude",
        "content": [
            {"type": "thinking", "thinking": "think", "signature": "s1"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_tooluse_A", "name": "lookup", "input": {"q": "x"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 7,
            "cache_read_input_tokens": 6,
            "cache_creation_input_tokens": 4,
        },
    }
    assert parsed.usage == USAGE


def test_a_converse_response_for_an_openai_client():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    parsed = adapter().parse_response(call("openai", body), orjson.dumps(CONVERSE_RESPONSE))
    completion = orjson.loads(parsed.body)
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == "aws/claude"
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Calling."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_tooluse_A",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
        }
    ]
    assert completion["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 7,
        "total_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 4},
    }
    assert parsed.usage == USAGE


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"output": {}}'])
def test_a_body_that_is_not_converse_is_malformed(body):
    with pytest.raises(UpstreamMalformed):
        adapter().parse_response(call("anthropic", {"messages": []}), body)


@pytest.mark.parametrize(
    ("status", "body", "seen_as"),
    [(408, b'{"message": "slow"}', 504), (424, b"{}", 502), (429, b"{}", 429)],
)
def test_bedrock_statuses(status, body, seen_as):
    assert adapter().error_status(status, body) == seen_as


def test_error_messages_name_the_exception_when_the_body_does():
    made = adapter()
    assert made.error_message(b'{"message": "Bad input"}') == "Bad input"
    assert (
        made.error_message(b'{"__type": "com.amazon#ValidationException", "Message": "Bad"}')
        == "ValidationException: Bad"
    )
    assert made.error_message(b"<html>") is None


# -- the event stream -----------------------------------------------------------------------------


def frame(event_type: str, payload: dict[str, Any], message_type: str = "event") -> bytes:
    """One event-stream message, framed from AWS's description (not the module's encoder)."""
    key = ":exception-type" if message_type == "exception" else ":event-type"
    headers = b""
    for name, value in (
        (key, event_type),
        (":content-type", "application/json"),
        (":message-type", message_type),
    ):
        headers += bytes([len(name)]) + name.encode() + b"\x07"
        headers += struct.pack(">H", len(value)) + value.encode()
    body = orjson.dumps(payload)
    prelude = struct.pack(">II", 16 + len(headers) + len(body), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


STREAM = [
    frame("messageStart", {"role": "assistant"}),
    frame(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hm"}}}
    ),
    frame(
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sg"}}},
    ),
    frame("contentBlockStop", {"contentBlockIndex": 0}),
    frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hello"}}),
    frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": " there"}}),
    frame("contentBlockStop", {"contentBlockIndex": 1}),
    frame(
        "contentBlockStart",
        {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_B", "name": "f"}}},
    ),
    frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"a":'}}}),
    frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "1}"}}}),
    frame("contentBlockStop", {"contentBlockIndex": 2}),
    frame("messageStop", {"stopReason": "tool_use"}),
    frame(
        "metadata",
        {
            "usage": {
                "inputTokens": 11,
                "outputTokens": 9,
                "totalTokens": 23,
                "cacheReadInputTokens": 3,
            },
            "metrics": {"latencyMs": 5},
        },
    ),
]


def test_the_module_encoder_frames_as_aws_does():
    payload = {"contentBlockIndex": 0}
    headers = {
        ":event-type": "contentBlockStop",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert encode_message(headers, orjson.dumps(payload)) == frame("contentBlockStop", payload)


def decode_byte_by_byte(data: bytes) -> list[SSEEvent]:
    decoder = EventStreamDecoder()
    events = [event for i in range(len(data)) for event in decoder.feed(data[i : i + 1])]
    return events + decoder.close()


def anthropic_events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in out.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


def test_a_converse_stream_decoded_and_translated_for_an_anthropic_client():
    events = decode_byte_by_byte(b"".join(STREAM))
    assert [e.event for e in events][:2] == ["messageStart", "contentBlockDelta"]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    translator = adapter().stream_translator(call("anthropic", body, stream=True))
    out = anthropic_events(b"".join(translator.feed(e) for e in events) + translator.finish())

    start = out[0][1]["message"]
    assert start["id"].startswith("msg_") and start["model"] == "aws/claude"
    assert [
        (name, data.get("index"), data.get("delta") or data.get("content_block"))
        for name, data in out[1:]
    ] == [
        ("content_block_start", 0, {"type": "thinking", "thinking": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "hm"}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": "sg"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "Hello"}),
        ("content_block_delta", 1, {"type": "text_delta", "text": " there"}),
        ("content_block_stop", 1, None),
        (
            "content_block_start",
            2,
            {"type": "tool_use", "id": "toolu_tooluse_B", "name": "f", "input": {}},
        ),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": '{"a":'}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": "1}"}),
        ("content_block_stop", 2, None),
        ("message_delta", None, {"stop_reason": "tool_use", "stop_sequence": None}),
        ("message_stop", None, None),
    ]
    assert out[-2][1]["usage"] == {
        "input_tokens": 11,
        "output_tokens": 9,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 0,
    }
    assert translator.complete
    assert translator.usage == Usage(input_tokens=14, output_tokens=9, cached_input_tokens=3)


def test_a_converse_stream_translated_for_an_openai_client():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    translator = adapter().stream_translator(call("openai", body, stream=True))
    decoder = EventStreamDecoder()
    out = b"".join(translator.feed(e) for e in decoder.feed(b"".join(STREAM)))
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert out.endswith(b"data: [DONE]\n\n")
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith(
        "chatcmpl-"
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello there"
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    assert calls[0]["id"] == "call_tooluse_B" and calls[0]["function"]["name"] == "f"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 9,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert translator.complete and translator.usage == Usage(14, 9, 3)
    assert translator.output_chars == len("hmsgHello there") + len('{"a":1}') - len("sg")


def test_a_stream_exception_becomes_the_clients_error_event():
    exception = frame("throttlingException", {"message": "Slow down"}, "exception")
    events = EventStreamDecoder().feed(STREAM[0] + STREAM[4] + exception)
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    translator = adapter().stream_translator(call("anthropic", body, stream=True))
    out = anthropic_events(b"".join(translator.feed(e) for e in events))
    assert out[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "throttlingException: Slow down"},
        },
    )
    assert translator.upstream_error and not translator.complete


def test_a_stream_exceptions_text_is_cut_as_an_error_bodys_is():
    """The provider's words reach the client at most 500 characters long, whatever the
    exception (its type is a header of up to 32 KiB, its message up to a whole message)."""
    exception = frame("x" * 5000, {"message": "y" * 100_000}, "exception")
    events = EventStreamDecoder().feed(STREAM[0] + exception)
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    translator = adapter().stream_translator(call("anthropic", body, stream=True))
    out = anthropic_events(b"".join(translator.feed(e) for e in events))
    message = out[-1][1]["error"]["message"]
    assert len(message) <= 700 and translator.upstream_error


def test_a_corrupt_crc_is_malformed():
    corrupt = bytearray(STREAM[1])
    corrupt[-6] ^= 0x01  # a payload byte: the message CRC no longer matches
    decoder = EventStreamDecoder()
    assert decoder.feed(STREAM[0])
    with pytest.raises(UpstreamMalformed, match="corrupt"):
        decoder.feed(bytes(corrupt))
    prelude = bytearray(STREAM[0])
    prelude[2] ^= 0x01  # the total length: the prelude CRC no longer matches
    with pytest.raises(UpstreamMalformed):
        EventStreamDecoder().feed(bytes(prelude))


def test_a_stream_cut_inside_a_message_is_malformed():
    decoder = EventStreamDecoder()
    assert decoder.feed(STREAM[0] + STREAM[1][:10]) != []
    with pytest.raises(UpstreamMalformed, match="inside a message"):
        decoder.close()


def _prelude(total_length: int, headers_length: int) -> bytes:
    """A message prelude with a valid CRC, declaring the given lengths."""
    lengths = struct.pack("!II", total_length, headers_length)
    return lengths + struct.pack("!I", zlib.crc32(lengths))


@pytest.mark.parametrize(
    ("total_length", "headers_length"),
    [(0, 0), (4, 0), (15, 0), (20, 8), (2**32 - 1, 0), (9 * 1024 * 1024, 0)],
)
def test_a_message_declaring_an_impossible_or_huge_length_is_malformed_at_its_prelude(
    total_length, headers_length
):
    """Shorter than its own framing, or longer than one event may be (what SSE allows): refused
    as soon as the prelude arrives, never buffered while the rest is awaited."""
    decoder = EventStreamDecoder()
    assert decoder.feed(STREAM[0])
    with pytest.raises(UpstreamMalformed, match="corrupt"):
        decoder.feed(_prelude(total_length, headers_length) + b"x" * 64)


# -- the account's config -------------------------------------------------------------------------


def test_the_endpoint_follows_the_region_and_the_region_is_required():
    assert settings().base_url == f"https://bedrock-runtime.{REGION}.amazonaws.com"
    assert settings(base_url="http://127.0.0.1:1/").base_url == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="bedrock needs region"):
        settings(region=None)
    with pytest.raises(ValueError, match="bedrock needs region"):
        settings(region="Europe")
    with pytest.raises(ValueError, match="access_key_id and secret_access_key"):
        settings(secret_access_key=None)


CONFIG = """\
version: 1
providers:
  aws:
    type: bedrock
    region: us-east-1
    access_key_id: ${env:CUSTOS_T_AWS_ID}
    secret_access_key: SECRET_HERE
    models:
      claude: {input_per_mtok: 3, output_per_mtok: 15}
"""


@pytest.mark.parametrize("field", ["access_key_id", "secret_access_key", "session_token"])
def test_aws_credentials_written_into_the_file_are_refused(monkeypatch, field):
    monkeypatch.setenv("CUSTOS_T_AWS_ID", "AKID")
    monkeypatch.setenv("CUSTOS_T_AWS_SECRET", SECRET)
    text = CONFIG.replace("SECRET_HERE", "${env:CUSTOS_T_AWS_SECRET}").replace(
        f"    {field}: ${{env:CUSTOS_T_AWS_ID}}\n" if field == "access_key_id" else "    models",
        f"    {field}: {SECRET}\n"
        if field == "access_key_id"
        else f"    {field}: {SECRET}\n    models",
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    assert f"providers.aws.{field}" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_aws_credentials_by_reference_load(monkeypatch):
    monkeypatch.setenv("CUSTOS_T_AWS_ID", "AKID")
    monkeypatch.setenv("CUSTOS_T_AWS_SECRET", SECRET)
    loaded = parse_config(CONFIG.replace("SECRET_HERE", "${env:CUSTOS_T_AWS_SECRET}"))
    account = loaded.config.providers["aws"]
    assert (account.access_key_id, account.secret_access_key) == ("AKID", SECRET)
    assert account.region == "us-east-1"
    assert SECRET not in repr(account)


@pytest.mark.parametrize(
    ("url", "token"),
    [
        (f"https://bedrock-runtime.{REGION}.amazonaws.com/model/{UPSTREAM}/converse", None),
        ("http://127.0.0.1:8080/model/a:b/converse-stream", "TOKEN/with+chars="),
        ("https://h.example:443/model/arn:aws:x:1:p%2Fq/converse?b=2&a=1", None),
    ],
)
def test_the_signature_is_the_one_botocore_computes(url, token):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from custos.providers.sigv4 import SigV4Signer

    headers = {"content-type": "application/json", "X-Custom": "  a   b "}
    body = b'{"messages":[]}'
    ours = SigV4Signer(ACCESS_KEY, SECRET, token, REGION, "bedrock").sign(url, headers, body, CLOCK)
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    request.context["timestamp"] = CLOCK.strftime("%Y%m%dT%H%M%SZ")
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET, token), "bedrock", REGION)
    signer._modify_request_before_signing(request)
    signature = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    assert ours["Authorization"].endswith(f"Signature={signature}")
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == token

"""Responses -> Anthropic Messages translation: every field the ``openai`` SDK can send is
mapped or refused naming it, and Anthropic's stream becomes the Responses typed events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.types.responses import response_create_params

from custos.errors import GatewayError
from custos.providers.bedrock import responses_request_to_converse
from custos.providers.gemini import responses_request_to_gemini
from custos.providers.responses import (
    AnthropicToResponsesStream,
    ResponsesPassthroughStream,
    request_to_anthropic,
    response_from_anthropic,
)
from custos.providers.sse import SSEDecoder

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}
BASE: dict[str, Any] = {"model": "m", "input": "hi", "tools": [TOOL]}
#: A value that asks for something, for each field the gateway maps; any other field gets "x".
SAMPLES: dict[str, Any] = {
    "input": "other",
    "instructions": "be brief",
    "max_output_tokens": 100,
    "temperature": 0.3,
    "top_p": 0.5,
    "tools": [TOOL, {**TOOL, "name": "g"}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low"},
    "safety_identifier": "u1",
    "user": "u1",
    "stream": True,
    "store": True,
    "background": True,
    "include": ["reasoning.encrypted_content"],
    "metadata": {"k": "v"},
    "truncation": "auto",
    "text": {"format": {"type": "json_object"}},
}
FIELDS = sorted(
    {*response_create_params.ResponseCreateParamsBase.__annotations__, "stream"} - {"model"}
)


#: The translations of a Responses request, per provider type reached through Anthropic's.
TRANSLATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "anthropic": lambda body: request_to_anthropic(body, "claude"),
    "gemini": lambda body: responses_request_to_gemini(body, "gemini-2.5-flash"),
    "bedrock": responses_request_to_converse,
}
#: Fields that reach a provider type other than in the body: ``stream`` picks Gemini's and
#: Bedrock's streaming method. And fields accepted and not sent, as docs/architecture.md says:
#: Gemini has no field for end-user ids.
NOT_IN_THE_BODY = {
    "gemini": {"stream", "user", "safety_identifier"},
    "bedrock": {"stream"},
}


@pytest.mark.parametrize("target", TRANSLATIONS)
@pytest.mark.parametrize("field", FIELDS)
def test_every_sdk_field_is_mapped_or_refused_by_name(field, target):
    translation = TRANSLATIONS[target]
    base = translation(BASE)
    body = {**BASE, field: SAMPLES.get(field, "x")}
    try:
        translated = translation(body)
    except GatewayError as err:
        assert err.status == 400
        assert err.param is not None and err.param.split(".")[0].split("[")[0] == field
        assert field in err.message
        return
    if field in NOT_IN_THE_BODY.get(target, ()):
        assert translated == base, f"{field} now reaches {target}: take it off NOT_IN_THE_BODY"
    else:
        assert translated != base, f"{field} was neither mapped nor refused"


def _anthropic_stream(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def test_a_stream_with_thinking_text_and_a_tool_call():
    upstream = _anthropic_stream(
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 7}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f"}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": '{"a":1}'}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    )  # fmt: skip
    translator = AnthropicToResponsesStream({"input": "hi"}, "claude-main/c")
    out = b"".join(translator.feed(e) for e in SSEDecoder().feed(upstream))
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]
    assert final["type"] == "response.completed" and translator.complete
    response = final["response"]
    assert response["model"] == "claude-main/c" and response["id"] == "resp_1"
    assert [item["type"] for item in response["output"]] == [
        "reasoning",
        "message",
        "function_call",
    ]
    assert response["output"][1]["content"][0]["text"] == "Hi"
    call = response["output"][2]
    assert (call["call_id"], call["name"], call["arguments"]) == ("toolu_1", "f", '{"a":1}')
    assert response["usage"]["input_tokens"] == 7 and response["usage"]["output_tokens"] == 9
    assert translator.output_chars == len("hmm") + len("Hi") + len('{"a":1}')


def test_thinking_is_the_summary_when_one_is_asked_for():
    upstream = _anthropic_stream(
        {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "so"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 1}},
        {"type": "message_stop"},
    )  # fmt: skip
    request = {"input": "hi", "reasoning": {"effort": "low", "summary": "auto"}}
    translator = AnthropicToResponsesStream(request, "c")
    out = b"".join(translator.feed(e) for e in SSEDecoder().feed(upstream))
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[-1]["response"]["output"][0]
    assert item["summary"] == [{"type": "summary_text", "text": "so"}]
    assert item["content"] == []
    plain = response_from_anthropic(
        {"id": "msg_2", "content": [{"type": "thinking", "thinking": "so"}]}, request, "c"
    )
    assert plain["output"][0] == item
    assert plain["reasoning"] == {"effort": "low", "summary": "auto"}


def test_an_error_in_the_stream_is_a_responses_error_event():
    upstream = _anthropic_stream(
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 7}}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    translator = AnthropicToResponsesStream({"input": "hi"}, "c")
    out = b"".join(translator.feed(e) for e in SSEDecoder().feed(upstream))
    last = SSEDecoder().feed(out)[-1]
    assert last.event == "error"
    assert orjson.loads(last.data) == {
        "type": "error",
        "sequence_number": 2,
        "code": "overloaded_error",
        "message": "Overloaded",
        "param": None,
    }
    assert translator.upstream_error and not translator.complete


def test_content_parts_map_or_are_refused_by_name():
    image = "data:image/png;base64,iVBORw0KGgo="
    parts = [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": image}]
    translated = request_to_anthropic({"input": [{"role": "user", "content": parts}]}, "c")
    assert translated["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
    ]  # fmt: skip
    with pytest.raises(GatewayError) as caught:
        part = {"type": "input_file", "file_id": "file_1"}
        request_to_anthropic({"input": [{"role": "user", "content": [part]}]}, "c")
    assert caught.value.param == "input[0].content[0]"


def test_a_failed_response_relayed_from_openai_is_the_providers_error():
    """``response.failed`` ends the stream with the provider's own error: relayed as is, the
    request recorded as an upstream failure (not served), with the usage it reports."""
    usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    failed = {
        "type": "response.failed",
        "sequence_number": 4,
        "response": {"model": "gpt-5.5", "status": "failed", "usage": usage,
                     "error": {"code": "server_error", "message": "boom"}},
    }  # fmt: skip
    translator = ResponsesPassthroughStream("openai-main/gpt-5.5")
    (event,) = SSEDecoder().feed(_anthropic_stream(failed))
    relayed = orjson.loads(SSEDecoder().feed(translator.feed(event))[0].data)
    assert relayed["response"]["model"] == "openai-main/gpt-5.5"
    assert translator.upstream_error and not translator.complete
    assert translator.usage is not None and translator.usage.total_tokens == 7

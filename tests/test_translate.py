"""OpenAI chat <-> Anthropic Messages translation, checked field by field and against the SDKs.

Every translated request, response and stream event is validated with the official ``openai`` and
``anthropic`` SDK types, so the shapes are proven against code nobody here wrote. Streams are also
replayed through each SDK's own accumulator, which is what a real client does with them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter

from custos.errors import GatewayError
from custos.providers.base import UpstreamMalformed
from custos.providers.sse import SSEDecoder, SSEEvent
from custos.providers.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from custos.wire import Usage

# -- SDK validation helpers -----------------------------------------------------------------------

_ANTHROPIC_PARAMS = TypeAdapter(MessageCreateParamsNonStreaming)
_ANTHROPIC_STREAM_PARAMS = TypeAdapter(MessageCreateParamsStreaming)
_OPENAI_PARAMS = TypeAdapter(CompletionCreateParamsNonStreaming)
_OPENAI_STREAM_PARAMS = TypeAdapter(CompletionCreateParamsStreaming)
_ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)


def _materialise(value: Any) -> Any:
    # The SDKs type request lists as Iterable, which pydantic validates lazily: drain them.
    if isinstance(value, dict):
        return {key: _materialise(item) for key, item in value.items()}
    if isinstance(value, list | Iterator):
        return [_materialise(item) for item in value]
    return value


def _strictly(adapter: TypeAdapter[Any], body: dict[str, Any]) -> None:
    """Valid for the SDK's request TypedDict, every key known: pydantic drops unknown keys from
    TypedDicts, so a body that survives validation unchanged used only fields the SDK knows."""
    assert _materialise(adapter.validate_python(body)) == body


def anthropic_request_ok(body: dict[str, Any]) -> None:
    _strictly(_ANTHROPIC_STREAM_PARAMS if body.get("stream") else _ANTHROPIC_PARAMS, body)


def openai_request_ok(body: dict[str, Any]) -> None:
    _strictly(_OPENAI_STREAM_PARAMS if body.get("stream") else _OPENAI_PARAMS, body)


def test_the_strict_request_check_can_fail() -> None:
    good = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    anthropic_request_ok(good)
    misspelt = {**good, "messages": [{"role": "user", "content": [{"type": "text", "txt": "x"}]}]}
    with pytest.raises(Exception):  # noqa: B017 - pydantic's error type is not the point
        anthropic_request_ok(misspelt)
    with pytest.raises(AssertionError):
        anthropic_request_ok({**good, "stop": ["x"]})  # an OpenAI field Anthropic does not know


# -- OpenAI request -> Anthropic request ---------------------------------------------------------

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
}
ANTHROPIC_TOOL = {"name": "weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}


def to_anthropic(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "claude-main/claude-x")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = openai_request_to_anthropic(body, "claude-x")
    anthropic_request_ok(out)
    return out


def test_minimal_request_gets_model_and_default_max_tokens() -> None:
    assert to_anthropic() == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_one_system_message_becomes_the_system_string() -> None:
    out = to_anthropic(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert out["system"] == "Be brief."
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_system_and_developer_messages_join_the_system_blocks_in_order() -> None:
    out = to_anthropic(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        ]
    )
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_consecutive_same_role_turns_are_merged_so_roles_alternate() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
            {"role": "user", "content": "five"},
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_assistant_refusal_parts_are_replayed_as_text() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "No: "},
                    {"type": "refusal", "refusal": "I can't."},
                ],
            },
        ]
    )
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "No: "},
        {"type": "text", "text": "I can't."},
    ]


def test_empty_turns_are_dropped_and_do_not_break_alternation() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_images_data_urls_become_base64_and_http_urls_url_sources() -> None:
    out = to_anthropic(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/bmp;base64,AAAA",
        "data:image/png,notbase64",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
    ],
)
def test_images_anthropic_cannot_take_are_refused(url: str) -> None:
    with pytest.raises(GatewayError) as caught:
        to_anthropic(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        )
    assert caught.value.status == 400


def test_tool_calls_and_results_become_tool_use_and_grouped_tool_results() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "24C"}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        tools=[OPENAI_TOOL],
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                # Ids take Anthropic's shape; the rest of the id is kept, so pairs still match.
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "24C"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert out["tools"] == [ANTHROPIC_TOOL]
    assert "tool_choice" not in out


def test_assistant_text_comes_before_its_tool_use() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ],
            },
        ],
        tools=[OPENAI_TOOL],
    )
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_c", "name": "weather", "input": {}},  # "": no arguments
    ]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", "42", "not json"])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400(arguments: str) -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]
    with pytest.raises(GatewayError) as caught:
        openai_request_to_anthropic({"model": "m", "messages": messages}, "claude-x")
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather"},
        ),
    ],
)
def test_tool_choice_maps_to_anthropic(choice: Any, expected: dict[str, Any]) -> None:
    assert to_anthropic(tools=[OPENAI_TOOL], tool_choice=choice)["tool_choice"] == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        ),
        ("none", {"type": "none"}),  # Anthropic's "none" takes no parallelism flag
    ],
)
def test_parallel_tool_calls_false_disables_parallel_tool_use(
    choice: Any, expected: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"tools": [OPENAI_TOOL], "parallel_tool_calls": False}
    if choice is not None:
        body["tool_choice"] = choice
    assert to_anthropic(**body)["tool_choice"] == expected


def test_parallel_tool_calls_true_changes_nothing_and_tool_choice_without_tools_is_refused() -> (
    None
):
    assert "tool_choice" not in to_anthropic(tools=[OPENAI_TOOL], parallel_tool_calls=True)
    # OpenAI refuses these without tools itself; so does the translation, naming the field.
    for field, value in (("tool_choice", "auto"), ("parallel_tool_calls", False)):
        with pytest.raises(GatewayError) as caught:
            to_anthropic(**{field: value})
        assert (caught.value.status, caught.value.param) == (400, field)
    assert "tool_choice" not in to_anthropic(tool_choice="none")


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    out = to_anthropic(tools=[{"type": "function", "function": {"name": "now"}}])
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "custom", "custom": {"name": "grammar"}},
        {"type": "function"},
        "weather",
    ],
)
def test_non_function_tools_are_refused(tool: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        to_anthropic(tools=[tool])
    assert caught.value.status == 400


def test_unknown_tool_choice_is_refused() -> None:
    with pytest.raises(GatewayError):
        to_anthropic(
            tools=[OPENAI_TOOL], tool_choice={"type": "allowed_tools", "allowed_tools": {}}
        )


def test_sampling_stop_stream_user_and_tier_are_carried_and_neutral_values_accepted() -> None:
    out = to_anthropic(
        max_tokens=300,
        temperature=1,
        top_p=1.0,
        stop="END",
        stream=True,
        stream_options={"include_usage": True},
        user="user-42",
        n=1,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        service_tier="default",
    )
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "user-42"},
        "service_tier": "standard_only",
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", 7),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("presence_penalty", 0.1),
        ("frequency_penalty", 0.1),
        ("logit_bias", {"50256": -100}),
        ("temperature", 0.2),  # deprecated by the Messages API
        ("top_p", 0.9),
        ("service_tier", "flex"),
        ("reasoning_effort", "extreme"),
        ("a_field_no_api_has", 1),
    ],
)
def test_what_anthropic_cannot_take_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        to_anthropic(**{field: value})
    assert (caught.value.status, caught.value.param) == (400, field)
    assert field in caught.value.message


def test_stop_list_becomes_stop_sequences() -> None:
    assert to_anthropic(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in to_anthropic(stop=None)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert to_anthropic(max_completion_tokens=100, max_tokens=50)["max_tokens"] == 100
    assert to_anthropic(max_tokens=50)["max_tokens"] == 50


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True])
def test_max_tokens_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        to_anthropic(max_tokens=value)
    assert (caught.value.status, caught.value.param) == (400, "max_tokens")


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "hi", "name": "alice"},
        {"role": "assistant", "content": "hi", "audio": {"id": "audio_1"}},
    ],
)
def test_message_fields_anthropic_has_no_place_for_are_refused(message: dict[str, Any]) -> None:
    field = "name" if "name" in message else "audio"
    with pytest.raises(GatewayError) as caught:
        to_anthropic(messages=[message, {"role": "user", "content": "and?"}])
    assert caught.value.param == f"messages[0].{field}"


@pytest.mark.parametrize("n", [2, 5])
def test_more_than_one_choice_is_a_clear_400(n: int) -> None:
    with pytest.raises(GatewayError) as caught:
        to_anthropic(n=n)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "invalid_request",
        "n",
    )
    assert "one choice" in caught.value.message


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "function", "name": "f", "content": "x"}],
        [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
            }
        ],
        [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
        [{"role": "user", "content": 42}],
        [{"role": "tool", "content": "no id"}],
    ],
)
def test_messages_anthropic_cannot_take_are_refused(messages: list[Any]) -> None:
    with pytest.raises(GatewayError) as caught:
        openai_request_to_anthropic({"model": "m", "messages": messages}, "claude-x")
    assert caught.value.status == 400


def test_legacy_functions_are_refused() -> None:
    with pytest.raises(GatewayError):
        to_anthropic(functions=[{"name": "f", "parameters": {}}])


# -- Anthropic response -> OpenAI response -------------------------------------------------------


def anthropic_message(**fields: Any) -> dict[str, Any]:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-20250101",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    message.update(fields)
    Message.model_validate(message)  # the fixture itself is a real Anthropic message
    return message


def to_openai_response(data: dict[str, Any]) -> dict[str, Any]:
    out = anthropic_response_to_openai(data, "claude-main/claude-x", created=1_700_000_000)
    ChatCompletion.model_validate(out)
    return out


def test_text_response_becomes_a_chat_completion() -> None:
    assert to_openai_response(anthropic_message()) == {
        "id": "chatcmpl-01",  # the id in OpenAI's shape
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-main/claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_created_defaults_to_now() -> None:
    out = anthropic_response_to_openai(anthropic_message(), "m")
    assert isinstance(out["created"], int) and out["created"] > 1_700_000_000


def test_tool_use_response_becomes_tool_calls_with_json_arguments() -> None:
    data = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "both."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ],
        stop_reason="tool_use",
    )
    out = to_openai_response(data)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking both."
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("call_1", "function", "weather"),
        ("call_2", "function", "weather"),
    ]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


def test_tool_only_response_has_null_content() -> None:
    data = anthropic_message(
        content=[{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}],
        stop_reason="tool_use",
    )
    message = to_openai_response(data)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    out = to_openai_response(anthropic_message(stop_reason=stop_reason))
    assert out["choices"][0]["finish_reason"] == finish_reason


def test_usage_with_cache_tokens_counts_them_in_the_prompt() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 200,
        "cache_creation_input_tokens": 50,
        "output_tokens": 7,
    }
    assert to_openai_response(anthropic_message(usage=usage))["usage"] == {
        "prompt_tokens": 260,
        "completion_tokens": 7,
        "total_tokens": 267,
        "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 50},
    }


@pytest.mark.parametrize(
    "data", [{"type": "error", "error": {}}, {"type": "message", "content": "text"}, {}]
)
def test_a_body_that_is_not_a_message_is_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(UpstreamMalformed):
        anthropic_response_to_openai(data, "m")


# -- Anthropic request -> OpenAI request ---------------------------------------------------------


def to_openai(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-main/gpt-x")
    body.setdefault("max_tokens", 256)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    anthropic_request_ok(body)  # the input is a real Anthropic request
    out = anthropic_request_to_openai(body, "gpt-x")
    openai_request_ok(out)
    return out


def test_minimal_anthropic_request() -> None:
    assert to_openai() == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 256,  # current OpenAI models refuse max_tokens
    }


def test_max_tokens_goes_by_the_models_max_tokens_field() -> None:
    body = {"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]}
    assert anthropic_request_to_openai(body, "llama", "max_tokens")["max_tokens"] == 256


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Be brief.", "Be brief."),
        (
            [
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Cite sources.", "cache_control": {"type": "ephemeral"}},
            ],
            "Be brief.\n\nCite sources.",
        ),
    ],
)
def test_system_becomes_the_first_system_message(system: Any, expected: str) -> None:
    messages = to_openai(system=system)["messages"]
    assert messages[0] == {"role": "system", "content": expected}
    assert messages[1] == {"role": "user", "content": "hi"}


def test_text_and_image_blocks_become_content_parts() -> None:
    out = to_openai(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                ],
            }
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_tool_use_and_tool_results_become_tool_calls_and_tool_messages() -> None:
    out = to_openai(
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "two calls", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "text", "text": "service"},
                            {"type": "text", "text": "down"},
                        ],
                        "is_error": True,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[ANTHROPIC_TOOL],
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: service\ndown"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert out["tools"] == [OPENAI_TOOL]


def test_tool_only_assistant_turn_has_null_content() -> None:
    out = to_openai(
        messages=[
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "now", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ]
    )
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_t", "type": "function", "function": {"name": "now", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_t", "content": ""},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_anthropic_tool_choice_maps_to_openai(choice: dict[str, Any], expected: Any) -> None:
    out = to_openai(tools=[ANTHROPIC_TOOL], tool_choice=choice)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use_becomes_parallel_tool_calls_false() -> None:
    out = to_openai(
        tools=[ANTHROPIC_TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True}
    )
    assert (out["tool_choice"], out["parallel_tool_calls"]) == ("required", False)


def test_stop_user_and_stream_with_usage_are_carried() -> None:
    out = to_openai(
        stop_sequences=["END", "STOP"],
        metadata={"user_id": "user-42"},
        stream=True,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert out == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 256,
        "stop": ["END", "STOP"],
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "low",
    }


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")],
)
def test_thinking_budget_becomes_reasoning_effort_by_threshold(budget: int, effort: str) -> None:
    out = to_openai(max_tokens=32000, thinking={"type": "enabled", "budget_tokens": budget})
    assert out["reasoning_effort"] == effort
    assert "reasoning_effort" not in to_openai(thinking={"type": "disabled"})


@pytest.mark.parametrize(
    ("effort", "max_tokens", "expected"),
    [
        ("low", None, {"type": "enabled", "budget_tokens": 2048}),
        ("medium", 5000, {"type": "enabled", "budget_tokens": 4999}),
        ("high", None, {"type": "enabled", "budget_tokens": 24576}),
        ("none", None, {"type": "disabled"}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget_under_the_limit(
    effort: str, max_tokens: int | None, expected: dict[str, Any]
) -> None:
    out = to_anthropic(reasoning_effort=effort, max_completion_tokens=max_tokens)
    assert out["thinking"] == expected
    if expected["type"] == "enabled":
        assert out["max_tokens"] > expected["budget_tokens"]
    with pytest.raises(GatewayError) as caught:
        to_anthropic(reasoning_effort="low", max_completion_tokens=1024)
    assert caught.value.param == "reasoning_effort"


def test_response_format_becomes_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    out = to_anthropic(response_format=fmt)
    assert out["tools"] == [
        {"name": "place", "description": "Answer with JSON that follows this schema.",
         "input_schema": schema}
    ]  # fmt: skip
    assert out["tool_choice"] == {"type": "tool", "name": "place"}
    assert to_anthropic(response_format={"type": "json_object"})["tools"][0]["input_schema"] == {
        "type": "object"
    }
    assert "tools" not in to_anthropic(response_format={"type": "text"})
    for bad in ({"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}, {}):
        with pytest.raises(GatewayError) as caught:
            to_anthropic(response_format=bad)
        assert caught.value.param == "response_format"
    with pytest.raises(GatewayError) as caught:
        to_anthropic(response_format=fmt, tools=[OPENAI_TOOL])
    assert caught.value.param == "response_format"


def test_forced_tool_answer_comes_back_as_content() -> None:
    data = anthropic_message(
        content=[{"type": "tool_use", "id": "toolu_9", "name": "place", "input": {"city": "Oslo"}}],
        stop_reason="tool_use",
    )
    out = anthropic_response_to_openai(data, "m", structured="place")
    message = out["choices"][0]["message"]
    assert orjson.loads(message["content"]) == {"city": "Oslo"}
    assert "tool_calls" not in message
    assert out["choices"][0]["finish_reason"] == "stop"


def test_output_format_and_config_become_response_format_and_effort() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = anthropic_request_to_openai(
        {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}],
         "output_format": {"type": "json_schema", "schema": schema}},
        "gpt-x",
    )  # fmt: skip
    assert (
        out["response_format"]
        == to_openai(output_config={"format": {"type": "json_schema", "schema": schema}})[
            "response_format"
        ]
    )
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    out = to_openai(output_config={"effort": "high"})
    assert out["reasoning_effort"] == "high"


def test_sampling_parameters_from_older_anthropic_clients_reach_openai() -> None:
    # The current anthropic SDK cannot send these, but raw HTTP clients and older SDKs do;
    # OpenAI still honours temperature and top_p, and has no top_k.
    body = {
        "model": "m",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "top_p": 0.8,
    }
    out = anthropic_request_to_openai(body, "gpt-x")
    openai_request_ok(out)
    assert out == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 256,
        "temperature": 0.3,
        "top_p": 0.8,
    }
    with pytest.raises(GatewayError) as caught:  # OpenAI has no top_k: refused, not dropped
        anthropic_request_to_openai({**body, "top_k": 40}, "gpt-x")
    assert caught.value.param == "top_k"


@pytest.mark.parametrize(
    "body",
    [
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": PNG,
                                    },
                                }
                            ],
                        }
                    ],
                },
            ]
        },
        {"messages": []},
    ],
)
def test_what_openai_cannot_take_is_refused(body: dict[str, Any]) -> None:
    full = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(GatewayError) as caught:
        anthropic_request_to_openai(full, "gpt-x")
    assert caught.value.status == 400


# -- OpenAI response -> Anthropic response -------------------------------------------------------


def chat_completion(
    message: dict[str, Any], finish_reason: str = "stop", **fields: Any
) -> dict[str, Any]:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-x-2025",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    data.update(fields)
    ChatCompletion.model_validate(data)  # the fixture itself is a real OpenAI completion
    return data


def to_anthropic_response(data: dict[str, Any]) -> dict[str, Any]:
    out = openai_response_to_anthropic(data, "gpt-main/gpt-x")
    Message.model_validate(out)
    return out


def test_text_completion_becomes_a_message() -> None:
    assert to_anthropic_response(chat_completion({"content": "Hello"})) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-main/gpt-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


def test_tool_calls_become_tool_use_blocks_with_decoded_input() -> None:
    message = {
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
        ],
    }
    out = to_anthropic_response(chat_completion(message, "tool_calls"))
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_finish_reason_maps_to_stop_reason(finish_reason: str, stop_reason: str) -> None:
    out = to_anthropic_response(chat_completion({"content": "x"}, finish_reason))
    assert out["stop_reason"] == stop_reason


def test_refusal_becomes_text_with_a_refusal_stop() -> None:
    out = to_anthropic_response(
        chat_completion({"content": None, "refusal": "I can't help with that."})
    )
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_cached_prompt_tokens_become_cache_reads() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 8},
    }
    out = to_anthropic_response(chat_completion({"content": "x"}, usage=usage))
    assert out["usage"] == {
        "input_tokens": 36,
        "output_tokens": 20,
        "cache_read_input_tokens": 64,
        "cache_creation_input_tokens": 0,
    }


def test_model_written_tool_arguments_that_are_not_json_are_malformed() -> None:
    message = {
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
        ]
    }
    with pytest.raises(UpstreamMalformed):
        openai_response_to_anthropic(chat_completion(message, "tool_calls"), "m")


def test_a_completion_without_choices_is_malformed() -> None:
    with pytest.raises(UpstreamMalformed):
        openai_response_to_anthropic({"id": "x", "choices": []}, "m")


# -- round trips ---------------------------------------------------------------------------------


def test_openai_request_survives_a_round_trip_through_anthropic() -> None:
    original = {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        "max_completion_tokens": 100,
        "stop": ["END"],
        "user": "u1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [OPENAI_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    openai_request_ok(original)
    there = openai_request_to_anthropic(original, "claude-x")
    anthropic_request_ok(there)
    back = anthropic_request_to_openai(there, "gpt-x")
    assert back == original


def test_anthropic_request_survives_a_round_trip_through_openai() -> None:
    original = {
        "model": "claude-x",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "text", "text": "And this?"},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                    },
                ],
            },
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "stream": True,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    }
    anthropic_request_ok(original)
    there = anthropic_request_to_openai(original, "gpt-x")
    openai_request_ok(there)
    assert openai_request_to_anthropic(there, "claude-x") == original


def test_responses_survive_round_trips() -> None:
    message = anthropic_message(
        content=[
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
        usage={
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 0,
        },
        model="claude-main/claude-x",
    )
    completion = anthropic_response_to_openai(message, "claude-main/claude-x")
    assert openai_response_to_anthropic(completion, "claude-main/claude-x") == message


# -- Anthropic stream -> OpenAI stream -----------------------------------------------------------


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    """Anthropic's wire bytes for these events (each validated as a real Anthropic event)."""
    out = b""
    for event in events:
        if event["type"] not in ("ping", "error"):
            _ANTHROPIC_EVENT.validate_python(event)
        out += b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    return out


def decode(stream: bytes, piece: int = 7) -> list[SSEEvent]:
    """Split into small pieces the way a network does, then decode."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(stream), piece):
        events.extend(decoder.feed(stream[start : start + piece]))
    return events + decoder.close()


def openai_payloads(out: bytes) -> list[Any]:
    """The client's view: every ``data:`` payload, chunks validated as ChatCompletionChunk."""
    events = decode(out, 1000)
    assert all(event.event is None for event in events)
    payloads: list[Any] = []
    for event in events:
        if event.data == b"[DONE]":
            payloads.append("[DONE]")
            continue
        payload = orjson.loads(event.data)
        if "error" not in payload:
            ChatCompletionChunk.model_validate(payload)
        payloads.append(payload)
    return payloads


def replay_openai(payloads: list[Any]) -> ChatCompletion:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for payload in payloads:
        if payload != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    return state.get_final_completion()


def msg_start(**usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-20250101",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        },
    }


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def json_delta(index: int, fragment: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": fragment},
    }


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def msg_delta(stop_reason: str, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage,
    }


ANTHROPIC_TEXT_STREAM = anthropic_sse(
    msg_start(
        input_tokens=25, cache_read_input_tokens=100, cache_creation_input_tokens=0, output_tokens=1
    ),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    text_delta(0, "Hello"),
    text_delta(0, ", world"),
    block_stop(0),
    msg_delta("end_turn", output_tokens=12),
    {"type": "message_stop"},
)


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-01",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "claude-main/claude-x",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def run_anthropic_stream(
    stream: bytes, *, include_usage: bool
) -> tuple[AnthropicToOpenAIStream, bytes]:
    translator = AnthropicToOpenAIStream(
        "claude-main/claude-x", include_usage, created=1_700_000_000
    )
    out = b""
    for event in decode(stream):
        assert not translator.complete  # only message_stop completes the stream
        out += translator.feed(event)
    assert translator.complete
    return translator, out + translator.finish()


def test_anthropic_text_stream_becomes_openai_chunks_with_a_usage_chunk() -> None:
    translator, out = run_anthropic_stream(ANTHROPIC_TEXT_STREAM, include_usage=True)
    payloads = openai_payloads(out)
    assert payloads == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": ", world"}),
        chunk({}, "stop"),
        {
            "id": "chatcmpl-01",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "claude-main/claude-x",
            "choices": [],
            "usage": {
                "prompt_tokens": 125,
                "completion_tokens": 12,
                "total_tokens": 137,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
        },
        "[DONE]",
    ]
    assert out.endswith(b"data: [DONE]\n\n")
    final = replay_openai(payloads)
    assert final.choices[0].message.content == "Hello, world"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.prompt_tokens == 125
    assert translator.usage == Usage(input_tokens=125, output_tokens=12, cached_input_tokens=100)
    assert translator.output_chars == len("Hello, world")


def test_anthropic_stream_without_usage_request_has_no_usage_chunk() -> None:
    translator, out = run_anthropic_stream(ANTHROPIC_TEXT_STREAM, include_usage=False)
    payloads = openai_payloads(out)
    assert [p for p in payloads if p != "[DONE]" and not p["choices"]] == []
    assert payloads[-1] == "[DONE]"
    assert translator.usage is not None and translator.usage.output_tokens == 12  # still counted


ANTHROPIC_TOOL_STREAM = anthropic_sse(
    msg_start(input_tokens=40, output_tokens=1),
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Two cities."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "sig"},
    },
    block_stop(0),
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    text_delta(1, "Checking."),
    block_stop(1),
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
    },
    json_delta(2, ""),
    json_delta(2, '{"city": '),
    json_delta(2, '"Paris"}'),
    block_stop(2),
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}},
    },
    json_delta(3, '{"city": "Rome"}'),
    block_stop(3),
    msg_delta("tool_use", output_tokens=60),
    {"type": "message_stop"},
)


def test_anthropic_tool_use_stream_becomes_tool_call_deltas() -> None:
    translator, out = run_anthropic_stream(ANTHROPIC_TOOL_STREAM, include_usage=False)
    payloads = openai_payloads(out)
    assert payloads == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    ]
    final = replay_openai(payloads)
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "weather", {"city": "Rome"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert translator.usage == Usage(input_tokens=40, output_tokens=60)
    # Thinking is billed output even though OpenAI clients never see it.
    assert translator.output_chars == len("Two cities.Checking.") + len(
        '{"city": "Paris"}{"city": "Rome"}'
    )


def test_message_delta_usage_overwrites_only_the_counts_it_carries() -> None:
    stream = anthropic_sse(
        msg_start(input_tokens=5, cache_read_input_tokens=50, output_tokens=1),
        msg_delta("end_turn", input_tokens=5, output_tokens=9),  # cache count omitted: it stands
        {
            "type": "message_delta",
            "delta": {"stop_reason": None, "stop_sequence": None},
            "usage": {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 9},
        },  # nulls mean "not reported here", not zero
        {"type": "message_stop"},
    )
    translator, _ = run_anthropic_stream(stream, include_usage=True)
    assert translator.usage == Usage(input_tokens=55, output_tokens=9, cached_input_tokens=50)


def test_a_stream_that_never_gives_a_stop_reason_still_finishes_its_choice() -> None:
    stream = anthropic_sse(
        msg_start(input_tokens=3, output_tokens=1),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        text_delta(0, "ok"),
        block_stop(0),
        {"type": "message_stop"},
    )
    _, out = run_anthropic_stream(stream, include_usage=False)
    payloads = openai_payloads(out)
    assert payloads[-2:] == [chunk({}, "stop"), "[DONE]"]


def test_anthropic_error_event_becomes_an_openai_error_chunk() -> None:
    translator = AnthropicToOpenAIStream("m", True)
    events = decode(
        anthropic_sse(
            msg_start(input_tokens=1, output_tokens=1),
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    out = b"".join(translator.feed(event) for event in events)
    assert openai_payloads(out)[-1] == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}
    }
    assert not translator.complete


def test_malformed_anthropic_event_is_upstream_malformed() -> None:
    translator = AnthropicToOpenAIStream("m", False)
    with pytest.raises(UpstreamMalformed):
        translator.feed(SSEEvent("content_block_delta", b"{not json"))
    with pytest.raises(UpstreamMalformed):
        translator.feed(SSEEvent("content_block_delta", b"[1, 2]"))


# -- OpenAI stream -> Anthropic stream -----------------------------------------------------------


def openai_sse(*chunks: dict[str, Any] | str) -> bytes:
    """OpenAI's wire bytes for these chunks (each validated as a real ChatCompletionChunk)."""
    out = b""
    for item in chunks:
        if isinstance(item, str):
            out += b"data: " + item.encode() + b"\n\n"
            continue
        ChatCompletionChunk.model_validate(item)
        out += b"data: " + orjson.dumps(item) + b"\n\n"
    return out


def upstream_chunk(
    delta: dict[str, Any], finish_reason: str | None = None, **fields: Any
) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": choices,
        **fields,
    }


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": [],
        "usage": usage,
    }


def anthropic_events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The client's view: (event name, payload), each a valid Anthropic stream event."""
    events: list[tuple[str, dict[str, Any]]] = []
    for event in decode(out, 1000):
        payload = orjson.loads(event.data)
        assert event.event == payload["type"]
        if payload["type"] != "error":
            _ANTHROPIC_EVENT.validate_python(payload)
        events.append((event.event, payload))
    return events


def replay_anthropic(events: list[tuple[str, dict[str, Any]]]) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, payload in events:
        event = _ANTHROPIC_EVENT.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


def run_openai_stream(stream: bytes) -> tuple[OpenAIToAnthropicStream, bytes]:
    translator = OpenAIToAnthropicStream("gpt-main/gpt-x")
    out = b"".join(translator.feed(event) for event in decode(stream))
    assert translator.complete
    return translator, out + translator.finish()


START = (
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-main/gpt-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    },
)


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta_event(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def stop_event(index: int) -> tuple[str, dict[str, Any]]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def end_events(stop_reason: str, usage: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_openai_text_stream_becomes_anthropic_events() -> None:
    stream = openai_sse(
        upstream_chunk({"role": "assistant", "content": "", "refusal": None}),
        upstream_chunk({"content": "Hel"}),
        upstream_chunk({"content": "lo"}),
        upstream_chunk({}, "stop"),
        usage_chunk(100, 2, cached=60),
        "[DONE]",
    )
    translator, out = run_openai_stream(stream)
    events = anthropic_events(out)
    usage = {
        "input_tokens": 40,
        "output_tokens": 2,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 0,
    }
    assert events == [
        START,
        block_start(0, {"type": "text", "text": ""}),
        delta_event(0, {"type": "text_delta", "text": "Hel"}),
        delta_event(0, {"type": "text_delta", "text": "lo"}),
        stop_event(0),
        *end_events("end_turn", usage),
    ]
    final = replay_anthropic(events)
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"
    # Anthropic's SDK takes the input counts from message_delta, over message_start's zeros.
    assert (
        final.usage.input_tokens,
        final.usage.cache_read_input_tokens,
        final.usage.output_tokens,
    ) == (40, 60, 2)
    assert translator.usage == Usage(input_tokens=100, output_tokens=2, cached_input_tokens=60)
    assert translator.output_chars == 5


def test_openai_tool_call_stream_becomes_tool_use_blocks() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return upstream_chunk({"tool_calls": [{"index": index, **fields}]})

    stream = openai_sse(
        upstream_chunk({"role": "assistant", "content": None}),
        upstream_chunk({"content": "Checking."}),
        call(0, id="call_1", type="function", function={"name": "weather", "arguments": ""}),
        call(0, function={"arguments": '{"city":'}),
        call(0, function={"arguments": '"Paris"}'}),
        call(
            1,
            id="call_2",
            type="function",
            function={"name": "weather", "arguments": '{"city":"Rome"}'},
        ),
        upstream_chunk({}, "tool_calls"),
        usage_chunk(80, 30),
        "[DONE]",
    )
    translator, out = run_openai_stream(stream)
    events = anthropic_events(out)
    usage = {
        "input_tokens": 80,
        "output_tokens": 30,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert events == [
        START,
        block_start(0, {"type": "text", "text": ""}),
        delta_event(0, {"type": "text_delta", "text": "Checking."}),
        stop_event(0),
        block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
        delta_event(1, {"type": "input_json_delta", "partial_json": '{"city":'}),
        delta_event(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        stop_event(1),
        block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}}),
        delta_event(2, {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'}),
        stop_event(2),
        *end_events("tool_use", usage),
    ]
    final = replay_anthropic(events)
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("text", None),
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {"city": "Rome"}),
    ]
    assert final.stop_reason == "tool_use"
    assert translator.output_chars == len("Checking.") + len('{"city":"Paris"}{"city":"Rome"}')


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_openai_stream_finish_reason_maps_to_stop_reason(
    finish_reason: str, stop_reason: str
) -> None:
    stream = openai_sse(
        upstream_chunk({"content": "x"}), upstream_chunk({}, finish_reason), "[DONE]"
    )
    _, out = run_openai_stream(stream)
    events = anthropic_events(out)
    assert events[-2][1]["delta"]["stop_reason"] == stop_reason
    # Without a usage chunk the counts are unknown: only the required output count is sent.
    assert events[-2][1]["usage"] == {"output_tokens": 0}


def test_openai_stream_ending_after_finish_reason_without_done_is_closed_by_finish() -> None:
    translator = OpenAIToAnthropicStream("gpt-main/gpt-x")
    out = b""
    for event in decode(openai_sse(upstream_chunk({"content": "Hi"}))):
        out += translator.feed(event)
    assert not translator.complete  # no finish_reason yet: cut off mid-answer
    for event in decode(openai_sse(upstream_chunk({}, "length"))):
        out += translator.feed(event)
    # The block closes as soon as the model has finished, not when the stream ends.
    assert out.endswith(b'data: {"type":"content_block_stop","index":0}\n\n')
    assert translator.complete
    out += translator.finish()
    events = anthropic_events(out)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert translator.finish() == b""  # closing twice sends nothing more


def test_tool_calls_reusing_index_zero_with_new_ids_are_separate_blocks() -> None:
    stream = openai_sse(
        upstream_chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}
        ),
        upstream_chunk(
            {"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}
        ),
        upstream_chunk({}, "tool_calls"),
        "[DONE]",
    )
    _, out = run_openai_stream(stream)
    starts = [
        p["content_block"] for name, p in anthropic_events(out) if name == "content_block_start"
    ]
    assert [(b["id"], b["name"]) for b in starts] == [("toolu_a", "f"), ("toolu_b", "g")]


def test_openai_error_chunk_becomes_an_anthropic_error_event() -> None:
    translator = OpenAIToAnthropicStream("m")
    out = translator.feed(
        SSEEvent(None, b'{"error": {"message": "Rate limited", "type": "rate_limit_error"}}')
    )
    assert anthropic_events(out) == [
        (
            "error",
            {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}},
        )
    ]
    out = translator.feed(SSEEvent(None, b'{"error": {"message": "boom", "type": "server_error"}}'))
    assert anthropic_events(out)[0][1]["error"]["type"] == "api_error"
    assert not translator.complete


def test_malformed_openai_chunk_is_upstream_malformed() -> None:
    with pytest.raises(UpstreamMalformed):
        OpenAIToAnthropicStream("m").feed(SSEEvent(None, b"data is not json"))

"""OpenAI and Azure OpenAI wire format: chat completions (JSON and SSE), embeddings, errors."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from .content import (
    DEFAULT_DIMENSIONS,
    MAX_DIMENSIONS,
    Reply,
    embedding_input_tokens,
    embedding_vector,
    float32_le_bytes,
    openai_message_texts,
    prompt_tokens_openai,
    split_evenly,
    text_pieces,
    text_reply,
    tool_reply,
)
from .knobs import BadRequest, Knobs

#: ``created`` of every response: a constant, so identical requests give identical bytes.
CREATED = 1_700_000_000
_FINGERPRINT = "fp_mock"

# ------------------------------------------------------------------------------- errors

# status -> (OpenAI error type, code, message); what api.openai.com answers for each status.
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden (mock)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (mock)."),
    408: ("timeout", None, "Request timed out (mock)."),
    409: ("invalid_request_error", "conflict", "Conflict (mock)."),
    422: ("invalid_request_error", None, "Unprocessable entity (mock)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."),
    500: ("server_error", None, "The server had an error while processing your request (mock)."),
    502: ("server_error", None, "Bad gateway (mock)."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("timeout", None, "Gateway timeout (mock)."),
}


def openai_error(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` for ``status``."""
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    kind, default_code, default_message = _OPENAI_ERRORS.get(status, fallback)
    error = {
        "message": message or default_message,
        "type": kind,
        "param": param,
        "code": code or default_code,
    }
    return orjson.dumps({"error": error})


def azure_error(status: int, message: str | None = None, *, code: str | None = None) -> bytes:
    """Azure's shape, ``{"error": {"code", "message"}}`` (plus OpenAI's fields, as Azure often
    includes them), with the status as a string code like Azure's gateway uses."""
    kind, _, default_message = _OPENAI_ERRORS.get(status, ("server_error", None, "Error (mock)."))
    if status == 401:
        default_message = (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource."
        )
    error = {
        "code": code or str(status),
        "message": message or default_message,
        "type": kind,
        "param": None,
    }
    return orjson.dumps({"error": error})


# --------------------------------------------------------------------------------- chat


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """One chat completion, decided: everything the JSON and the stream are built from."""

    id: str
    model: str
    reply: Reply
    prompt_tokens: int
    stream: bool
    include_usage: bool
    azure: bool


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"Invalid '{name}': expected an integer >= 1.", name)
        return value
    return None


def _chosen_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    """The tool to call: the one ``tool_choice`` names, else the first; None for no tool."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and "function" in t]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    wanted = None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
    for tool in tools:
        function = tool["function"]
        if wanted is None or function.get("name") == wanted:
            return str(function.get("name", "")), function.get("parameters")
    function = tools[0]["function"]
    return str(function.get("name", "")), function.get("parameters")


def plan_chat(
    body: dict[str, Any], model: str, knobs: Knobs, digest: str, *, azure: bool
) -> ChatPlan:
    """Validate a chat request and decide the reply (raises BadRequest)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise BadRequest("Invalid 'messages': expected a non-empty array of objects.", "messages")
    last = messages[-1]
    role = last.get("role")
    tool = _chosen_tool(body) if role == "user" else None
    max_tokens = _max_tokens(body)
    if tool is not None:
        reply = tool_reply(*tool)
    else:
        prompt = " ".join(openai_message_texts(last))
        reply = text_reply(
            prompt,
            tool_result=role == "tool",
            words=knobs.words,
            max_tokens=max_tokens,
            echo=knobs.echo,
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatPlan(
        id="chatcmpl-" + digest,
        model=model,
        reply=reply,
        prompt_tokens=prompt_tokens_openai(body),
        stream=body.get("stream") is True,
        include_usage=include_usage,
        azure=azure,
    )


def _finish_reason(reply: Reply) -> str:
    if reply.tool_call is not None:
        return "tool_calls"
    return "length" if reply.truncated else "stop"


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


_SAFE = {"filtered": False, "severity": "safe"}
_AZURE_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_AZURE_PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}]


def _tool_call_id(plan: ChatPlan) -> str:
    return "call_" + plan.id.removeprefix("chatcmpl-")


def chat_json(plan: ChatPlan) -> bytes:
    """The non-streaming ``chat.completion`` object."""
    reply = plan.reply
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.tool_call else reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_call is not None:
        message["tool_calls"] = [
            {
                "id": _tool_call_id(plan),
                "type": "function",
                "function": {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments},
            }
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _finish_reason(reply),
    }
    result: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion",
        "created": CREATED,
        "model": plan.model,
        "choices": [choice],
        "usage": usage_object(plan.prompt_tokens, reply.output_tokens),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    if plan.azure:
        choice["content_filter_results"] = _AZURE_FILTERS
        result["prompt_filter_results"] = _AZURE_PROMPT_FILTERS
    return orjson.dumps(result)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
_GARBAGE_EVENT = b'data: {"id": "chatcmpl-mock", "choices": [{"delta": <garbage>\n\n'


def _deltas(plan: ChatPlan, chunks: int) -> list[dict[str, Any]]:
    """The ``delta`` of every choice-carrying chunk, first (role) to last (empty)."""
    call = plan.reply.tool_call
    if call is None:
        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        pieces = text_pieces(plan.reply.words, chunks)
        return [first, *({"content": piece} for piece in pieces), {}]
    opening = {
        "index": 0,
        "id": _tool_call_id(plan),
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    first = {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
    fragments = split_evenly(call.arguments, chunks)
    rest = [{"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in fragments]
    return [first, *rest, {}]


def chat_events(plan: ChatPlan, knobs: Knobs) -> list[bytes]:
    """Every SSE event of a streamed completion, ``data: [DONE]`` included."""
    base: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    if plan.include_usage:
        base["usage"] = None  # OpenAI puts an explicit null on every chunk but the last
    events: list[bytes] = []
    if plan.azure:
        # Azure opens every stream with a choice-less chunk carrying the prompt filter results.
        azure_first = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        events.append(_sse({**azure_first, "prompt_filter_results": _AZURE_PROMPT_FILTERS}))
    deltas = _deltas(plan, knobs.chunks)
    for i, delta in enumerate(deltas):
        last = i == len(deltas) - 1
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": _finish_reason(plan.reply) if last else None,
        }
        if plan.azure:
            choice["content_filter_results"] = _AZURE_FILTERS if i else {}
        events.append(_sse({**base, "choices": [choice]}))
    if plan.include_usage and not knobs.no_usage:
        usage = usage_object(plan.prompt_tokens, plan.reply.output_tokens)
        events.append(_sse({**base, "choices": [], "usage": usage}))
    if knobs.malformed:
        events.insert(min(2, len(events)), _GARBAGE_EVENT)
    events.append(SSE_DONE)
    return events


MALFORMED_JSON = b'{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [<garbage'

# --------------------------------------------------------------------------- embeddings


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    """Normalise ``input``: a string, a token array, or a list of either (raises BadRequest)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(x, int) for x in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise BadRequest("'$.input' is invalid: expected a non-empty string or array.", "input")
    for item in items:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, list) and item and all(type(x) is int for x in item):
            continue
        raise BadRequest("'$.input' is invalid: empty or wrongly typed item.", "input")
    return items


def _dimensions(body: dict[str, Any]) -> int:
    value = body.get("dimensions")
    if value is None:
        return DEFAULT_DIMENSIONS
    if type(value) is not int or not 1 <= value <= MAX_DIMENSIONS:
        raise BadRequest(f"Invalid 'dimensions': expected 1..{MAX_DIMENSIONS}.", "dimensions")
    return value


def embeddings_json(body: dict[str, Any], model: str) -> bytes:
    """The ``list`` of embeddings, float or base64 (little-endian float32) encoded."""
    items = _embedding_inputs(body.get("input"))
    dimensions = _dimensions(body)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        message = "Invalid 'encoding_format': expected 'float' or 'base64'."
        raise BadRequest(message, "encoding_format")
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(item, dimensions)
        encoded: Any = (
            base64.b64encode(float32_le_bytes(vector)).decode()
            if encoding == "base64"
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(embedding_input_tokens(item) for item in items)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


# ------------------------------------------------------------------------------- models

OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "mock-model")


def models_json(models: tuple[str, ...] = OPENAI_MODELS) -> bytes:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "mock"} for m in models]
    return orjson.dumps({"object": "list", "data": data})


def model_json(model: str) -> bytes:
    return orjson.dumps({"id": model, "object": "model", "created": CREATED, "owned_by": "mock"})

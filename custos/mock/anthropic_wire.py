"""Anthropic Messages wire format: JSON and SSE replies, errors, token counting, models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .content import (
    Reply,
    anthropic_content_texts,
    prompt_tokens_anthropic,
    split_evenly,
    text_pieces,
    text_reply,
    tool_reply,
)
from .knobs import BadRequest, Knobs

# status -> (Anthropic error type, message)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (mock)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Billing error (mock)."),
    403: ("permission_error", "Your API key does not have permission (mock)."),
    404: ("not_found_error", "Not found (mock)."),
    413: ("request_too_large", "Request exceeds the maximum allowed size (mock)."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit (mock)."),
    500: ("api_error", "Internal server error (mock)."),
    503: ("overloaded_error", "Overloaded (mock)."),
    504: ("timeout_error", "Request timed out (mock)."),
    529: ("overloaded_error", "Overloaded (mock)."),
}


def anthropic_error(status: int, message: str | None = None, *, request_id: str = "") -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` for ``status``."""
    kind, default_message = _ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", "Error (mock).")
    )
    error = {"type": kind, "message": message or default_message}
    return orjson.dumps({"type": "error", "error": error, "request_id": request_id or None})


@dataclass(frozen=True, slots=True)
class MessagePlan:
    """One Messages API reply, decided."""

    id: str
    model: str
    reply: Reply
    input_tokens: int
    stream: bool


def _chosen_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and "name" in t]
    choice = body.get("tool_choice")
    choice = choice if isinstance(choice, dict) else {}
    if not tools or choice.get("type") == "none":
        return None
    wanted = choice.get("name") if choice.get("type") == "tool" else None
    tool = next((t for t in tools if t["name"] == wanted), tools[0])
    return str(tool["name"]), tool.get("input_schema")


def _is_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _validate(body: dict[str, Any]) -> tuple[list[Any], int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise BadRequest("messages: at least one message is required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: Input should be an integer greater than or equal to 1")
    return messages, max_tokens


def plan_message(body: dict[str, Any], model: str, knobs: Knobs, digest: str) -> MessagePlan:
    """Validate a Messages request and decide the reply (raises BadRequest)."""
    messages, max_tokens = _validate(body)
    last = messages[-1]
    content = last.get("content", "")
    tool_result = _is_tool_result(content)
    tool = _chosen_tool(body) if last.get("role") == "user" and not tool_result else None
    if tool is not None:
        reply = tool_reply(*tool)
    else:
        prompt = " ".join(anthropic_content_texts(content))
        reply = text_reply(
            prompt,
            tool_result=tool_result,
            words=knobs.words,
            max_tokens=max_tokens,
            echo=knobs.echo,
        )
    return MessagePlan(
        id="msg_" + digest,
        model=model,
        reply=reply,
        input_tokens=prompt_tokens_anthropic(body),
        stream=body.get("stream") is True,
    )


def _stop_reason(reply: Reply) -> str:
    if reply.tool_call is not None:
        return "tool_use"
    return "max_tokens" if reply.truncated else "end_turn"


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _tool_use_id(plan: MessagePlan) -> str:
    return "toolu_" + plan.id.removeprefix("msg_")


def _content_block(plan: MessagePlan) -> dict[str, Any]:
    call = plan.reply.tool_call
    if call is None:
        return {"type": "text", "text": plan.reply.text}
    arguments = orjson.loads(call.arguments)
    return {"type": "tool_use", "id": _tool_use_id(plan), "name": call.name, "input": arguments}


def _message(plan: MessagePlan, content: list[Any], stop: str | None, usage: Any) -> dict[str, Any]:
    return {
        "id": plan.id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def message_json(plan: MessagePlan) -> bytes:
    """The non-streaming ``message`` object."""
    usage = _usage(plan.input_tokens, plan.reply.output_tokens)
    return orjson.dumps(_message(plan, [_content_block(plan)], _stop_reason(plan.reply), usage))


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


_GARBAGE_EVENT = b'event: content_block_delta\ndata: {"type": "content_block_delta", <garbage>\n\n'


def _block_events(plan: MessagePlan, chunks: int) -> list[bytes]:
    """content_block_start, ping, the deltas, content_block_stop of the single block."""
    call = plan.reply.tool_call
    if call is None:
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in text_pieces(plan.reply.words, chunks)]
    else:
        start = {"type": "tool_use", "id": _tool_use_id(plan), "name": call.name, "input": {}}
        fragments = split_evenly(call.arguments, chunks)
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
    opening = {"type": "content_block_start", "index": 0, "content_block": start}
    events = [
        _sse("content_block_start", opening),
        _sse("ping", {"type": "ping"}),
    ]
    events += [
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
        for d in deltas
    ]
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    return events


def message_events(plan: MessagePlan, knobs: Knobs) -> list[bytes]:
    """Every SSE event of a streamed message, message_start to message_stop.

    With ``no_usage`` the format still requires ``usage`` objects, so input_tokens stays in
    message_start and output_tokens is 0 everywhere (real Anthropic never reports 0 for a
    non-empty reply, so a consumer can tell it apart).
    """
    output_tokens = 0 if knobs.no_usage else plan.reply.output_tokens
    # Like Anthropic, message_start reports a provisional output count of 1; message_delta
    # carries the cumulative total, which replaces it.
    start_usage = _usage(plan.input_tokens, 0 if knobs.no_usage else 1)
    start = {"type": "message_start", "message": _message(plan, [], None, start_usage)}
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(plan.reply), "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    events = [
        _sse("message_start", start),
        *_block_events(plan, knobs.chunks),
        _sse("message_delta", delta),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    if knobs.malformed:
        events.insert(min(4, len(events)), _GARBAGE_EVENT)
    return events


MALFORMED_JSON = b'{"id": "msg_mock", "type": "message", "content": [<garbage'


def count_tokens_json(body: dict[str, Any]) -> bytes:
    """``POST /v1/messages/count_tokens``: the input tokens a Messages call would report."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    return orjson.dumps({"input_tokens": prompt_tokens_anthropic(body)})


ANTHROPIC_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")


def models_json(models: tuple[str, ...] = ANTHROPIC_MODELS) -> bytes:
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in models
    ]
    return orjson.dumps(
        {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}
    )

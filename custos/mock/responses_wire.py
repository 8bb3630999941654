"""The OpenAI Responses API wire format (``POST /v1/responses``): the Response object and its
typed stream events (``event: <type>`` with ``data`` carrying the same ``type`` and a
``sequence_number``; no ``[DONE]``: the stream ends after the terminal event)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .content import PER_MESSAGE_TOKENS, Reply, count_tokens, split_evenly, text_pieces
from .content import text_reply as make_text_reply
from .content import tool_reply as make_tool_reply
from .knobs import BadRequest, Knobs
from .openai_wire import CREATED


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """One response, decided: everything the JSON and the stream are built from."""

    id: str
    model: str
    reply: Reply
    input_tokens: int
    stream: bool
    request: dict[str, Any]


def _item_texts(item: dict[str, Any]) -> list[str]:
    """The strings of one input item that count towards input tokens."""
    kind = item.get("type", "message")
    if kind == "function_call":
        return [str(item.get("name", "")), str(item.get("arguments", ""))]
    if kind == "function_call_output":
        output = item.get("output")
        return [output] if isinstance(output, str) else _part_texts(output)
    return _part_texts(item.get("content"))


def _part_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return texts


def input_tokens_responses(body: dict[str, Any]) -> int:
    """``input`` as chat messages count: ``4 + tokens`` per item (a string input is one user
    item), and non-empty ``instructions`` as one more item."""
    value = body.get("input")
    items = [{"content": value}] if isinstance(value, str) else value
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        total += PER_MESSAGE_TOKENS + count_tokens(instructions)
    for item in items or ():
        if isinstance(item, dict):
            total += PER_MESSAGE_TOKENS + sum(count_tokens(t) for t in _item_texts(item))
    return total


def _function_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    tools = [
        t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    wanted = choice.get("name") if isinstance(choice, dict) else None
    chosen = next((t for t in tools if wanted is None or t.get("name") == wanted), tools[0])
    return str(chosen.get("name", "")), chosen.get("parameters")


def plan_response(body: dict[str, Any], model: str, knobs: Knobs, digest: str) -> ResponsePlan:
    """Validate a Responses request and decide the reply (raises BadRequest)."""
    value = body.get("input")
    if isinstance(value, str):
        last: dict[str, Any] = {"type": "message", "role": "user", "content": value}
    elif isinstance(value, list) and value and isinstance(value[-1], dict):
        last = value[-1]
    else:
        raise BadRequest("Invalid 'input': expected a string or a non-empty array.", "input")
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 16):
        raise BadRequest(
            "Invalid 'max_output_tokens': expected an integer >= 16.", "max_output_tokens"
        )
    kind = last.get("type", "message")
    tool = _function_tool(body) if kind == "message" and last.get("role") == "user" else None
    if tool is not None:
        reply = make_tool_reply(*tool)
    else:
        prompt = " ".join(_item_texts(last))
        reply = make_text_reply(
            prompt,
            tool_result=kind == "function_call_output",
            words=knobs.words,
            max_tokens=max_tokens,
            echo=knobs.echo,
        )
    return ResponsePlan(
        id="resp_" + digest,
        model=model,
        reply=reply,
        input_tokens=input_tokens_responses(body),
        stream=body.get("stream") is True,
        request=body,
    )


def usage_object(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _suffix(plan: ResponsePlan) -> str:
    return plan.id.removeprefix("resp_")


def _output_item(plan: ResponsePlan, *, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    call = plan.reply.tool_call
    if call is not None:
        return {
            "type": "function_call",
            "id": "fc_" + _suffix(plan),
            "call_id": "call_" + _suffix(plan),
            "name": call.name,
            "arguments": call.arguments if done else "",
            "status": status,
        }
    part = {"type": "output_text", "text": plan.reply.text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": "msg_" + _suffix(plan),
        "status": status,
        "role": "assistant",
        "content": [part] if done else [],
    }


def _response(plan: ResponsePlan, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    request = plan.request
    truncated = status == "incomplete"
    return {
        "id": plan.id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": plan.model,
        "output": [_output_item(plan, done=True)] if status != "in_progress" else [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": request.get("metadata") or {},
    }


def _final_status(plan: ResponsePlan) -> str:
    return "incomplete" if plan.reply.truncated else "completed"


def response_json(plan: ResponsePlan) -> bytes:
    usage = usage_object(plan.input_tokens, plan.reply.output_tokens)
    return orjson.dumps(_response(plan, _final_status(plan), usage))


def _event(kind: str, sequence: int, payload: dict[str, Any]) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": sequence, **payload})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _content_events(plan: ResponsePlan, chunks: int) -> list[tuple[str, dict[str, Any]]]:
    """The events between ``output_item.added`` and ``output_item.done``."""
    where = {"item_id": _output_item(plan, done=False)["id"], "output_index": 0}
    call = plan.reply.tool_call
    if call is not None:
        deltas = [("response.function_call_arguments.delta", {**where, "delta": piece})
                  for piece in split_evenly(call.arguments, chunks)]  # fmt: skip
        done = {**where, "name": call.name, "arguments": call.arguments}
        return [*deltas, ("response.function_call_arguments.done", done)]
    text = plan.reply.text
    at = {**where, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.content_part.added", {**at, "part": empty})
    ]
    for piece in text_pieces(plan.reply.words, chunks):
        events.append(("response.output_text.delta", {**at, "delta": piece, "logprobs": []}))
    events.append(("response.output_text.done", {**at, "text": text, "logprobs": []}))
    events.append(("response.content_part.done", {**at, "part": {**empty, "text": text}}))
    return events


MALFORMED_EVENT = (
    b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", <garbage\n\n'
)


def response_events(plan: ResponsePlan, knobs: Knobs) -> list[bytes]:
    """Every SSE event of a streamed response, ``response.created`` to the terminal one."""
    status = _final_status(plan)
    usage = None if knobs.no_usage else usage_object(plan.input_tokens, plan.reply.output_tokens)
    opening = _response(plan, "in_progress", None)
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": opening}),
        ("response.in_progress", {"response": opening}),
        ("response.output_item.added", {"output_index": 0, "item": _output_item(plan, done=False)}),
        *_content_events(plan, knobs.chunks),
        ("response.output_item.done", {"output_index": 0, "item": _output_item(plan, done=True)}),
        (f"response.{status}", {"response": _response(plan, status, usage)}),
    ]
    events = [_event(kind, i, payload) for i, (kind, payload) in enumerate(steps)]
    if knobs.malformed:
        events.insert(min(3, len(events)), MALFORMED_EVENT)
    return events


MALFORMED_JSON = b'{"id": "resp_mock", "object": "response", "output": [<garbage'

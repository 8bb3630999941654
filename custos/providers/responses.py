"""The OpenAI Responses API (``POST /v1/responses``): relayed to OpenAI-format accounts,
translated to Anthropic Messages for Anthropic accounts.

OpenAI-format accounts receive the body as sent (the model renamed), and their answer and typed
stream events come back with the caller's model name; usage is read from the response's
``usage`` (``response.completed`` when streaming).

Towards Anthropic, every request field is either mapped or refused with a 400 that names it:
nothing is dropped. The fields that need state kept by the provider (``previous_response_id``,
``conversation``, ``background``, ``store: true``, ``prompt``) have no Anthropic counterpart; an
OpenAI-format account keeps that state itself, so those fields pass only when the request goes
to exactly one OpenAI-format account (``check_state``).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from custos.errors import GatewayError, bad_request
from custos.providers.base import ChainedStreamTranslator, StreamTranslator, renamed_model
from custos.providers.sse import SSEDecoder, SSEEvent, encode_event
from custos.providers.translate import (
    DEFAULT_MAX_TOKENS,
    _content_blocks,
    _request_arguments,
    load_object,
    merge_anthropic_usage,
    usage_from_anthropic,
)
from custos.wire import ApiProtocol, Usage


class NamedModel(Protocol):
    """What ``check_state`` needs of the model a request names (routing's ``ModelRoute``): the
    name, and whether it is a virtual model. Stated here so the provider layer does not depend on
    routing."""

    @property
    def name(self) -> str: ...

    @property
    def virtual(self) -> bool: ...


#: Fields that only mean something to a provider that keeps responses server-side.
STATEFUL_FIELDS = ("previous_response_id", "conversation", "background", "prompt")

#: The response objects carried by the stream's lifecycle events (their ``model`` is renamed).
_LIFECYCLE = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _stateful(body: dict[str, Any]) -> str | None:
    for field in STATEFUL_FIELDS:
        value = body.get(field)
        if value is not None and value is not False:
            return field
    return None


def check_state(body: dict[str, Any], route: NamedModel) -> None:
    """Refuse the fields that need state one account keeps on a model that may route to
    another (the translated targets refuse them in ``request_to_anthropic``)."""
    field = _stateful(body)
    if field is not None and route.virtual:
        raise bad_request(
            f"'{field}' refers to state kept by one provider account, and '{route.name}' is a "
            "virtual model that may route to another; call the account's model directly "
            "(account/model).",
            param=field,
        )


# -- usage ---------------------------------------------------------------------------------------


def usage_from_responses(data: Any) -> Usage | None:
    """Normalise a Responses ``usage`` (its ``input_tokens`` include cached tokens and its
    ``output_tokens`` reasoning tokens, as ``Usage`` counts them)."""
    if not isinstance(data, dict) or not _is_int(data.get("input_tokens")):
        return None
    input_details = data.get("input_tokens_details") or {}
    output_details = data.get("output_tokens_details") or {}
    return Usage(
        input_tokens=data["input_tokens"],
        output_tokens=_int(data.get("output_tokens")),
        cached_input_tokens=_int(input_details.get("cached_tokens")),
        reasoning_tokens=_int(output_details.get("reasoning_tokens")),
    )


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if _is_int(value) else 0


def error_event(sequence: int, code: str | None, message: str, param: str | None = None) -> bytes:
    """The Responses stream's ``error`` event."""
    payload = {
        "type": "error",
        "sequence_number": sequence,
        "code": code,
        "message": message,
        "param": param,
    }
    return encode_event(orjson.dumps(payload), "error")


# -- OpenAI-format accounts: the stream relayed ---------------------------------------------------


class ResponsesPassthroughStream(StreamTranslator):
    """Forwards the typed events as they come; the response objects of the lifecycle events
    name the model the caller asked for, and the terminal one's usage is noted."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.output_chars = 0
        #: The number the next event would carry (the gateway's own error event takes it).
        self._next_sequence = 0

    def feed(self, event: SSEEvent) -> bytes:
        data = load_object(event.data)
        kind = data.get("type")
        raw = event.data
        if kind in _LIFECYCLE:
            response = data.get("response")
            if isinstance(response, dict):
                raw = renamed_model(raw, response, self.model, data)
                if kind in _TERMINAL:
                    self.usage = usage_from_responses(response.get("usage"))
                    # A failed response is the provider's error, relayed as its own event:
                    # the stream ends there, and the request is not recorded as served.
                    self.upstream_error = kind == "response.failed"
                    self._done = not self.upstream_error
        elif kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            delta = data.get("delta")
            self.output_chars += len(delta) if isinstance(delta, str) else 0
        elif kind == "error":
            self.upstream_error = True
        sequence = data.get("sequence_number")
        if _is_int(sequence):
            self._next_sequence = sequence + 1
        return encode_event(raw, event.event or (kind if isinstance(kind, str) else None))

    def error_event(self, protocol: ApiProtocol, err: GatewayError) -> bytes:
        return error_event(self._next_sequence, err.code, err.message, err.param)

    def finish(self) -> bytes:
        return b""


# -- Responses request -> Anthropic Messages request ----------------------------------------------

#: Fields mapped to Anthropic, each by its own rule below.
_MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream",
        "text",
        "reasoning",
        "user",
        "safety_identifier",
    }
)
#: Fields accepted at the value that means "nothing asked", refused at any other.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "store": (None, False),
    "background": (None, False),
    "include": (None, []),
    "metadata": (None, {}),
    "truncation": (None, "disabled"),
    "service_tier": (None, "auto", "default"),
    "stream_options": (None, {}),
}
#: Asking for a reasoning summary: Anthropic's thinking text, which its current models already
#: summarise, is returned as the summary instead of as reasoning content.
_SUMMARIES = (None, "auto", "concise", "detailed")
#: Anthropic's thinking budget for each reasoning effort (``none``/``minimal``: no thinking).
_THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
_WHY = "an Anthropic model"


def _refuse(field: str, reason: str) -> Exception:
    return bad_request(f"'{field}' cannot be sent to {_WHY}: {reason}.", param=field)


def request_to_anthropic(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages request for a Responses request (raises a 400 naming the first
    field that does not map)."""
    for field, value in body.items():
        if field in _MAPPED:
            continue
        if field in _NEUTRAL:
            if value not in _NEUTRAL[field]:
                raise _refuse(field, "Anthropic keeps no responses and has no such option")
            continue
        if field in STATEFUL_FIELDS:
            raise _refuse(
                field, "it needs a response kept by OpenAI, which Anthropic does not keep"
            )
        raise _refuse(field, "it has no Anthropic counterpart")
    system, messages = _messages(body.get("input"))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        system.insert(0, {"type": "text", "text": instructions})
    out: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_output_tokens")
    out["max_tokens"] = max_tokens if _is_int(max_tokens) else DEFAULT_MAX_TOKENS
    if system:
        out["system"] = system
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    out.update(_tools(body))
    _text_format(body.get("text"))
    thinking = _thinking(body.get("reasoning"), out["max_tokens"])
    if thinking is not None:
        out["thinking"] = thinking
    return out


def request_through_anthropic(body: dict[str, Any], model: str, target: str) -> dict[str, Any]:
    """``request_to_anthropic`` for a provider reached through the Anthropic translation (Gemini,
    Bedrock): its refusals name that provider, whose request the caller asked for. Neither can
    be held to one tool call at a time, which Anthropic's ``disable_parallel_tool_use`` asks:
    ``parallel_tool_calls: false`` is refused here, by the name the caller sent."""
    if body.get("parallel_tool_calls") is False:
        raise bad_request(
            f"'parallel_tool_calls' cannot be false for a {target} model: it cannot be held to "
            "one tool call at a time.",
            param="parallel_tool_calls",
        )
    try:
        return request_to_anthropic(body, model)
    except GatewayError as err:
        err.message = err.message.replace(_WHY, f"a {target} model").replace("Anthropic", target)
        err.args = (err.message,)
        raise


def _messages(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) of ``input``: consecutive items of one role become one
    message, as Anthropic wants tool results answering one turn together."""
    if isinstance(value, str):
        return [], [{"role": "user", "content": value}]
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value or ()):
        where = f"input[{index}]"
        role, blocks = _item_blocks(item, where)
        if role == "system":
            system.extend(blocks)
        elif messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return system, messages


def _item_blocks(item: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad_request(f"{where}.role must be user, assistant, system or developer", where)
        role = "system" if role == "developer" else role
        return role, _content(item.get("content"), where, images=role == "user")
    if kind == "function_call":
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise bad_request(f"{where} needs a string call_id and name", param=where)
        arguments = _request_arguments(item.get("arguments"), f"{where}.arguments")
        return "assistant", [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}]
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise bad_request(f"{where}.call_id must be a string", param=f"{where}.call_id")
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        output = item.get("output")
        content = output if isinstance(output, str) else _content(output, where, images=True)
        if content:
            block["content"] = content
        return "user", [block]
    raise _refuse(f"{where}.type", f"input items of type {kind!r} have no Anthropic counterpart")


#: Responses content part types -> (chat part type, the key holding its value).
_PARTS = {
    "input_text": ("text", "text"),
    "output_text": ("text", "text"),
    "refusal": ("refusal", "refusal"),
    "input_image": ("image_url", "image_url"),
}


def _content(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    """Anthropic blocks of a Responses ``content``, by way of the chat translation's rules
    (its parts renamed to chat's); a part type neither has is refused naming it."""
    if isinstance(content, list):
        renamed = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _PARTS:
                raise _refuse(
                    f"{where}.content[{j}]",
                    f"content parts of type {kind!r} have no Anthropic counterpart",
                )
            chat_kind, key = _PARTS[kind]
            renamed.append({"type": chat_kind, chat_kind: part.get(key)})
        content = renamed
    return _content_blocks(content, where, images=images)


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and tools:
        out["tool_choice"] = choice
    elif choice is not None and choice["type"] != "auto":
        raise bad_request("'tool_choice' needs 'tools'", param="tool_choice")
    return out


def _tool(tool: Any, where: str) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise _refuse(
            f"{where}.type", f"built-in tools ({kind!r}) run at OpenAI; only function tools map"
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.name must be a non-empty string", param=f"{where}.name")
    out: dict[str, Any] = {
        "name": name,
        "input_schema": tool.get("parameters") or {"type": "object"},
    }
    if isinstance(tool.get("description"), str):
        out["description"] = tool["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return None if choice is None else {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise _refuse("tool_choice", "only auto, required, none and a function tool map")


def _text_format(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise bad_request("'text' must be an object", param="text")
    for key, value in text.items():
        if key == "format" and (value is None or value == {"type": "text"}):
            continue
        if key == "verbosity" and value is None:
            continue
        raise _refuse(
            f"text.{key}",
            "structured output and verbosity are not translated (call an OpenAI model, or "
            "describe the format in the instructions)",
        )


def _thinking(reasoning: Any, max_tokens: int) -> dict[str, Any] | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise bad_request("'reasoning' must be an object", param="reasoning")
    for key in reasoning:
        if key not in ("effort", "summary"):
            raise _refuse(f"reasoning.{key}", "only the effort and the summary map")
    if reasoning.get("summary") not in _SUMMARIES:
        raise bad_request(
            "'reasoning.summary' must be auto, concise or detailed", param="reasoning.summary"
        )
    effort = reasoning.get("effort")
    if effort in (None, "none", "minimal"):
        return None
    budget = _THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise bad_request(
            "'reasoning.effort' must be none, minimal, low, medium, high or xhigh",
            param="reasoning.effort",
        )
    if budget >= max_tokens:
        raise bad_request(
            f"'reasoning.effort' {effort!r} is a thinking budget of {budget} tokens towards "
            f"{_WHY}, which needs 'max_output_tokens' above it",
            param="max_output_tokens",
        )
    return {"type": "enabled", "budget_tokens": budget}


# -- Anthropic Messages response -> Response ------------------------------------------------------


def _response_id(message_id: Any) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) else ""
    return "resp_" + (suffix or f"{time.time_ns():x}")


def _shell(request: dict[str, Any], response_id: str, model: str, created: int) -> dict[str, Any]:
    """The fields of a Response object that echo the request."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {
            "effort": (request.get("reasoning") or {}).get("effort"),
            "summary": (request.get("reasoning") or {}).get("summary"),
        },
        "store": False,
        "temperature": request.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": {},
    }


def _finished(response: dict[str, Any], stop_reason: Any, usage: Usage | None) -> None:
    if stop_reason == "max_tokens":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif stop_reason == "refusal":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
    response["usage"] = responses_usage(usage) if usage is not None else None


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _summarized(request: dict[str, Any]) -> bool:
    reasoning = request.get("reasoning")
    return isinstance(reasoning, dict) and reasoning.get("summary") is not None


def _reasoning_item(item_id: str, text: str, *, summarized: bool) -> dict[str, Any]:
    """A thinking block as a reasoning item: its text as the summary when one was asked for,
    else as reasoning content."""
    kind = "summary_text" if summarized else "reasoning_text"
    parts = [{"type": kind, "text": text}] if text else []
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": parts if summarized else [],
        "content": [] if summarized else parts,
    }


def _item_id(prefix: str, base: str, index: int) -> str:
    return f"{prefix}_{base}_{index}"


def response_from_anthropic(
    data: dict[str, Any], request: dict[str, Any], model: str
) -> dict[str, Any]:
    """The Response object for an Anthropic message."""
    response_id = _response_id(data.get("id"))
    base = response_id.removeprefix("resp_")
    response = _shell(request, response_id, model, int(time.time()))
    output: list[dict[str, Any]] = []
    for index, block in enumerate(data.get("content") or ()):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            output.append(_message_item(_item_id("msg", base, index), block["text"], "completed"))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            item_id = _item_id("fc", base, index)
            output.append(_call_item(item_id, block["id"], block["name"], arguments, "completed"))
        elif kind == "thinking":
            item_id, thought = _item_id("rs", base, index), block.get("thinking", "")
            output.append(_reasoning_item(item_id, thought, summarized=_summarized(request)))
    response["output"] = output
    _finished(response, data.get("stop_reason"), usage_from_anthropic(data.get("usage")))
    return response


# -- Anthropic stream -> Responses stream ---------------------------------------------------------


class AnthropicToResponsesStream(StreamTranslator):
    """Anthropic Messages events as the Responses API's typed events: one output item per
    content block (a message for text, a function call for a tool use, a reasoning item for
    thinking), the response object at the start and, with usage, at the end."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.request = request
        self.model = model
        self._summarized = _summarized(request)
        self.usage: Usage | None = None
        self.output_chars = 0
        self._totals: dict[str, int] = {}
        self._sequence = 0
        self._response: dict[str, Any] | None = None
        self._base = ""
        #: Anthropic block index -> (output index, the item being built, its text so far).
        self._open: dict[int, tuple[int, dict[str, Any], list[str]]] = {}
        self._stop_reason: Any = None

    def feed(self, event: SSEEvent) -> bytes:
        data = load_object(event.data)
        kind = data.get("type")
        if kind == "message_start":
            return self._start(data.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta") or {})
        if kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        if kind == "message_delta":
            self.usage = merge_anthropic_usage(self._totals, data.get("usage"))
            self._stop_reason = (data.get("delta") or {}).get("stop_reason")
            return b""
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            self.upstream_error = True
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            message = error.get("message") or "the provider reported an error"
            return self._error(error.get("type"), message)
        return b""  # ping, and event types added later

    def finish(self) -> bytes:
        return b""

    def error_event(self, protocol: ApiProtocol, err: GatewayError) -> bytes:
        return self._error(err.code, err.message, err.param)

    def _error(self, code: Any, message: str, param: str | None = None) -> bytes:
        self._sequence += 1
        return error_event(self._sequence - 1, code, message, param)

    def _emit(self, kind: str, payload: dict[str, Any]) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return encode_event(orjson.dumps(event), kind)

    def _start(self, message: dict[str, Any]) -> bytes:
        self.usage = merge_anthropic_usage(self._totals, message.get("usage"))
        response_id = _response_id(message.get("id"))
        self._base = response_id.removeprefix("resp_")
        self._response = _shell(self.request, response_id, self.model, int(time.time()))
        snapshot = {**self._response, "output": []}
        return self._emit("response.created", {"response": snapshot}) + self._emit(
            "response.in_progress", {"response": snapshot}
        )

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        if self._response is None or not _is_int(index):
            return b""
        output_index = len(self._response["output"]) + len(self._open)
        kind = block.get("type")
        if kind == "text":
            item = _message_item(_item_id("msg", self._base, index), "", "in_progress")
        elif kind == "tool_use":
            item_id = _item_id("fc", self._base, index)
            item = _call_item(
                item_id, block.get("id", ""), block.get("name", ""), "", "in_progress"
            )
        elif kind == "thinking":
            item = _reasoning_item(_item_id("rs", self._base, index), "", summarized=False)
        else:
            return b""
        self._open[index] = (output_index, item, [])
        out = self._emit("response.output_item.added", {"output_index": output_index, "item": item})
        if kind == "text":
            out += self._emit("response.content_part.added", self._part(output_index, item, ""))
        elif kind == "thinking" and self._summarized:
            part = self._summary_part(output_index, item, "")
            out += self._emit("response.reasoning_summary_part.added", part)
        return out

    @staticmethod
    def _summary_part(output_index: int, item: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "item_id": item["id"],
            "output_index": output_index,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": text},
        }

    @staticmethod
    def _part(output_index: int, item: dict[str, Any], text: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "item_id": item["id"],
            "output_index": output_index,
            "content_index": 0,
            "part": part,
        }

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        opened = self._open.get(index) if _is_int(index) else None
        if opened is None:
            return b""
        output_index, item, texts = opened
        kind = delta.get("type")
        key = {
            "text_delta": "text",
            "input_json_delta": "partial_json",
            "thinking_delta": "thinking",
        }
        piece = delta.get(key.get(kind, ""))
        if not isinstance(piece, str):
            return b""  # a signature, or a delta type added later
        texts.append(piece)
        self.output_chars += len(piece)
        where = {"item_id": item["id"], "output_index": output_index}
        if kind == "text_delta":
            payload = {**where, "content_index": 0, "delta": piece, "logprobs": []}
            return self._emit("response.output_text.delta", payload)
        if kind == "input_json_delta":
            return self._emit("response.function_call_arguments.delta", {**where, "delta": piece})
        if self._summarized:
            payload = {**where, "summary_index": 0, "delta": piece}
            return self._emit("response.reasoning_summary_text.delta", payload)
        return self._emit(
            "response.reasoning_text.delta", {**where, "content_index": 0, "delta": piece}
        )

    def _block_stop(self, index: Any) -> bytes:
        opened = self._open.pop(index, None) if _is_int(index) else None
        if opened is None or self._response is None:
            return b""
        output_index, item, texts = opened
        text = "".join(texts)
        where = {"item_id": item["id"], "output_index": output_index}
        out = b""
        if item["type"] == "message":
            item = _message_item(item["id"], text, "completed")
            done = {**where, "content_index": 0, "text": text, "logprobs": []}
            out += self._emit("response.output_text.done", done)
            out += self._emit("response.content_part.done", self._part(output_index, item, text))
        elif item["type"] == "function_call":
            text = text or "{}"
            item = {**item, "arguments": text, "status": "completed"}
            done = {**where, "name": item["name"], "arguments": text}
            out += self._emit("response.function_call_arguments.done", done)
        elif self._summarized:
            item = _reasoning_item(item["id"], text, summarized=True)
            done = {**where, "summary_index": 0, "text": text}
            out += self._emit("response.reasoning_summary_text.done", done)
            part = self._summary_part(output_index, item, text)
            out += self._emit("response.reasoning_summary_part.done", part)
        else:
            item = _reasoning_item(item["id"], text, summarized=False)
            done = {**where, "content_index": 0, "text": text}
            out += self._emit("response.reasoning_text.done", done)
        self._response["output"].append(item)
        return out + self._emit(
            "response.output_item.done", {"output_index": output_index, "item": item}
        )

    def _stop(self) -> bytes:
        if self._response is None:
            return b""
        self._done = True
        _finished(self._response, self._stop_reason, self.usage)
        kind = "response.completed"
        if self._response["status"] == "incomplete":
            kind = "response.incomplete"
        return self._emit(kind, {"response": self._response})


class ResponsesFromAnthropicEvents(ChainedStreamTranslator):
    """A translator that writes Anthropic events (a provider's own stream made Anthropic-shaped,
    as Gemini's and Bedrock's adapters do) chained into ``AnthropicToResponsesStream``: the
    Responses API reaches those providers through the Anthropic translation both ways. Usage
    and completion are the inner translator's, which reads the provider's own counts."""

    def __init__(self, inner: StreamTranslator, request: dict[str, Any], model: str) -> None:
        self.source = self._inner = inner
        self._outer = AnthropicToResponsesStream(request, model)
        self._decoder = SSEDecoder()

    @property
    def upstream_error(self) -> bool:  # type: ignore[override]
        return self._inner.upstream_error or self._outer.upstream_error

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def feed(self, event: SSEEvent) -> bytes:
        return self._relay(self._inner.feed(event))

    def finish(self) -> bytes:
        return self._relay(self._inner.finish()) + self._outer.finish()

    def error_event(self, protocol: ApiProtocol, err: GatewayError) -> bytes:
        return self._outer.error_event(protocol, err)

    def _relay(self, events: bytes) -> bytes:
        return b"".join(self._outer.feed(e) for e in self._decoder.feed(events)) if events else b""

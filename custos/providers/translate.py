"""OpenAI chat <-> Anthropic Messages translation: requests, responses and streams.

Everything here is pure: functions from one protocol's JSON to the other's, and two small state
machines that turn one protocol's server-sent events into the other's. No I/O.

Nothing is dropped silently: every top-level field either maps to the other protocol in some
form (``response_format`` as a forced tool, ``reasoning_effort`` and ``thinking`` as each other,
``max_tokens`` as ``max_completion_tokens``) or, when the other protocol has no counterpart, is
refused with a 400 that names it unless its value asks for nothing (``custos.providers.fields``
holds the table, ``docs/fields.md`` explains it). Ids take the caller's protocol's shape
(``msg_``/``toolu_`` for Anthropic callers, ``chatcmpl-``/``call_`` for OpenAI callers).

Usage is normalised through ``custos.wire.Usage`` both ways, so the two conventions meet in one
place: OpenAI's ``prompt_tokens`` includes cached tokens, Anthropic's ``input_tokens`` excludes both
cache reads and cache writes.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from custos.errors import bad_request
from custos.providers.base import (
    StreamTranslator,
    UpstreamMalformed,
    usage_from_anthropic,
    usage_from_openai,
)
from custos.providers.fields import (
    ANTHROPIC_TO_OPENAI,
    OPENAI_TO_ANTHROPIC,
    refuse_untranslatable,
)
from custos.providers.sse import SSEEvent, encode_event
from custos.wire import Usage

#: Anthropic requires ``max_tokens``; OpenAI callers often leave it out.
DEFAULT_MAX_TOKENS = 4096

#: The only image media types Anthropic accepts.
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_FINISH_REASONS = {  # Anthropic stop_reason -> OpenAI finish_reason
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASONS = {  # OpenAI finish_reason -> Anthropic stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    }
)

_DONE = b"data: [DONE]\n\n"


# -- shared helpers ------------------------------------------------------------------------------


def load_object(data: bytes) -> dict[str, Any]:
    """One upstream JSON object (a body or an event's data); anything else is malformed."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamMalformed("the provider sent something that is not JSON") from None
    if not isinstance(value, dict):
        raise UpstreamMalformed("the provider sent JSON that is not an object")
    return value


def merge_anthropic_usage(totals: dict[str, int], reported: Any) -> Usage | None:
    """Fold one Anthropic stream ``usage`` object into running totals and normalise them.

    ``message_start`` and ``message_delta`` both carry cumulative counts, and a later event may omit
    (or null) a count that does not apply: the earlier value must then survive, so only the integer
    fields present are overwritten.
    """
    if isinstance(reported, dict):
        for key, value in reported.items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = value
    return usage_from_anthropic(totals) if totals else None


def anthropic_delta_chars(delta: Any) -> int:
    """Generated characters in one Anthropic ``content_block_delta`` (thinking is billed too)."""
    if not isinstance(delta, dict):
        return 0
    for key in ("text", "partial_json", "thinking"):
        value = delta.get(key)
        if isinstance(value, str):
            return len(value)
    return 0


def openai_usage(usage: Usage) -> dict[str, Any]:
    details: dict[str, int] = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": details,
    }


def anthropic_usage(usage: Usage) -> dict[str, int]:
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    return {
        "input_tokens": max(uncached, 0),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def _now(created: int | None) -> int:
    return int(time.time()) if created is None else created


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


# -- OpenAI request -> Anthropic request ---------------------------------------------------------


def openai_request_to_anthropic(body: dict[str, Any], model: str) -> dict[str, Any]:
    refuse_untranslatable(body, OPENAI_TO_ANTHROPIC, "Anthropic")
    system, messages = _anthropic_messages(body.get("messages"))
    max_tokens = _max_tokens(body)
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    if body.get("stream"):
        out["stream"] = True
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        out["metadata"] = {"user_id": user}
    tier = body.get("service_tier")
    if tier is not None:
        out["service_tier"] = _anthropic_service_tier(tier)
    out.update(_anthropic_tools(body))
    out.update(_anthropic_thinking(body.get("reasoning_effort"), body, max_tokens))
    return out


def _anthropic_service_tier(tier: Any) -> str:
    tiers = {"auto": "auto", "default": "standard_only"}
    if tier not in tiers:
        raise bad_request(
            "service_tier must be auto or default when the model is served by Anthropic",
            param="service_tier",
        )
    return tiers[tier]


#: reasoning_effort -> Anthropic thinking budget; each maps back to the same effort through
#: ``EFFORT_THRESHOLDS``.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
#: Anthropic thinking budget_tokens below each bound -> OpenAI reasoning_effort (else "high").
EFFORT_THRESHOLDS = ((4096, "low"), (16384, "medium"))
#: Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024


def _anthropic_thinking(effort: Any, body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """``reasoning_effort`` as Anthropic's ``thinking`` (and the max_tokens that leaves room).

    Anthropic counts thinking inside max_tokens, as OpenAI counts reasoning inside
    max_completion_tokens; a caller who set a limit keeps it and the budget fits under it.
    """
    if effort is None:
        return {}
    if effort == "none":
        return {"thinking": {"type": "disabled"}}
    if effort not in THINKING_BUDGETS:
        raise bad_request(
            "reasoning_effort must be none, minimal, low, medium or high when the model is "
            "served by Anthropic",
            param="reasoning_effort",
        )
    budget = THINKING_BUDGETS[effort]
    limited = body.get("max_completion_tokens") is not None or body.get("max_tokens") is not None
    if not limited:
        return {
            "thinking": {"type": "enabled", "budget_tokens": budget},
            "max_tokens": budget + DEFAULT_MAX_TOKENS,
        }
    budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise bad_request(
            f"reasoning_effort needs max_completion_tokens above {MIN_THINKING_BUDGET} when the "
            "model is served by Anthropic (its smallest thinking budget)",
            param="reasoning_effort",
        )
    return {"thinking": {"type": "enabled", "budget_tokens": budget}}


def _max_tokens(body: dict[str, Any]) -> int:
    # max_completion_tokens replaced max_tokens in OpenAI's API; prefer it when both are sent.
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise bad_request(f"{key} must be a positive integer", param=key)
            return int(value)
    return DEFAULT_MAX_TOKENS


def _anthropic_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks, and user/assistant turns merged so that roles alternate."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        _refuse_message_fields(message, where)
        if role in ("system", "developer"):
            # Anthropic has one top-level system prompt; OpenAI system turns anywhere join it.
            system.extend(_content_blocks(message.get("content"), where, images=False))
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"), where, images=True)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result_block(message, where)]
        else:
            raise bad_request(f"{where}.role {role!r} is not supported", param=f"{where}.role")
        if not blocks:
            continue  # Anthropic refuses empty turns, and an empty turn says nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise bad_request("messages must contain a user or assistant message", param="messages")
    return system, turns


#: Message fields an Anthropic turn has no place for: a participant's name, audio replayed.
_UNCARRIED_MESSAGE_FIELDS = {
    "name": "Anthropic turns have no participant names",
    "audio": "Anthropic has no audio output to refer to",
}


def _refuse_message_fields(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        return
    for field, reason in _UNCARRIED_MESSAGE_FIELDS.items():
        if message.get(field) not in (None, ""):
            at = f"{where}.{field}"
            raise bad_request(
                f"{at} cannot be sent to a model served by Anthropic: {reason}", param=at
            )


def _content_blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array", param=f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            if part[kind]:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": part[kind]})
        elif kind == "image_url" and images:
            blocks.append(_image_block(part.get("image_url"), at))
        else:
            raise bad_request(
                f"{at}: content part {kind!r} cannot be sent to an Anthropic model",
                param=at,
            )
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if comma and "base64" in params and media_type.lower() in _IMAGE_TYPES:
            source = {"type": "base64", "media_type": media_type.lower(), "data": data}
            return {"type": "image", "source": source}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad_request(
        f"{where}: images must be http(s) URLs or base64 data URLs of a JPEG, PNG, GIF or WebP",
        param=where,
    )


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise bad_request(f"{where}.function_call is not supported; use tool_calls", param=where)
    blocks = _content_blocks(message.get("content"), where, images=False)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise bad_request(f"{at}: only function tool calls can be sent to Anthropic", param=at)
        if not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str):
            raise bad_request(f"{at} needs an id and a function name", param=at)
        arguments = _request_arguments(function.get("arguments"), f"{at}.function.arguments")
        call_id = anthropic_tool_use_id(call["id"])
        blocks.append(
            {"type": "tool_use", "id": call_id, "name": function["name"], "input": arguments}
        )
    return blocks


def _request_arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}  # some clients send "" for a call without arguments
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object encoded as a string", param=where)
    return value


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise bad_request(f"{where}.tool_call_id must be a string", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": anthropic_tool_use_id(tool_call_id),
    }
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        texts = _content_blocks(content, where, images=False)
        if texts:
            block["content"] = texts
    return block


def _anthropic_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    structured = structured_output_tool(body)
    if structured is not None:
        if tools or body.get("tool_choice") is not None:
            raise bad_request(
                "response_format cannot be combined with tools when the model is served by "
                "Anthropic: the format is carried as a forced tool",
                param="response_format",
            )
        return {"tools": [structured], "tool_choice": {"type": "tool", "name": structured["name"]}}
    if not tools:
        _refuse_without_tools(body, ("tool_choice", "parallel_tool_calls"), ("none",))
        return {}
    if not isinstance(tools, list):
        raise bad_request("tools must be an array", param="tools")
    out: dict[str, Any] = {
        "tools": [_anthropic_tool(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
    }
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice.get("type") != "none":
        choice = {"type": "auto", **choice, "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice
    return out


def _refuse_without_tools(
    body: dict[str, Any], names: tuple[str, ...], idle: tuple[Any, ...]
) -> None:
    """Tool settings with no tools to apply to are refused, as both providers do themselves."""
    for name in names:
        value = body.get(name)
        kind = value.get("type") if isinstance(value, dict) else value
        if value is not None and kind not in idle:
            raise bad_request(f"{name} is only allowed when tools are given", param=name)


#: The forced tool that carries ``response_format: {"type": "json_object"}`` to Anthropic.
JSON_OBJECT_TOOL = "json_object"


def structured_output_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as an Anthropic tool to force (None for plain text).

    The model must call the tool, so its input is JSON that follows the schema; the response
    translation returns that input as the message content, as OpenAI would have.
    """
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {
            "name": JSON_OBJECT_TOOL,
            "description": "Answer with a JSON object.",
            "input_schema": {"type": "object"},
        }
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(schema, dict) or schema.get("type") != "object":
        raise bad_request(
            "response_format must be text, json_object, or json_schema with an object schema "
            "when the model is served by Anthropic (the schema becomes a tool's input)",
            param="response_format",
        )
    name = spec.get("name")
    description = spec.get("description")
    return {
        "name": name if isinstance(name, str) and name else "json_response",
        "description": description
        if isinstance(description, str) and description
        else "Answer with JSON that follows this schema.",
        "input_schema": schema,
    }


def structured_output_name(body: dict[str, Any]) -> str | None:
    """The forced tool's name when ``body`` asked for structured output, else None."""
    if body.get("response_format") is None:
        return None
    tool = structured_output_tool(body)
    return None if tool is None else str(tool["name"])


def _anthropic_tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise bad_request(f"{where}: only function tools can be sent to Anthropic", param=where)
    if not isinstance(function.get("name"), str):
        raise bad_request(f"{where}.function.name must be a string", param=f"{where}.function.name")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": function["name"], "input_schema": schema}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None:
        return {}
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(name, str) and choice.get("type") == "function":
        return {"type": "tool", "name": name}
    raise bad_request(
        "tool_choice must be auto, none, required or a named function", param="tool_choice"
    )


# -- Anthropic response -> OpenAI response -------------------------------------------------------


def anthropic_response_to_openai(
    data: dict[str, Any],
    requested_model: str,
    *,
    created: int | None = None,
    structured: str | None = None,
) -> dict[str, Any]:
    """``structured``: the forced tool that carried ``response_format``; its input is the
    answer's content."""
    content = data.get("content")
    if data.get("type") != "message" or not isinstance(content, list):
        raise UpstreamMalformed("the provider's body is not an Anthropic message")
    blocks = [block for block in content if isinstance(block, dict)]
    text = "".join(
        b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    tool_calls = []
    for b in blocks:
        if b.get("type") != "tool_use":
            continue
        arguments = _dumps(b.get("input") or {})
        if structured is not None and b.get("name") == structured:
            text += arguments
            continue
        function = {"name": b.get("name"), "arguments": arguments}
        tool_calls.append(
            {"id": openai_call_id(b.get("id")), "type": "function", "function": function}
        )
    # OpenAI sends content null on a turn that only calls tools.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = usage_from_anthropic(data.get("usage")) or Usage()
    finish_reason = _finish_reason(data.get("stop_reason"), structured)
    return {
        "id": openai_completion_id(data.get("id")),
        "object": "chat.completion",
        "created": _now(created),
        "model": requested_model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": openai_usage(usage),
    }


def _finish_reason(stop_reason: Any, structured: str | None) -> str:
    # The forced tool is the answer itself: the model stopped, it did not ask for a tool.
    if structured is not None and stop_reason == "tool_use":
        return "stop"
    return _FINISH_REASONS.get(stop_reason or "", "stop")


# -- ids in the caller's protocol's shape ---------------------------------------------------------


def _reshaped_id(value: Any, theirs: str, ours: str) -> str:
    """An upstream id with the caller's protocol's prefix (``theirs`` swapped for ``ours``); the
    rest is kept, so one upstream id always gives the same id. A missing id gets a new one."""
    if not isinstance(value, str) or not value:
        return ours + secrets.token_hex(12)
    if value.startswith(ours):
        return value
    return ours + value.removeprefix(theirs)


def openai_completion_id(value: Any) -> str:
    return _reshaped_id(value, "msg_", "chatcmpl-")


def openai_call_id(value: Any) -> str:
    return _reshaped_id(value, "toolu_", "call_")


def anthropic_message_id(value: Any) -> str:
    return _reshaped_id(value, "chatcmpl-", "msg_")


def anthropic_tool_use_id(value: Any) -> str:
    return _reshaped_id(value, "call_", "toolu_")


# -- Anthropic request -> OpenAI request ---------------------------------------------------------


def anthropic_request_to_openai(
    body: dict[str, Any], model: str, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    """``max_tokens_field``: the name the upstream model takes the output limit by (current
    OpenAI models refuse ``max_tokens``; some OpenAI-compatible servers know only it)."""
    refuse_untranslatable(body, ANTHROPIC_TO_OPENAI, "an OpenAI-format provider")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty array", param="messages")
    messages = _system_message(body.get("system"), "system")
    for i, message in enumerate(raw):
        messages.extend(_openai_messages(message, f"messages[{i}]"))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("max_tokens") is not None:
        out[max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and stop:
        out["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream"):
        # Usage is only reported on OpenAI streams that ask for it.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tier = body.get("service_tier")
    if tier is not None:
        out["service_tier"] = _openai_service_tier(tier)
    out.update(_openai_tools(body))
    out.update(_openai_output(body))
    return out


def _openai_service_tier(tier: Any) -> str:
    tiers = {"auto": "auto", "standard_only": "default"}
    if tier not in tiers:
        raise bad_request("service_tier must be auto or standard_only", param="service_tier")
    return tiers[tier]


def _openai_output(body: dict[str, Any]) -> dict[str, Any]:
    """``thinking``, ``output_format`` and ``output_config`` as OpenAI's reasoning effort and
    response format."""
    out: dict[str, Any] = {}
    effort = _reasoning_effort(body.get("thinking"))
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict) or set(config) - {"format", "effort"}:
            raise bad_request(
                "output_config may hold only format and effort when the model is served by an "
                "OpenAI-format provider",
                param="output_config",
            )
        if config.get("effort") is not None:
            if config["effort"] not in ("low", "medium", "high"):
                raise bad_request(
                    "output_config.effort must be low, medium or high", param="output_config.effort"
                )
            effort = config["effort"]
        if config.get("format") is not None:
            out["response_format"] = _response_format(config["format"], "output_config.format")
    if body.get("output_format") is not None:
        out["response_format"] = _response_format(body["output_format"], "output_format")
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


def _reasoning_effort(thinking: Any) -> str | None:
    """Anthropic's thinking budget as OpenAI's effort, by ``EFFORT_THRESHOLDS``."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return None
    budget = thinking.get("budget_tokens") if kind == "enabled" else None
    if not _is_int(budget):
        raise bad_request(
            "thinking must be disabled, or enabled with an integer budget_tokens, when the "
            "model is served by an OpenAI-format provider",
            param="thinking",
        )
    for bound, effort in EFFORT_THRESHOLDS:
        if budget < bound:
            return effort
    return "high"


def _response_format(fmt: Any, where: str) -> dict[str, Any]:
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if (
        not isinstance(fmt, dict)
        or fmt.get("type") != "json_schema"
        or not isinstance(schema, dict)
    ):
        raise bad_request(f"{where} must be a json_schema format with a schema", param=where)
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def _system_message(system: Any, where: str) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list) and all(_is_text_block(b) for b in system):
        # One string, not parts: OpenAI-compatible servers do not all accept system parts.
        return [{"role": "system", "content": "\n\n".join(b["text"] for b in system)}]
    raise bad_request(f"{where} must be a string or an array of text blocks", param=where)


def _is_text_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def _openai_messages(message: Any, where: str) -> list[dict[str, Any]]:
    role = message.get("role") if isinstance(message, dict) else None
    if role == "system":
        return _system_message(message.get("content"), f"{where}.content")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array", param=f"{where}.content")
    if role == "user":
        return _openai_user_messages(content, where)
    if role == "assistant":
        return [_openai_assistant_message(content, where)]
    raise bad_request(f"{where}.role {role!r} is not supported", param=f"{where}.role")


def _openai_user_messages(content: list[Any], where: str) -> list[dict[str, Any]]:
    # Tool results become role "tool" messages, which OpenAI wants right after the assistant's
    # tool calls; Anthropic puts them first in the user turn, so emitting them first keeps both.
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            out.append(_openai_tool_message(block, at))
        elif kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        else:
            raise bad_request(
                f"{at}: content block {kind!r} is not supported when the model is served by OpenAI",
                param=at,
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    data, media_type = (source.get("data"), source.get("media_type")) if kind else (None, None)
    if kind == "base64" and isinstance(data, str) and isinstance(media_type, str):
        return f"data:{media_type};base64,{data}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise bad_request(
        f"{where}: images need a base64 source with a media_type, or a url", param=where
    )


def _openai_tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(_is_text_block(b) for b in content):
        text = "\n".join(b["text"] for b in content)
    else:
        raise bad_request(
            f"{where}: only text tool results can be sent to OpenAI", param=f"{where}.content"
        )
    if block.get("is_error"):
        # OpenAI tool messages have no error flag; say it in the text the model reads.
        text = f"Error: {text}" if text else "Error"
    tool_use_id = block.get("tool_use_id")
    if isinstance(tool_use_id, str):
        tool_use_id = openai_call_id(tool_use_id)
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _openai_assistant_message(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = _dumps(block.get("input") or {})
            function = {"name": block.get("name"), "arguments": arguments}
            call_id = block.get("id")
            if isinstance(call_id, str):
                call_id = openai_call_id(call_id)
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):  # Anthropic-only, signed for Claude
            at = f"{where}.content[{j}]"
            raise bad_request(
                f"{at}: content block {kind!r} is not supported when the model is served by OpenAI",
                param=at,
            )
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        _refuse_without_tools(body, ("tool_choice",), ("none",))
        return {}
    if not isinstance(tools, list):
        raise bad_request("tools must be an array", param="tools")
    out: dict[str, Any] = {
        "tools": [_openai_tool(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
    }
    choice = body.get("tool_choice")
    if choice is None:
        return out
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "any", "none"):
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad_request("tool_choice must be auto, any, tool or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _openai_tool(tool: Any, where: str) -> dict[str, Any]:
    # Custom tools have no type (or "custom"); server tools (web search, bash...) run at Anthropic.
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise bad_request(f"{where}: tool type {kind!r} only runs at Anthropic", param=where)
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        raise bad_request(f"{where} needs a name and an input_schema", param=where)
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# -- OpenAI response -> Anthropic response -------------------------------------------------------


def openai_response_to_anthropic(data: dict[str, Any], requested_model: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamMalformed("the provider's body has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    for key in ("content", "refusal"):
        if isinstance(message.get(key), str) and message[key]:
            content.append({"type": "text", "text": message[key]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise UpstreamMalformed("the provider sent a tool call without a function")
        content.append(
            {
                "type": "tool_use",
                "id": anthropic_tool_use_id(call.get("id")),
                "name": function.get("name") or "",
                "input": _response_arguments(function.get("arguments")),
            }
        )
    stop_reason = _STOP_REASONS.get(choice.get("finish_reason") or "", "end_turn")
    if message.get("refusal"):
        stop_reason = "refusal"
    return {
        "id": anthropic_message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(usage_from_openai(data.get("usage")) or Usage()),
    }


def _response_arguments(raw: Any) -> dict[str, Any]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        # Anthropic clients are promised an object; a model's broken JSON cannot be passed on.
        raise UpstreamMalformed("the model produced tool arguments that are not a JSON object")
    return value


# -- Anthropic stream -> OpenAI stream -----------------------------------------------------------


class OpenAIChunkWriter:
    """Writes ``chat.completion.chunk`` events for a stream translated into OpenAI's protocol:
    one completion id, creation time and model name (the caller's) on every chunk."""

    _id: str
    created: int
    requested_model: str

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return encode_event(orjson.dumps(self._envelope([choice])))

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.requested_model,
            "choices": choices,
        }


class AnthropicToOpenAIStream(OpenAIChunkWriter, StreamTranslator):
    """Anthropic Messages events in, OpenAI ``chat.completion.chunk`` events out."""

    def __init__(
        self,
        requested_model: str,
        include_usage: bool,
        *,
        created: int | None = None,
        structured: str | None = None,
    ) -> None:
        self.requested_model = requested_model
        self.include_usage = include_usage
        self.created = _now(created)
        #: The forced tool that carries ``response_format``: its input streams as content.
        self.structured = structured
        self.usage: Usage | None = None
        self.output_chars = 0
        self._id = ""
        self._totals: dict[str, int] = {}
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._answer_blocks: set[int] = set()  # indexes of the forced tool's blocks
        self._finished = False
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        data = load_object(event.data)
        kind = data.get("type", event.event)
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            self._id = openai_completion_id(message.get("id"))
            self.usage = merge_anthropic_usage(self._totals, message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block"))
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta"))
        if kind == "message_delta":
            self.usage = merge_anthropic_usage(self._totals, data.get("usage"))
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            stop_reason = delta.get("stop_reason")
            if not isinstance(stop_reason, str):
                return b""  # a usage-only update; the stop reason comes in a later delta
            return self._finish(_finish_reason(stop_reason, self.structured))
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            self.upstream_error = True
            return self._error(data.get("error"))
        return b""  # ping, content_block_stop, and event types Anthropic adds later

    def finish(self) -> bytes:
        return b""  # [DONE] went out with message_stop

    def _block_start(self, index: Any, block: Any) -> bytes:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            if not isinstance(index, int):
                raise UpstreamMalformed("the provider sent a content block without an index")
            if self.structured is not None and block.get("name") == self.structured:
                self._answer_blocks.add(index)
                return b""
            position = self._tools[index] = len(self._tools)
            call = {
                "index": position,
                "id": openai_call_id(block.get("id")),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            self.output_chars += len(block["text"])
            return self._chunk({"content": block["text"]})
        return b""  # thinking and server-tool blocks have no OpenAI chunk

    def _block_delta(self, index: Any, delta: Any) -> bytes:
        self.output_chars += anthropic_delta_chars(delta)
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return self._chunk({"content": delta["text"]})
        fragment = delta.get("partial_json") if kind == "input_json_delta" else None
        if isinstance(fragment, str) and fragment and index in self._answer_blocks:
            return self._chunk({"content": fragment})
        if (
            isinstance(fragment, str)
            and fragment
            and isinstance(index, int)
            and index in self._tools
        ):
            call = {"index": self._tools[index], "function": {"arguments": fragment}}
            return self._chunk({"tool_calls": [call]})
        return b""

    def _finish(self, finish_reason: str) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return self._chunk({}, finish_reason)

    def _stop(self) -> bytes:
        out = self._finish("stop")  # a stream that never said why it stopped ended normally
        if self.include_usage:
            envelope = self._envelope([])
            envelope["usage"] = openai_usage(self.usage or Usage())
            out += encode_event(orjson.dumps(envelope))
        self._done = True
        return out + _DONE

    def _error(self, error: Any) -> bytes:
        error = error if isinstance(error, dict) else {}
        payload = {
            "message": error.get("message") or "the provider reported an error",
            "type": error.get("type") or "api_error",
            "param": None,
            "code": None,
        }
        return encode_event(orjson.dumps({"error": payload}))


# -- OpenAI stream -> Anthropic stream -----------------------------------------------------------


class OpenAIToAnthropicStream(StreamTranslator):
    """OpenAI ``chat.completion.chunk`` events in, Anthropic Messages events out.

    OpenAI reports usage in a last chunk after the one with ``finish_reason``, so ``message_delta``
    (which carries Anthropic's final usage) waits for ``[DONE]``. A server that ends its stream
    after ``finish_reason`` without ``[DONE]`` still counts as complete: ``finish`` closes the
    message then.
    """

    def __init__(self, requested_model: str, estimated_input_tokens: int = 0) -> None:
        self.requested_model = requested_model
        #: What message_start reports: OpenAI gives the count only at the end, where
        #: message_delta corrects it.
        self.estimated_input_tokens = estimated_input_tokens
        self.usage: Usage | None = None
        self.output_chars = 0
        self._started = False
        self._block = -1  # index of the current Anthropic content block
        self._open: str | None = None  # type of the open block, None when none is open
        self._tool: tuple[Any, Any] | None = None  # OpenAI (index, id) of the open tool_use block
        self._stop_reason: str | None = None
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done or self._stop_reason is not None

    def feed(self, event: SSEEvent) -> bytes:
        if event.data.strip() == b"[DONE]":
            return self._close()
        chunk = load_object(event.data)
        if chunk.get("error"):
            self.upstream_error = True
            return self._error(chunk["error"])
        usage = usage_from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        # A chunk with neither an id nor a choice (Azure's prompt filter results) does not start
        # the message: the next one has the id to name it by.
        starts = not self._started and (chunk.get("id") or chunk.get("choices"))
        out = self._start(chunk) if starts else b""
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def finish(self) -> bytes:
        return self._close()

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        message = {
            "id": anthropic_message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.requested_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.estimated_input_tokens, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _choice(self, choice: dict[str, Any]) -> bytes:
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        out = b""
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) and delta[key]:
                out += self._text(delta[key])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._tool_call(call)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._stop_reason = _STOP_REASONS.get(finish_reason, "end_turn")
            out += self._close_block()
        return out

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._close_block() + self._open_block({"type": "text", "text": ""})
        self.output_chars += len(text)
        delta = {"type": "text_delta", "text": text}
        return out + _event("content_block_delta", self._delta(delta))

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index, call_id = call.get("index", 0), call.get("id")
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        out = b""
        # A new index starts a new call; so does a new id, for servers that reuse index 0.
        current = self._tool if self._open == "tool_use" else None
        if current is None or index != current[0] or (call_id and call_id != current[1]):
            # A server that sends no id still gets a unique one: ids pair calls with results.
            call_id = call_id or "call_" + secrets.token_hex(12)
            self._tool = (index, call_id)
            block = {
                "type": "tool_use",
                "id": anthropic_tool_use_id(call_id),
                "name": function.get("name") or "",
                "input": {},
            }
            out = self._close_block() + self._open_block(block)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.output_chars += len(arguments)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += _event("content_block_delta", self._delta(delta))
        return out

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._block, "delta": delta}

    def _open_block(self, block: dict[str, Any]) -> bytes:
        self._block += 1
        self._open = block["type"]
        payload = {"type": "content_block_start", "index": self._block, "content_block": block}
        return _event("content_block_start", payload)

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _close(self) -> bytes:
        if self._done:
            return b""
        out = b"" if self._started else self._start({})
        out += self._close_block()
        # message_delta counts are cumulative: Anthropic's SDK overwrites message_start's zeros.
        usage = anthropic_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        self._done = True
        return out + _event("message_stop", {"type": "message_stop"})

    def _error(self, error: Any) -> bytes:
        error = error if isinstance(error, dict) else {"message": str(error)}
        kind = error.get("type")
        payload = {
            "type": kind
            if isinstance(kind, str) and kind in _ANTHROPIC_ERROR_TYPES
            else "api_error",
            "message": error.get("message") or "the provider reported an error",
        }
        return _event("error", {"type": "error", "error": payload})


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(payload), name)

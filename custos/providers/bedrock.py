"""AWS Bedrock Runtime: the Converse and ConverseStream APIs, signed with SigV4.

``POST {base_url}/model/{modelId}/converse`` answers one JSON document;
``/converse-stream`` answers in AWS's binary event-stream framing
(``custos.providers.eventstream``). Both client protocols are translated: an Anthropic request
maps onto Converse field by field (the two are close), and an OpenAI request goes through the
OpenAI -> Anthropic translation first, so that its messages, tools and tool choice are mapped
(or refused) by the same rules as for an Anthropic account. Answers come back the same way:
Converse -> an Anthropic message (and Anthropic events for streams) -> OpenAI when the client
speaks OpenAI. Every request field either maps or is refused with a 400 that names it.

Signing (``custos.providers.sigv4``) uses static credentials from the config (by reference);
it costs tens of microseconds, so it runs inline.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from custos.errors import bad_request
from custos.providers import responses, translate
from custos.providers.base import (
    MAX_DETAIL_CHARS,
    ChainedStreamTranslator,
    ParsedResponse,
    ProviderAdapter,
    ProviderCall,
    StreamDecoder,
    StreamTranslator,
    UpstreamMalformed,
)
from custos.providers.eventstream import EXCEPTION_PREFIX, EventStreamDecoder
from custos.providers.sigv4 import SigV4Signer
from custos.providers.sse import SSEEvent, encode_event
from custos.providers.upstream import UpstreamRequest
from custos.wire import Operation, Usage

#: The signing name of the Bedrock Runtime service.
SERVICE = "bedrock"

# -- requests: Anthropic Messages -> Converse -----------------------------------------------------

#: Anthropic request fields and what becomes of them; any other field is refused by name.
_ANTHROPIC_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
    }
)
#: OpenAI chat fields the OpenAI -> Anthropic translation maps, plus those mapped here.
_OPENAI_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "n",
    }
)
#: OpenAI fields accepted at their default value only (anything else changes the answer).
_OPENAI_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "parallel_tool_calls": (None, True),
    "logprobs": (None, False),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
    "store": (None, False),
}
_IMAGE_FORMATS = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
}


def _refuse(field: str, why: str = "") -> Exception:
    reason = why or "Bedrock's Converse API has no equivalent"
    return bad_request(
        f"{field} is not supported when the model is served by Bedrock: {reason}", param=field
    )


def anthropic_tool_use_id(value: Any) -> Any:
    """Bedrock's tool use id (``tooluse_…``) in Anthropic's shape, ``toolu_tooluse_…``: the
    translations reshape ids by their prefix (``toolu_`` ↔ ``call_``), so an id that has one
    comes back to ``bedrock_tool_use_id`` intact whichever protocol the caller speaks."""
    return "toolu_" + value if isinstance(value, str) and value else value


def bedrock_tool_use_id(value: str) -> str:
    """The id Bedrock issued, from the one the caller sends back (see ``anthropic_tool_use_id``);
    an id the gateway did not reshape is sent as it is."""
    return value.removeprefix("toolu_") if value.startswith("toolu_tooluse_") else value


def openai_request_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    for field, value in body.items():
        if field in _OPENAI_DEFAULTS and value in _OPENAI_DEFAULTS[field]:
            continue
        if field not in _OPENAI_FIELDS or field in _OPENAI_DEFAULTS:
            raise _refuse(field)
    # Converse takes temperature and top_p, which the Anthropic translation refuses (Anthropic
    # deprecated them): they skip it and are put back after.
    sampling = {k: body[k] for k in ("temperature", "top_p") if body.get(k) is not None}
    anthropic = translate.openai_request_to_anthropic(
        {k: v for k, v in body.items() if k not in sampling}, ""
    )
    anthropic.pop("model")
    anthropic.pop("stream", None)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        # Anthropic needs a number and the translation puts a default in; Converse does not,
        # and the model's own limit serves the caller better than an arbitrary one.
        anthropic.pop("max_tokens")
    anthropic.update(sampling)
    return anthropic_request_to_converse(anthropic)


def responses_request_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request, through its Anthropic translation (``custos.providers.responses``,
    whose refusals it inherits, naming this provider)."""
    anthropic = responses.request_through_anthropic(body, "", "Bedrock")
    anthropic.pop("model")
    anthropic.pop("stream", None)
    if body.get("max_output_tokens") is None:
        anthropic.pop("max_tokens")  # as for OpenAI chat: the model's own limit, not a default
    return anthropic_request_to_converse(anthropic)


def anthropic_request_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    for field in body:
        if field not in _ANTHROPIC_FIELDS:
            raise _refuse(field)
    out: dict[str, Any] = {"messages": _converse_messages(body.get("messages"))}
    system = _converse_system(body.get("system"))
    if system:
        out["system"] = system
    inference = _inference_config(body)
    if inference:
        out["inferenceConfig"] = inference
    tool_config = _tool_config(body)
    if tool_config:
        out["toolConfig"] = tool_config
    additional = _additional_fields(body)
    if additional:
        out["additionalModelRequestFields"] = additional
    metadata = body.get("metadata")
    if metadata is not None:
        out["requestMetadata"] = _request_metadata(metadata)
    return out


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise bad_request("max_tokens must be a positive integer", param="max_tokens")
        config["maxTokens"] = max_tokens
    for field, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad_request(f"{field} must be a number", param=field)
            config[name] = value
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("stop_sequences must be an array of strings", param="stop_sequences")
        if stop:
            config["stopSequences"] = stop
    return config


def _additional_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Model-specific fields Converse passes on as given (Anthropic's on Bedrock take these)."""
    out: dict[str, Any] = {}
    if body.get("top_k") is not None:
        if not _is_int(body["top_k"]) or body["top_k"] < 0:
            raise bad_request("top_k must be a non-negative integer", param="top_k")
        out["top_k"] = body["top_k"]
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise bad_request(
                "thinking must be an object with type enabled or disabled", param="thinking"
            )
        out["thinking"] = thinking
    return out


def _request_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict) or set(metadata) - {"user_id"}:
        raise _refuse("metadata", "only metadata.user_id maps (to requestMetadata)")
    user = metadata.get("user_id")
    if user is None:
        return {}
    if not isinstance(user, str) or not user or len(user) > 256:
        raise bad_request("metadata.user_id must be a string of 1-256 characters", param="metadata")
    return {"user_id": user}


def _converse_system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"text": system}]
    if not isinstance(system, list):
        raise bad_request("system must be a string or an array of text blocks", param="system")
    out: list[dict[str, Any]] = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _refuse(f"system[{i}]", "system blocks must be text")
        out.append({"text": str(block.get("text", ""))})
        out.extend(_cache_point(block))
    return out


def _cache_point(block: dict[str, Any]) -> list[dict[str, Any]]:
    """Anthropic's ``cache_control`` on a block is Converse's cache point after it."""
    return [{"cachePoint": {"type": "default"}}] if block.get("cache_control") else []


def _converse_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be user or assistant", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise bad_request(
                f"{where}.content must be a string or an array", param=f"{where}.content"
            )
        blocks: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            blocks.extend(_converse_block(block, f"{where}.content[{j}]"))
        out.append({"role": role, "content": blocks})
    return out


def _converse_block(block: Any, where: str) -> list[dict[str, Any]]:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        converted: dict[str, Any] = {"text": str(block.get("text", ""))}
    elif kind == "image":
        converted = {"image": _converse_image(block.get("source"), where)}
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise bad_request(f"{where} needs an id and a name", param=where)
        converted = {
            "toolUse": {
                "toolUseId": bedrock_tool_use_id(block["id"]),
                "name": block["name"],
                "input": block.get("input") if isinstance(block.get("input"), dict) else {},
            }
        }
    elif kind == "tool_result":
        converted = {"toolResult": _converse_tool_result(block, where)}
    elif kind == "document":
        converted = {"document": _converse_document(block, where)}
    elif kind == "thinking":
        text = {"text": block.get("thinking", ""), "signature": block.get("signature", "")}
        converted = {"reasoningContent": {"reasoningText": text}}
    elif kind == "redacted_thinking":
        converted = {"reasoningContent": {"redactedContent": block.get("data", "")}}
    else:
        raise _refuse(where, f"content blocks of type {kind!r} cannot be sent")
    return [converted, *_cache_point(block)]


def _converse_image(source: Any, where: str) -> dict[str, Any]:
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise _refuse(where, "images must be base64 data (Converse does not fetch URLs)")
    media_type = str(source.get("media_type", "")).lower()
    if media_type not in _IMAGE_FORMATS:
        raise bad_request(f"{where}: images must be JPEG, PNG, GIF or WebP", param=where)
    # The JSON form of Converse's blob type is base64 text, as the client sent it.
    data = _base64(source.get("data"), where)
    return {"format": _IMAGE_FORMATS[media_type], "source": {"bytes": data}}


#: What a Converse document name may not hold (it allows letters, digits, single spaces,
#: hyphens, parentheses and square brackets).
_DOCUMENT_NAME_JUNK = re.compile(r"[^A-Za-z0-9\-()\[\] ]+")


def _converse_document(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A PDF (base64) or plain-text document; Converse names each document, from the title."""
    for field in ("context", "citations"):
        if block.get(field) not in (None, {"enabled": False}):
            raise _refuse(f"{where}.{field}", "Converse documents have no such field")
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and source.get("media_type") == "application/pdf":
        converted = {"format": "pdf", "source": {"bytes": _base64(source.get("data"), where)}}
    elif kind == "text" and isinstance(source.get("data"), str):
        text = base64.b64encode(source["data"].encode()).decode()
        converted = {"format": "txt", "source": {"bytes": text}}
    else:
        raise _refuse(where, "documents must be base64 PDF or plain text")
    title = block.get("title")
    name = " ".join(_DOCUMENT_NAME_JUNK.sub(" ", title).split()) if isinstance(title, str) else ""
    position = "-".join(re.findall(r"\d+", where))
    return {**converted, "name": name[:200] or f"document-{position}"}


def _base64(data: Any, where: str) -> str:
    try:
        base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except binascii.Error:
        raise bad_request(f"{where}: the data is not base64", param=where) from None
    return str(data)


def _converse_tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if content is None or content == "":
        parts: list[dict[str, Any]] = []
    elif isinstance(content, str):
        parts = [{"text": content}]
    elif isinstance(content, list):
        parts = []
        for k, item in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append({"text": str(item.get("text", ""))})
            elif kind == "image":
                parts.append({"image": _converse_image(item.get("source"), at)})
            else:
                raise _refuse(at, f"tool results of type {kind!r} cannot be sent")
    else:
        raise bad_request(f"{where}.content must be a string or an array", param=f"{where}.content")
    if not isinstance(block.get("tool_use_id"), str):
        raise bad_request(f"{where}.tool_use_id must be a string", param=f"{where}.tool_use_id")
    result: dict[str, Any] = {
        "toolUseId": bedrock_tool_use_id(block["tool_use_id"]),
        "content": parts,
    }
    if block.get("is_error"):
        result["status"] = "error"
    return result


def _tool_config(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice is not None:
            raise _refuse("tool_choice", "there are no tools to choose from")
        return {}
    if not isinstance(tools, list):
        raise bad_request("tools must be an array", param="tools")
    config: dict[str, Any] = {"tools": []}
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            raise _refuse(where, "only client tools with an input_schema can be sent")
        if not isinstance(tool.get("name"), str):
            raise bad_request(f"{where}.name must be a string", param=f"{where}.name")
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        spec: dict[str, Any] = {"name": tool["name"], "inputSchema": {"json": schema}}
        if isinstance(tool.get("description"), str):
            spec["description"] = tool["description"]
        config["tools"].append({"toolSpec": spec})
        config["tools"].extend(_cache_point(tool))
    if choice is not None:
        config["toolChoice"] = _tool_choice(choice)
    return config


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
        raise _refuse("tool_choice.disable_parallel_tool_use")
    if kind == "auto":
        return {"auto": {}}
    if kind == "any":
        return {"any": {}}
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"tool": {"name": choice["name"]}}
    if kind == "none":
        raise _refuse("tool_choice", "there is no 'none'; leave the tools out instead")
    raise bad_request("tool_choice must be auto, any or a named tool", param="tool_choice")


# -- responses: Converse -> Anthropic message -----------------------------------------------------

_STOP_REASONS = {  # Converse stopReason -> Anthropic stop_reason
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "model_context_window_exceeded": "model_context_window_exceeded",
    "guardrail_intervened": "refusal",
    "content_filtered": "refusal",
}


def usage_from_converse(data: Any) -> Usage | None:
    """Normalise Converse's ``usage``; its ``inputTokens`` excludes cache reads and writes."""
    if not isinstance(data, dict) or not _is_int(data.get("inputTokens")):
        return None
    cached = _count(data.get("cacheReadInputTokens"))
    written = _count(data.get("cacheWriteInputTokens"))
    return Usage(
        input_tokens=data["inputTokens"] + cached + written,
        output_tokens=_count(data.get("outputTokens")),
        cached_input_tokens=cached,
        cache_write_tokens=written,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return value if _is_int(value) and value >= 0 else 0


def converse_response_to_anthropic(data: dict[str, Any], message_id: str, model: str) -> dict:
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise UpstreamMalformed("the provider's body is not a Converse response")
    usage = usage_from_converse(data.get("usage")) or Usage()
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b for b in map(_anthropic_block, content) if b is not None],
        "stop_reason": _STOP_REASONS.get(str(data.get("stopReason")), "end_turn"),
        "stop_sequence": None,
        "usage": translate.anthropic_usage(usage),
    }


def _anthropic_block(block: Any) -> dict[str, Any] | None:
    if not isinstance(block, dict):
        return None
    if isinstance(block.get("text"), str):
        return {"type": "text", "text": block["text"]}
    tool = block.get("toolUse")
    if isinstance(tool, dict):
        arguments = tool.get("input")
        return {
            "type": "tool_use",
            "id": anthropic_tool_use_id(tool.get("toolUseId")),
            "name": tool.get("name"),
            "input": arguments if isinstance(arguments, dict) else {},
        }
    reasoning = block.get("reasoningContent")
    if isinstance(reasoning, dict):
        text = reasoning.get("reasoningText")
        if isinstance(text, dict):
            return {
                "type": "thinking",
                "thinking": str(text.get("text", "")),
                "signature": str(text.get("signature", "")),
            }
        if isinstance(reasoning.get("redactedContent"), str):
            return {"type": "redacted_thinking", "data": reasoning["redactedContent"]}
    return None


# -- streams: ConverseStream events -> Anthropic events ------------------------------------------


class ConverseToAnthropicStream(StreamTranslator):
    """ConverseStream events in, Anthropic Messages events out.

    Converse reports usage in its last event (``metadata``, after ``messageStop``), so the
    ``message_delta`` carrying the stop reason waits for it, and carries every count
    (``input_tokens`` and the cache counts included). ``message_start`` has no count yet
    (Converse gives none before the end) and says 0.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.usage: Usage | None = None
        self.output_chars = 0
        self._started = False
        self._open: set[int] = set()
        self._stop_reason: str | None = None
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        return b"".join(_encode(name, payload) for name, payload in self.anthropic_events(event))

    def finish(self) -> bytes:
        return b""

    def anthropic_events(self, event: SSEEvent) -> list[tuple[str, dict[str, Any]]]:
        name = event.event or ""
        if name.startswith(EXCEPTION_PREFIX):
            self.upstream_error = True
            return [("error", _stream_error(name[len(EXCEPTION_PREFIX) :], event.data))]
        data = translate.load_object(event.data)
        if name == "messageStart":
            return self._start()
        if name == "contentBlockStart":
            return self._block_start(data)
        if name == "contentBlockDelta":
            return self._block_delta(data)
        if name == "contentBlockStop":
            return self._block_stop(data.get("contentBlockIndex"))
        if name == "messageStop":
            self._stop_reason = _STOP_REASONS.get(str(data.get("stopReason")), "end_turn")
            return self._close_blocks()
        if name == "metadata":
            self.usage = usage_from_converse(data.get("usage"))
            return self._end()
        return []

    def _start(self) -> list[tuple[str, dict[str, Any]]]:
        if self._started:
            return []
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": translate.anthropic_usage(Usage()),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _index(self, data: dict[str, Any]) -> int:
        index = data.get("contentBlockIndex")
        if not _is_int(index):
            raise UpstreamMalformed("the provider sent a content block without an index")
        return int(index)

    def _block_start(self, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        index = self._index(data)
        start = data.get("start")
        tool = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(tool, dict):
            return []  # text and reasoning blocks open with their first delta
        block = {
            "type": "tool_use",
            "id": anthropic_tool_use_id(tool.get("toolUseId")),
            "name": tool.get("name"),
        }
        return [*self._start(), *self._open_block(index, {**block, "input": {}})]

    def _open_block(self, index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        self._open.add(index)
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return [("content_block_start", start)]

    def _block_delta(self, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        index = self._index(data)
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        events = self._start()
        if isinstance(delta.get("text"), str):
            if index not in self._open:
                events += self._open_block(index, {"type": "text", "text": ""})
            anthropic: dict[str, Any] = {"type": "text_delta", "text": delta["text"]}
        elif isinstance(delta.get("toolUse"), dict):
            fragment = str(delta["toolUse"].get("input", ""))
            anthropic = {"type": "input_json_delta", "partial_json": fragment}
        elif isinstance(delta.get("reasoningContent"), dict):
            reasoning = delta["reasoningContent"]
            if index not in self._open:
                events += self._open_block(index, {"type": "thinking", "thinking": ""})
            if isinstance(reasoning.get("signature"), str):
                anthropic = {"type": "signature_delta", "signature": reasoning["signature"]}
            else:
                anthropic = {"type": "thinking_delta", "thinking": str(reasoning.get("text", ""))}
        else:
            return events
        self.output_chars += translate.anthropic_delta_chars(anthropic)
        delta_event = {"type": "content_block_delta", "index": index, "delta": anthropic}
        return [*events, ("content_block_delta", delta_event)]

    def _block_stop(self, index: Any) -> list[tuple[str, dict[str, Any]]]:
        if index not in self._open:
            return []
        self._open.discard(index)
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _close_blocks(self) -> list[tuple[str, dict[str, Any]]]:
        events = self._start()
        for index in sorted(self._open):
            events += self._block_stop(index)
        return events

    def _end(self) -> list[tuple[str, dict[str, Any]]]:
        if self._stop_reason is None:
            raise UpstreamMalformed("the provider sent the stream's metadata before messageStop")
        self._done = True
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": translate.anthropic_usage(self.usage or Usage()),
        }
        return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]


class ConverseToOpenAIStream(ChainedStreamTranslator):
    """ConverseStream events in, OpenAI chunks out: through the Anthropic events, so that one
    state machine decides block order and the usage of both."""

    def __init__(self, message_id: str, model: str, include_usage: bool) -> None:
        self.source = self._converse = ConverseToAnthropicStream(message_id, model)
        self._openai = translate.AnthropicToOpenAIStream(model, include_usage)

    @property
    def complete(self) -> bool:
        return self._openai.complete

    def feed(self, event: SSEEvent) -> bytes:
        return b"".join(
            self._openai.feed(SSEEvent(name, orjson.dumps(payload)))
            for name, payload in self._converse.anthropic_events(event)
        )

    def finish(self) -> bytes:
        return b""


def _encode(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(payload), name)


#: ConverseStream exception types -> the Anthropic error type a client understands.
_STREAM_ERRORS = {
    "throttlingException": "rate_limit_error",
    "validationException": "invalid_request_error",
    "serviceUnavailableException": "overloaded_error",
    "modelStreamErrorException": "api_error",
    "internalServerException": "api_error",
}


def _stream_error(exception_type: str, payload: bytes) -> dict[str, Any]:
    message = _message_of(payload) or "the provider reported an error"
    kind = _STREAM_ERRORS.get(exception_type, "api_error")
    # Cut as an error body's text is: both come from the provider, of any length.
    text = f"{exception_type[:100]}: {message[:MAX_DETAIL_CHARS]}"
    return {"type": "error", "error": {"type": kind, "message": text}}


def _message_of(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        for key in ("message", "Message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


# -- the adapter ----------------------------------------------------------------------------------

#: Bedrock statuses that do not mean what they mean elsewhere.
_ERROR_STATUS = {
    408: 504,  # ModelTimeoutException: the model, not the caller, was slow
    424: 502,  # ModelErrorException: the model failed
}


#: Characters allowed bare in a URL path segment (RFC 3986 pchar), which aiohttp does not quote.
_PATH_SAFE = ":@!$&'()*+,;="


class BedrockAdapter(ProviderAdapter):
    wire = "anthropic"

    def __init__(self, account: str, settings: Any) -> None:
        super().__init__(account, settings)
        self._signer = SigV4Signer(
            settings.access_key_id or "",
            settings.secret_access_key or "",
            settings.session_token or None,
            settings.region or "",
            SERVICE,
        )

    def supports(self, operation: Operation) -> bool:
        return operation != "embeddings"

    def url(self, call: ProviderCall) -> str:
        action = "converse-stream" if call.stream else "converse"
        # Quoted as the HTTP client will send it (it leaves ':' and the sub-delimiters bare), so
        # that the signature covers the bytes on the wire; '/' in an ARN stays %2F.
        model = quote(call.upstream_model, safe=_PATH_SAFE)
        return f"{self.base_url}/model/{model}/{action}"

    def build_request(self, call: ProviderCall, *, now: datetime | None = None) -> UpstreamRequest:
        if not self.supports(call.operation):
            raise bad_request(f"provider {self.account} (Bedrock) has no {call.operation} API")
        body = orjson.dumps(self.request_body(call))
        headers = self.common_headers()
        if call.stream:
            headers["accept"] = "application/vnd.amazon.eventstream"
        url = self.url(call)
        signed = self._signer.sign(url, headers, body, now or datetime.now(UTC))
        return UpstreamRequest("POST", url, signed, body)

    def request_body(self, call: ProviderCall) -> dict[str, Any]:
        if call.protocol == "anthropic":
            body = {k: v for k, v in call.body.items() if k not in ("model", "stream")}
            return anthropic_request_to_converse(body)
        if call.operation == "responses":
            return responses_request_to_converse(call.body)
        return openai_request_to_converse(call.body)

    def parse_response(self, call: ProviderCall, body: bytes) -> ParsedResponse:
        data = translate.load_object(body)
        usage = usage_from_converse(data.get("usage"))
        message = converse_response_to_anthropic(data, _message_id(call), call.requested_model)
        if call.protocol == "anthropic":
            return ParsedResponse(orjson.dumps(message), usage)
        if call.operation == "responses":
            answer = responses.response_from_anthropic(message, call.body, call.requested_model)
            return ParsedResponse(orjson.dumps(answer), usage)
        translated = translate.anthropic_response_to_openai(message, call.requested_model)
        return ParsedResponse(orjson.dumps(translated), usage)

    def stream_translator(self, call: ProviderCall) -> StreamTranslator:
        if call.protocol == "anthropic":
            return ConverseToAnthropicStream(_message_id(call), call.requested_model)
        if call.operation == "responses":
            converse = ConverseToAnthropicStream(_message_id(call), call.requested_model)
            return responses.ResponsesFromAnthropicEvents(converse, call.body, call.requested_model)
        return ConverseToOpenAIStream(
            _message_id(call), call.requested_model, call.client_wants_usage
        )

    def stream_decoder(self) -> StreamDecoder:
        return EventStreamDecoder()

    def error_status(self, status: int, body: bytes) -> int:
        return _ERROR_STATUS.get(status, status)

    def error_message(self, body: bytes) -> str | None:
        """Bedrock errors are ``{"message": ...}`` (``Message`` from some services)."""
        message = _message_of(body)
        kind = _error_type(body)
        if message is None:
            return None
        return f"{kind}: {message}" if kind else message


def _error_type(body: bytes) -> str:
    """The exception's name, when the body says (``__type``, as AWS's JSON protocol does)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    kind = data.get("__type") if isinstance(data, dict) else None
    return kind.rpartition("#")[2] if isinstance(kind, str) else ""


def _message_id(call: ProviderCall) -> str:
    """Converse answers carry no id; make one in the shape the client's protocol uses (a
    Responses answer is made from an Anthropic message, whose id it takes)."""
    token = secrets.token_hex(12)
    if call.protocol == "anthropic" or call.operation == "responses":
        return f"msg_bdrk_{token}"
    return f"chatcmpl-bdrk{token}"

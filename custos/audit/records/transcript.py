"""What "the content" of an LLM call is, for content capture: the caller's input and the output.

- **request content**: the parts of the request body that carry content, as the caller sent
  them: ``system``, ``messages``, ``input`` (embeddings), ``tools`` and ``tool_choice``. Model
  parameters (temperature, max tokens, …) are already in the record's fields or irrelevant.
- **response content**: the assistant output, in one shape per client protocol whether it was
  streamed or not, so that a stream and a plain response of the same output capture the same
  bytes:

  - OpenAI: ``{"choices": [{"index", "content", "tool_calls"?, "finish_reason"}]}`` with
    ``tool_calls`` as OpenAI writes them (``{"id", "type", "function": {"name",
    "arguments"}}``);
  - Anthropic: ``{"content": [blocks…], "stop_reason"}`` with ``text`` and ``tool_use`` blocks
    (a streamed tool call's ``input`` parsed from its JSON fragments);
  - embeddings: no response content (vectors are not what anyone needs to read back).

``StreamTranscript`` assembles the output of a stream from the bytes relayed to the client (the
client's protocol, whatever the provider's), so what is captured is what the caller received.
It is fed only when content capture is on.
"""

from __future__ import annotations

from typing import Any

import orjson

from custos.providers.sse import SSEDecoder

_REQUEST_KEYS = ("system", "messages", "input", "tools", "tool_choice")


def request_content(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in _REQUEST_KEYS if key in body}


def response_content(protocol: str, operation: str, body: bytes) -> dict[str, Any] | None:
    """The output of a plain (non-streamed) response in the shape above; ``None`` when there is
    none (embeddings, an error body, bytes that are not JSON)."""
    if operation in ("embeddings", "count_tokens"):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if protocol == "anthropic":
        return {"content": data.get("content") or [], "stop_reason": data.get("stop_reason")}
    choices = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") or {}
        out: dict[str, Any] = {
            "index": choice.get("index", 0),
            "content": message.get("content"),
            "finish_reason": choice.get("finish_reason"),
        }
        if message.get("tool_calls"):
            out["tool_calls"] = [
                {
                    "id": call.get("id"),
                    "type": call.get("type", "function"),
                    "function": {
                        "name": (call.get("function") or {}).get("name"),
                        "arguments": (call.get("function") or {}).get("arguments"),
                    },
                }
                for call in message["tool_calls"]
                if isinstance(call, dict)
            ]
        choices.append(out)
    return {"choices": choices}


class StreamTranscript:
    """Assembles a relayed stream's output from the client-protocol bytes (see the module
    docstring). Malformed events are skipped: capture never breaks a stream."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._decoder = SSEDecoder()
        self._choices: dict[int, dict[str, Any]] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._stop_reason: Any = None

    def feed(self, data: bytes) -> None:
        try:
            events = self._decoder.feed(data)
        except ValueError:  # an oversized event: the client got it, the transcript skips it
            self._decoder = SSEDecoder()
            return
        for event in events:
            payload = event.data
            if not payload or payload == b"[DONE]":
                continue
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(parsed, dict):
                continue
            try:
                if self.protocol == "anthropic":
                    self._anthropic(parsed)
                else:
                    self._openai(parsed)
            except (AttributeError, TypeError, KeyError, ValueError):
                continue

    def _openai(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            out = self._choices.setdefault(
                index, {"index": index, "content": None, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str):
                out["content"] = (out["content"] or "") + text
            for call in delta.get("tool_calls") or ():
                calls = out.setdefault("_calls", {})
                slot = calls.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] = function["name"]
                if isinstance(function.get("arguments"), str):
                    slot["function"]["arguments"] += function["arguments"]
            if choice.get("finish_reason") is not None:
                out["finish_reason"] = choice["finish_reason"]

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_start":
            block = dict(event.get("content_block") or {})
            self._blocks[event.get("index", 0)] = block
        elif kind == "content_block_delta":
            index = event.get("index", 0)
            block = self._blocks.setdefault(index, {"type": "text", "text": ""})
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif delta.get("type") == "input_json_delta":
                self._json.setdefault(index, []).append(delta.get("partial_json", ""))
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop is not None:
                self._stop_reason = stop

    def result(self) -> dict[str, Any]:
        """The output so far (a stream cut short gives what the client received)."""
        if self.protocol == "anthropic":
            blocks = []
            for index in sorted(self._blocks):
                block = dict(self._blocks[index])
                fragments = self._json.get(index)
                if fragments:
                    text = "".join(fragments)
                    try:
                        block["input"] = orjson.loads(text)
                    except orjson.JSONDecodeError:
                        block["input"] = text
                blocks.append(block)
            return {"content": blocks, "stop_reason": self._stop_reason}
        choices = []
        for index in sorted(self._choices):
            choice = dict(self._choices[index])
            calls = choice.pop("_calls", None)
            if calls:
                choice["tool_calls"] = [calls[i] for i in sorted(calls)]
            choices.append(choice)
        return {"choices": choices}

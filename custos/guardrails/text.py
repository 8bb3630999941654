"""Where the text is in a request or a response, per protocol and operation.

Guardrails and data-class detection read (and ``mutate`` guardrails rewrite) the natural-language
text of a call, never its structure: message contents, system prompts and instructions, tool
results, embedding inputs; in a response, the assistant's text. A ``TextSlot`` is one such
string with the place it came from, so a rewrite goes back exactly where it was read.

Requests (the body as parsed, in the caller's protocol):

- ``chat``: ``messages[].content`` (a string, or its ``text`` parts);
- ``messages``, ``count_tokens``: ``system`` (a string or text blocks), ``messages[].content``
  (a string, or its ``text`` blocks and the text of ``tool_result`` blocks);
- ``responses``: ``instructions``, ``input`` (a string, or items whose ``content`` is a string
  or ``input_text`` parts);
- ``embeddings``: ``input`` (a string or a list of strings; token arrays carry no text);
- ``tool_call`` (an MCP ``tools/call``'s params): every string inside ``arguments``, at any
  depth (keys are structure, not text).

Responses: ``chat`` ``choices[].message.content``; ``messages`` ``content[]`` text blocks;
``responses`` ``output[].content[]`` ``output_text`` parts; ``tool_call`` (an MCP tool
result) the ``text`` of its ``content[]`` text blocks and every string inside
``structuredContent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class TextSlot:
    """One string of the call: ``container[key]``."""

    container: Any
    key: str | int

    @property
    def text(self) -> str:
        return self.container[self.key]  # type: ignore[no-any-return]

    def replace(self, text: str) -> None:
        self.container[self.key] = text


def request_slots(operation: str, body: dict[str, Any]) -> list[TextSlot]:
    """The text slots of a request body (see the module docstring)."""
    if operation == "chat":
        return _chat_messages(body.get("messages"))
    if operation in ("messages", "count_tokens"):
        return [*_system(body), *_contents(body.get("messages"), ("text", "tool_result"))]
    if operation == "responses":
        instructions = isinstance(body.get("instructions"), str)
        slots = [TextSlot(body, "instructions")] if instructions else []
        return slots + list(_responses_input(body))
    if operation == "embeddings":
        return list(_embedding_inputs(body))
    if operation == "tool_call":
        return list(json_strings(body, "arguments"))
    return []


def response_slots(operation: str, body: dict[str, Any]) -> list[TextSlot]:
    """The text slots of a response body in the caller's protocol."""
    slots: list[TextSlot] = []
    if operation == "chat":
        choices = body.get("choices")
        for choice in choices if isinstance(choices, list) else ():  # (no generator: per call)
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                slots.append(TextSlot(message, "content"))
    elif operation == "messages":
        slots.extend(_text_blocks(body.get("content"), ("text",)))
    elif operation == "responses":
        for item in _dicts(body.get("output")):
            for part in _dicts(item.get("content")):
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    slots.append(TextSlot(part, "text"))
    elif operation == "tool_call":
        slots.extend(_text_blocks(body.get("content"), ("text",)))
        slots.extend(json_strings(body, "structuredContent"))
    return slots


def json_strings(container: Any, key: str | int) -> Iterator[TextSlot]:
    """Every string in ``container[key]``, at any depth (dictionary values, list items)."""
    value = container.get(key) if isinstance(container, dict) else container[key]
    if isinstance(value, str):
        yield TextSlot(container, key)
    elif isinstance(value, dict):
        for inner in value:
            yield from json_strings(value, inner)
    elif isinstance(value, list):
        for index in range(len(value)):
            yield from json_strings(value, index)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


def _system(body: dict[str, Any]) -> Iterator[TextSlot]:
    system = body.get("system")
    if isinstance(system, str):
        yield TextSlot(body, "system")
    else:
        yield from _text_blocks(system, ("text",))


def _chat_messages(messages: Any) -> list[TextSlot]:
    """``_contents(messages, ("text",))`` as a list, without generators for the usual shape
    (every message's content a string): this runs on every chat request."""
    if not isinstance(messages, list):
        return []
    slots = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append(TextSlot(message, "content"))
        else:
            slots.extend(_text_blocks(content, ("text",)))
    return slots


def _contents(messages: Any, kinds: tuple[str, ...]) -> Iterator[TextSlot]:
    for message in _dicts(messages):
        content = message.get("content")
        if isinstance(content, str):
            yield TextSlot(message, "content")
        else:
            yield from _text_blocks(content, kinds)


def _text_blocks(blocks: Any, kinds: tuple[str, ...]) -> Iterator[TextSlot]:
    for block in _dicts(blocks):
        kind = block.get("type")
        if kind == "text" and "text" in kinds and isinstance(block.get("text"), str):
            yield TextSlot(block, "text")
        elif kind == "tool_result" and "tool_result" in kinds:
            content = block.get("content")
            if isinstance(content, str):
                yield TextSlot(block, "content")
            else:
                yield from _text_blocks(content, ("text",))


def _responses_input(body: dict[str, Any]) -> Iterator[TextSlot]:
    given = body.get("input")
    if isinstance(given, str):
        yield TextSlot(body, "input")
        return
    for item in _dicts(given):
        content = item.get("content")
        if isinstance(content, str):
            yield TextSlot(item, "content")
            continue
        for part in _dicts(content):
            if part.get("type") in ("input_text", "output_text") and isinstance(
                part.get("text"), str
            ):
                yield TextSlot(part, "text")
        if item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
            yield TextSlot(item, "output")


def _embedding_inputs(body: dict[str, Any]) -> Iterator[TextSlot]:
    given = body.get("input")
    if isinstance(given, str):
        yield TextSlot(body, "input")
    elif isinstance(given, list):
        for index, value in enumerate(given):
            if isinstance(value, str):
                yield TextSlot(given, index)

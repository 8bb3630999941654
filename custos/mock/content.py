"""Deterministic content for the mock provider: tokenizer, usage, replies, tool arguments, vectors.

Everything here is a pure function of the request, so the same request always yields the same
bytes. The token formula is the contract other test suites rely on; it is restated in
``custos.mock``'s module docstring.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

import orjson

# A token is a run of word characters or one non-space punctuation character:
# "Hello, world!" -> ["Hello", ",", "world", "!"] -> 4. Whitespace and JSON formatting never count,
# so a client can reproduce the number without caring how it serialised its request.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")

#: Tokens added for every message (and for the Anthropic ``system`` prompt when present).
PER_MESSAGE_TOKENS = 4
#: How many words of the prompt the reply echoes after its prefix.
ECHO_WORDS = 8
#: Default reply length in tokens (the ``words`` knob overrides it).
DEFAULT_WORDS = 20
#: The longest reply the ``echo`` knob gives back, in words.
MAX_ECHO_WORDS = 10_000

_REPLY_PREFIX = ("Mock", "reply", "to")
_TOOL_REPLY_PREFIX = ("Mock", "reply", "to", "tool", "result")
# fmt: off
_FILLER = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
    "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi",
    "aliquip", "ex", "ea", "commodo", "consequat", "duis", "aute", "irure", "in", "reprehenderit",
    "voluptate", "velit", "esse", "cillum", "fugiat", "nulla", "pariatur", "excepteur", "sint",
    "occaecat", "cupidatat", "non", "proident", "sunt", "culpa", "qui", "officia", "deserunt",
    "mollit", "anim", "id", "est", "laborum",
)
# fmt: on


def count_tokens(text: str) -> int:
    """The mock's tokenizer: number of ``\\w+`` runs plus number of punctuation characters."""
    return len(_TOKEN_RE.findall(text))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def openai_message_texts(message: dict[str, Any]) -> list[str]:
    """The strings of one OpenAI chat message that count towards prompt tokens."""
    texts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    texts.append(text)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.append(str(function.get("name", "")))
            texts.append(str(function.get("arguments", "")))
    return texts


def _anthropic_block_texts(block: Any) -> list[str]:
    """The strings of one Anthropic content block that count towards input tokens."""
    if isinstance(block, str):
        return [block]
    if not isinstance(block, dict):
        return []
    kind = block.get("type")
    if kind == "text":
        return [str(block.get("text", ""))]
    if kind == "tool_use":
        return [str(block.get("name", "")), _json_text(block.get("input", {}))]
    if kind == "tool_result":
        inner = block.get("content", "")
        if isinstance(inner, list):
            return [text for item in inner for text in _anthropic_block_texts(item)]
        return [str(inner)]
    return []


def anthropic_content_texts(content: Any) -> list[str]:
    if isinstance(content, list):
        return [text for block in content for text in _anthropic_block_texts(block)]
    return _anthropic_block_texts(content)


def _sum_tokens(texts: list[str]) -> int:
    return sum(count_tokens(text) for text in texts)


def prompt_tokens_openai(body: dict[str, Any]) -> int:
    """``sum over messages of (PER_MESSAGE_TOKENS + tokens of its texts)``, as the server reports.

    A message's texts are its string content or the ``text`` of its content parts, plus the
    ``function.name`` and ``function.arguments`` of any ``tool_calls``. Tool definitions,
    names and images are not counted.
    """
    messages = body.get("messages") or []
    return sum(
        PER_MESSAGE_TOKENS + _sum_tokens(openai_message_texts(m))
        for m in messages
        if isinstance(m, dict)
    )


def prompt_tokens_anthropic(body: dict[str, Any]) -> int:
    """Same formula as OpenAI; a non-empty ``system`` counts as one more message.

    Block texts: ``text`` blocks, a ``tool_use`` block's name and its ``input`` as compact JSON,
    a ``tool_result`` block's content (string or text blocks). Tool definitions are not counted.
    """
    total = 0
    system = body.get("system")
    if system:
        total += PER_MESSAGE_TOKENS + _sum_tokens(anthropic_content_texts(system))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            texts = anthropic_content_texts(message.get("content", ""))
            total += PER_MESSAGE_TOKENS + _sum_tokens(texts)
    return total


def embedding_input_tokens(item: str | list[int]) -> int:
    """Embeddings usage: tokens of each string input, or the length of each token array."""
    return count_tokens(item) if isinstance(item, str) else len(item)


# ----------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one tool call a reply makes: name and arguments as compact JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """What the mock 'model' answers, independent of wire format."""

    words: tuple[str, ...]
    tool_call: ToolCall | None
    truncated: bool

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def output_tokens(self) -> int:
        # Words are \w+ runs joined by single spaces, so each is exactly one token.
        if self.tool_call is not None:
            return count_tokens(self.tool_call.name) + count_tokens(self.tool_call.arguments)
        return len(self.words)


def reply_words(
    prompt: str, *, tool_result: bool, words: int, echo: bool = False
) -> tuple[str, ...]:
    """``<prefix> <first ECHO_WORDS words of prompt> <filler>`` cut to ``words`` tokens; with
    ``echo``, the prompt's own white-space separated words (for checks of what comes back)."""
    if echo:
        return tuple(prompt.split())[:MAX_ECHO_WORDS]
    prefix = _TOOL_REPLY_PREFIX if tool_result else _REPLY_PREFIX
    head = [*prefix, *_WORD_RE.findall(prompt)[:ECHO_WORDS]]
    if words <= len(head):
        return tuple(head[:words])
    # The filler walks the vocabulary with a stride coprime to its length, from a start point
    # chosen by the prompt, so different prompts give visibly different (but stable) replies.
    seed = zlib.crc32(prompt.encode())
    size = len(_FILLER)
    filler = [_FILLER[(seed + 7 * i) % size] for i in range(words - len(head))]
    return tuple(head + filler)


def text_reply(
    prompt: str, *, tool_result: bool, words: int, max_tokens: int | None, echo: bool = False
) -> Reply:
    """A text reply, truncated (``truncated=True``) when ``max_tokens`` is smaller."""
    out = reply_words(prompt, tool_result=tool_result, words=words, echo=echo)
    if max_tokens is not None and len(out) > max_tokens:
        return Reply(out[:max_tokens], None, True)
    return Reply(out, None, False)


def tool_reply(name: str, schema: Any) -> Reply:
    """A reply calling tool ``name`` with arguments built from its JSON schema."""
    arguments = _json_text(arguments_for_schema(schema))
    return Reply((), ToolCall(name, arguments), False)


def arguments_for_schema(schema: Any) -> Any:
    """Deterministic value for a JSON schema: required properties only, recursively.

    Strings are "mock" (or the first ``enum`` value), numbers 1, booleans true, arrays empty.
    """
    if not isinstance(schema, dict):
        return {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: arguments_for_schema(props.get(name, {}))
            for name in required
            if isinstance(name, str)
        }
    return _SCALARS.get(kind, "mock")


_SCALARS: dict[str, Any] = {
    "string": "mock",
    "number": 1,
    "integer": 1,
    "boolean": True,
    "array": [],
    "null": None,
}


def split_evenly(items: list[str] | str, parts: int) -> list[Any]:
    """Split a sequence into ``min(parts, len)`` contiguous, nearly equal, non-empty slices."""
    n = len(items)
    k = max(1, min(parts, n))
    return [items[i * n // k : (i + 1) * n // k] for i in range(k)] if n else []


def text_pieces(words: tuple[str, ...], parts: int) -> list[str]:
    """Stream fragments of a reply whose concatenation is exactly ``" ".join(words)``."""
    groups = split_evenly(list(words), parts)
    return [(" " if i else "") + " ".join(group) for i, group in enumerate(groups)]


# --------------------------------------------------------------------------- embeddings

#: Vector length when the request gives no ``dimensions``.
DEFAULT_DIMENSIONS = 16
MAX_DIMENSIONS = 8192


def embedding_vector(item: str | list[int], dimensions: int) -> array:
    """Unit-length float32 vector from SHAKE-128 of the input (text as UTF-8, tokens as JSON)."""
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = array("H", hashlib.shake_128(key).digest(2 * dimensions))
    if sys.byteorder == "big":  # read the digest as little-endian everywhere
        raw.byteswap()
    values = [x / 32767.5 - 1.0 for x in raw]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Rounded to float32 once, so the float and base64 encodings carry identical numbers.
    return array("f", [v / norm for v in values])


def float32_le_bytes(vector: array) -> bytes:
    """Little-endian float32 bytes, as OpenAI's base64 encoding carries them."""
    if sys.byteorder == "little":
        return vector.tobytes()
    swapped = array("f", vector)
    swapped.byteswap()
    return swapped.tobytes()

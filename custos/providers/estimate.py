"""Token estimates for when a provider reports no usage.

The gateway has no provider's tokenizer (they are model-specific and some are not public), so it
counts about four characters of UTF-8 text per token, the rule of thumb OpenAI and Anthropic both
publish for English. Usage built this way is marked ``estimated`` in the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4


def tokens_for_chars(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def text_chars(value: Any) -> int:
    """Characters of text in a message body: strings, lists of content parts, nested dicts."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(text_chars(v) for k, v in value.items() if k in _TEXT_KEYS)
    return 0


_TEXT_KEYS = frozenset(
    {"content", "text", "system", "messages", "arguments", "input", "tool_calls", "function"}
    | {"instructions", "output"}  # the Responses API's system prompt and tool results
)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Input tokens of a chat/messages/embeddings request: its text plus 3 tokens per message."""
    messages = body.get("messages")
    if isinstance(messages, list) and "system" not in body and "input" not in body:
        # The common body (messages of a role and a string content only), counted without the
        # general walk; the number is the same.
        chars = 0
        for message in messages:
            if not (isinstance(message, dict) and len(message) == 2 and "role" in message):
                break
            content = message.get("content")
            if not isinstance(content, str):
                break
            chars += len(content)
        else:
            return tokens_for_chars(chars) + 3 * len(messages)
    return counted_prompt_tokens(body)


def counted_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The general walk ``estimate_prompt_tokens`` falls back to, for any body shape."""
    messages = body.get("messages")
    overhead = 3 * len(messages) if isinstance(messages, list) else 0
    items = body.get("input")  # the Responses API's messages (embeddings' texts count no more)
    if isinstance(items, list) and items and isinstance(items[0], dict):
        overhead += 3 * len(items)
    chars = text_chars(body.get("messages")) + text_chars(body.get("system"))
    chars += text_chars(items) + text_chars(body.get("instructions"))
    return tokens_for_chars(chars) + overhead

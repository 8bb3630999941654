"""``POST /v1/messages/count_tokens`` where the account cannot count: the gateway's estimate.

Anthropic accounts count exactly (the request goes to their own count_tokens endpoint); other
accounts have no such endpoint, so the gateway answers from its estimate (four characters a
token, ``custos.providers.estimate``) in Anthropic's shape, marked by the response header
``x-custos-estimated: true`` so that a client can tell.
"""

from __future__ import annotations

from typing import Any

import orjson

from custos.providers.estimate import counted_prompt_tokens, tokens_for_chars

#: The header that marks an estimated count.
ESTIMATED_HEADER = (b"x-custos-estimated", b"true")


def estimated_count(body: dict[str, Any]) -> bytes:
    """``{"input_tokens": N}`` for a Messages request body: its text, its tool definitions."""
    tools = body.get("tools")
    tool_tokens = tokens_for_chars(len(orjson.dumps(tools))) if isinstance(tools, list) else 0
    return orjson.dumps({"input_tokens": counted_prompt_tokens(body) + tool_tokens})

"""The types every layer speaks: which client API a request came in on, what it asks for, the
token usage a provider reports, and the bounds on the numbers that flow through.

A bottom module: it imports nothing from ``custos``, so providers, translation, pricing and the
audit record can use these types without depending on the request context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

#: The client API a request came in on, and so the wire format of its answer and errors.
ApiProtocol = Literal["openai", "anthropic", "mcp"]
#: What a request asks for (``tool_call``: an MCP ``tools/call`` through ``/mcp/{name}``).
Operation = Literal["chat", "embeddings", "messages", "responses", "count_tokens", "tool_call"]

#: The largest count a request may ask for (``max_tokens``, ``n``, …) and the most tokens of a
#: kind a call is charged for: far past any model's window, and small enough that every count
#: and cost derived from it stays within the integers an audit record holds (``MAX_INT``).
MAX_TOKENS: Final = 2**31 - 1

#: The largest integer a record may hold: the range every JSON reader represents exactly.
MAX_INT: Final = 2**53 - 1


@dataclass(slots=True)
class Usage:
    """Normalised token usage. ``input_tokens`` includes cached and cache-write tokens;
    ``output_tokens`` includes reasoning tokens, as OpenAI counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: True when the provider did not report usage and the gateway estimated it.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def bounded(self) -> Usage:
        """Keep every count within ``0..MAX_TOKENS``: a provider that reports more (or less) is
        not believed, the count becomes the bound and the usage counts as estimated, so what is
        charged and recorded stays in range."""
        for name in _COUNTS:
            value = getattr(self, name)
            if not 0 <= value <= MAX_TOKENS:
                setattr(self, name, min(max(value, 0), MAX_TOKENS))
                self.estimated = True
        return self


_COUNTS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
           "reasoning_tokens")  # fmt: skip

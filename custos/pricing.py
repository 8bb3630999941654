"""Cost of a call in integer micro-dollars, from the price table of the config file.

Prices are USD per million tokens, which is the same number as micro-dollars per token. They are
held as whole pico-dollars per token (the config allows six decimals), so arithmetic is exact and
only the final sum is rounded, half up, to a micro-dollar.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from custos.config.schema import ModelSettings
from custos.wire import MAX_INT, Usage

_PICO_PER_MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Pico-dollars per token (and per request)."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    per_request: int

    #: The config says ``unpriced: allow``: every price is 0 and calls are counted by a metric.
    unpriced: bool = False

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ModelPrice:
        def pico(usd_per_mtok: Decimal) -> int:
            return int(usd_per_mtok * _PICO_PER_MICRO)

        if settings.input_per_mtok is None:
            return cls(0, 0, 0, 0, 0, unpriced=True)
        cached = settings.cached_input_per_mtok
        written = settings.cache_write_per_mtok
        return cls(
            input=pico(settings.input_per_mtok),
            output=pico(settings.output_per_mtok),
            cached_input=pico(cached if cached is not None else settings.input_per_mtok),
            cache_write=pico(written if written is not None else settings.input_per_mtok),
            per_request=int(settings.per_request_usd * 10**12),
        )

    def cost_micros(self, usage: Usage) -> int:
        uncached = max(usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0)
        pico = (
            uncached * self.input
            + usage.cached_input_tokens * self.cached_input
            + usage.cache_write_tokens * self.cache_write
            + usage.output_tokens * self.output
            + self.per_request
        )
        # At most MAX_INT: a cost is recorded, and prices have no upper bound.
        return min((pico + _PICO_PER_MICRO // 2) // _PICO_PER_MICRO, MAX_INT)

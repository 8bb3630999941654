"""The types routing works on: a model on an account (``ModelTarget``) and what a model name
resolves to (``ModelRoute``)."""

from __future__ import annotations

from dataclasses import dataclass

from custos.config.schema import CooldownSettings, RetrySettings, TimeoutSettings
from custos.pricing import ModelPrice
from custos.providers.base import ProviderAdapter

_NO_TIMEOUTS = TimeoutSettings()


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """One model on one provider account: what an attempt is made against."""

    name: str
    account: str
    model: str
    upstream_model: str
    adapter: ProviderAdapter
    price: ModelPrice
    region: str | None
    connect_timeout_s: float
    timeout_s: float
    #: The largest body read from the provider (its ``max_response_bytes``).
    max_response_bytes: int
    #: Pre-encoded ``x-custos-served-by`` value.
    served_by: bytes


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What a model name a client may ask for resolves to."""

    name: str
    targets: tuple[ModelTarget, ...]
    strategy: str
    weights: tuple[int, ...]
    retry: RetrySettings
    fallback_on: frozenset[int]
    virtual: bool
    timeouts: TimeoutSettings = _NO_TIMEOUTS
    #: ``None``: the route never skips a target for its failures.
    cooldown: CooldownSettings | None = None
    #: The metadata key whose value pins a caller to a target (``sticky.metadata``).
    sticky: str | None = None

    def first_event_s(self, stream: bool) -> float | None:
        """How long an attempt may take to answer (a plain call) or to start (a stream)."""
        timeouts = self.timeouts
        if stream and timeouts.first_token_s is not None:
            return timeouts.first_token_s
        return timeouts.attempt_s

"""Route: a requested model name → the ordered targets to try.

``priority`` tries targets in the order written; ``weighted`` draws the first target in proportion
to the weights and keeps the rest, in order, as fallbacks.
"""

from __future__ import annotations

import random

from custos.runtime import ModelTarget, Route


def candidates(route: Route, rng: random.Random | None = None) -> list[ModelTarget]:
    targets = list(route.targets)
    if route.strategy != "weighted" or len(targets) < 2 or not any(route.weights):
        return targets
    first = (rng or random).choices(range(len(targets)), weights=route.weights, k=1)[0]
    return [targets[first], *targets[:first], *targets[first + 1 :]]


def backoff_s(route: Route, retry_number: int) -> float:
    """Exponential backoff before retry ``retry_number`` (1-based) of the same target."""
    return route.retry.backoff_ms * (2 ** (retry_number - 1)) / 1000

"""Route: a requested model name → the ordered targets to try, and the loop that tries them.

Strategies order a virtual model's targets: ``priority`` in the order written; ``weighted`` draws
the first in proportion to the weights and keeps the rest, in order, as fallbacks; ``latency``
puts the target with the lowest moving average of time to first event first (an unmeasured or
stale one first of all, and now and then a random one, so a slow target that recovered is
noticed). With ``sticky``, a request carrying the metadata key goes to the targets in the order
rendezvous hashing gives its value, so the same value keeps the same target while it is healthy
and moves back when it is again.

``call_route`` tries them: each target up to ``retry.attempts`` times (with full jitter on the
exponential backoff), the next one when the failure's status is in ``fallback_on``; a target in
cooldown is skipped, and the skip is recorded beside the attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from custos.context import Skip
from custos.errors import GatewayError
from custos.routing.health import TargetHealth
from custos.routing.targets import ModelRoute, ModelTarget

if TYPE_CHECKING:
    from custos.context import RequestContext

__all__ = ["ModelRoute", "ModelTarget", "TargetHealth", "backoff_s", "call_route", "candidates"]

R = TypeVar("R")
#: One attempt on a target: a response, or the error that ended it.
AttemptFn = Callable[[ModelTarget], Awaitable[tuple[R | None, GatewayError | None]]]
#: How often the latency strategy tries a random target first.
EXPLORE = 0.05


def candidates(
    route: ModelRoute,
    rng: random.Random | None = None,
    *,
    health: TargetHealth | None = None,
    stream: bool = False,
    sticky_value: str | None = None,
) -> list[ModelTarget]:
    targets = list(route.targets)
    if len(targets) < 2:
        return targets
    draw = rng or random
    if sticky_value is not None:
        return _rendezvous(targets, route.weights, sticky_value)
    if route.strategy == "weighted" and any(route.weights):
        first = draw.choices(range(len(targets)), weights=route.weights, k=1)[0]
        return [targets[first], *targets[:first], *targets[first + 1 :]]
    if route.strategy == "latency" and health is not None:
        if draw.random() < EXPLORE:
            draw.shuffle(targets)
            return targets
        # Unknown first (-1), then fastest; the sort is stable, so ties keep their order.
        return sorted(targets, key=lambda t: _latency_rank(health, t, stream))
    return targets


def _latency_rank(health: TargetHealth, target: ModelTarget, stream: bool) -> float:
    seconds = health.latency_of(target, stream)
    return -1.0 if seconds is None else seconds


def _rendezvous(
    targets: list[ModelTarget], weights: tuple[int, ...], value: str
) -> list[ModelTarget]:
    """Targets by weighted rendezvous score for ``value``: adding or removing one target moves
    only the values that were (or will be) on it."""

    def score(index: int) -> float:
        weight = weights[index] if index < len(weights) else 1
        if weight <= 0:
            return -math.inf
        digest = hashlib.blake2b(f"{value}\0{targets[index].name}".encode(), digest_size=8).digest()
        unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
        return -weight / math.log(unit)

    order = sorted(range(len(targets)), key=score, reverse=True)
    return [targets[i] for i in order]


def backoff_s(route: ModelRoute, retry_number: int, rng: random.Random | None = None) -> float:
    """The wait before retry ``retry_number`` (1-based) of the same target: exponential, and
    with ``jitter: full`` drawn uniformly below that."""
    ceiling = route.retry.backoff_ms * (2 ** (retry_number - 1)) / 1000
    if route.retry.jitter == "full":
        return (rng or random).uniform(0, ceiling)
    return ceiling


async def call_route(
    ctx: RequestContext, route: ModelRoute, health: TargetHealth, attempt: AttemptFn[R]
) -> R:
    """Try the route's targets in order, retrying each as its policy says."""
    last: GatewayError | None = None
    skipped: list[ModelTarget] = []
    sticky = ctx.metadata.get(route.sticky) if route.sticky is not None else None
    order = candidates(route, health=health, stream=ctx.stream, sticky_value=sticky)
    for target in order:
        if not target.adapter.supports(ctx.operation):
            continue
        probe = False
        if route.cooldown is not None:
            admission = health.admit(route, target)
            if admission == "cooldown":
                ctx.skips.append(Skip(target.name, "cooldown"))
                health.skipped(route, target, "cooldown")
                skipped.append(target)
                continue
            probe = admission == "probe"
        for attempt_number in range(1, route.retry.attempts + 1):
            if attempt_number > 1:
                await asyncio.sleep(backoff_s(route, attempt_number - 1))
            response, last = await attempt(target)
            if route.strategy == "latency":
                _observe_latency(ctx, health, target, last)
            if response is not None:
                _succeeded(ctx, route, health, target, probe)
                return response
            assert last is not None
            if route.cooldown is not None:
                health.record(route, target, last.status in route.fallback_on, probe)
                probe = False
                if health.is_open(route, target):
                    break  # it just tripped: retrying it would defeat the cooldown
            if last.status not in route.retry.on_status:
                break
        if not route.virtual or last is None or last.status not in route.fallback_on:
            break
    if last is None:
        raise _all_cooling_down(route, health, skipped)
    raise last


def _succeeded(
    ctx: RequestContext, route: ModelRoute, health: TargetHealth, target: ModelTarget, probe: bool
) -> None:
    if route.cooldown is None:
        return
    if ctx.stream:  # a stream's outcome is known at its end (it may still break)
        ctx.report_outcome = partial(health.record, route, target, probe=probe)
    else:
        health.record(route, target, False, probe)


def _observe_latency(
    ctx: RequestContext, health: TargetHealth, target: ModelTarget, err: GatewayError | None
) -> None:
    """A served attempt's time to its first event; a timed-out one's time until it gave up
    (so the latency strategy moves away from it)."""
    made = ctx.attempts[-1] if ctx.attempts else None
    if made is None or made.target != target.name:
        return
    if err is None:
        ended = ctx.first_byte_ns if ctx.stream and ctx.first_byte_ns else time.monotonic_ns()
    elif err.code == "upstream_timeout":
        ended = made.started_ns + made.latency_ms * 1_000_000
    else:
        return
    health.observe_latency(target, ctx.stream, (ended - made.started_ns) / 1e9)


def _all_cooling_down(
    route: ModelRoute, health: TargetHealth, skipped: list[ModelTarget]
) -> GatewayError:
    wait = health.retry_after_s(route, skipped)
    return GatewayError(
        503,
        "upstream_cooldown",
        f"every target of '{route.name}' is cooling down after repeated failures; "
        f"try again in {math.ceil(wait)}s",
        headers={"retry-after": str(max(1, math.ceil(wait)))},
    )

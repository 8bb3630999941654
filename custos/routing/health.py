"""What routing knows about its targets: cooldowns (a circuit breaker per virtual model and
target) and a moving average of each target's time to first token.

The request path only reads and updates this process's view, in memory. ``TargetHealth`` decides
cooldowns itself (one gateway); ``custos.routing.shared.SharedHealth`` sends the outcomes to
Redis, which decides for every replica, and refreshes the view from there.

A breaker is closed (the target is tried), open (skipped until its cooldown ends) or, once the
cooldown is over, lets one request through as a probe: an answer closes it, a failure opens it
again. A probe that never reports (its replica died) is replaced after another ``cooldown_s``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from custos.config.schema import CooldownSettings
from custos.routing.targets import ModelRoute, ModelTarget
from custos.telemetry import metrics

Admission = Literal["closed", "probe", "cooldown"]

#: Weight of the newest time-to-first-token sample in a target's moving average.
LATENCY_ALPHA = 0.3
#: A target's average older than this is treated as unknown, so it is measured again.
LATENCY_STALE_S = 30.0


@dataclass(slots=True)
class Breaker:
    """One (virtual model, target) pair's recent outcomes and cooldown, in monotonic time."""

    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    #: ``None`` while closed; else when the cooldown ends (in the past: a probe may go).
    open_until: float | None = None
    #: Until when the probe that was let through holds its turn (0: none out).
    probe_until: float = 0.0


def breaker_key(route: ModelRoute, target: ModelTarget) -> str:
    return f"{route.name}|{target.name}"


class TargetHealth:
    """This process's view of its targets; decides cooldowns on its own."""

    def __init__(self) -> None:
        self.breakers: dict[str, Breaker] = {}
        #: (target, streaming) → (average seconds to the first event, when last measured).
        self.latency: dict[tuple[str, bool], tuple[float, float]] = {}

    # -- the request path ----------------------------------------------------------------

    def admit(self, route: ModelRoute, target: ModelTarget) -> Admission:
        """May ``target`` be tried now? Takes the probe's turn when the cooldown is over."""
        breaker = self.breakers.get(breaker_key(route, target))
        if breaker is None or breaker.open_until is None:
            return "closed"
        now = time.monotonic()
        if now < breaker.open_until or now < breaker.probe_until:
            return "cooldown"
        assert route.cooldown is not None
        breaker.probe_until = now + route.cooldown.cooldown_s
        return "probe"

    def is_open(self, route: ModelRoute, target: ModelTarget) -> bool:
        breaker = self.breakers.get(breaker_key(route, target))
        return breaker is not None and breaker.open_until is not None

    def retry_after_s(self, route: ModelRoute, targets: list[ModelTarget]) -> float:
        """Seconds until the first of ``targets`` may be tried again."""
        now = time.monotonic()
        ends = [
            max(b.open_until, b.probe_until) - now
            for t in targets
            if (b := self.breakers.get(breaker_key(route, t))) is not None
            and b.open_until is not None
        ]
        return max(0.0, min(ends, default=0.0))

    def skipped(self, route: ModelRoute, target: ModelTarget, reason: str) -> None:
        metrics.child(metrics.TARGET_SKIPS, route.name, target.name, reason).inc()

    def record(self, route: ModelRoute, target: ModelTarget, failed: bool, probe: bool) -> None:
        """The outcome of an attempt on a route with a cooldown."""
        settings = route.cooldown
        if settings is not None:
            self.decide(breaker_key(route, target), settings, failed, probe, time.monotonic())

    def decide(
        self, key: str, settings: CooldownSettings, failed: bool, probe: bool, now: float
    ) -> None:
        """The breaker's rule (``custos.routing.shared`` runs the same one in Redis)."""
        breaker = self.breakers.setdefault(key, Breaker())
        if probe:
            breaker.probe_until = 0.0
            self._set_open(key, breaker, now + settings.cooldown_s if failed else None)
            return
        if breaker.open_until is not None:
            return  # an attempt that started before the cooldown: the probe decides
        outcomes = breaker.outcomes
        outcomes.append((now, failed))
        while len(outcomes) > settings.last:
            outcomes.popleft()
        if not failed:
            return
        since = now - settings.window_s
        if sum(1 for at, bad in outcomes if bad and at >= since) >= settings.failures:
            self._set_open(key, breaker, now + settings.cooldown_s)

    def _set_open(self, key: str, breaker: Breaker, until: float | None) -> None:
        breaker.open_until = until
        breaker.outcomes.clear()
        route_name, _, target = key.partition("|")
        metrics.child(metrics.TARGET_COOLDOWN, route_name, target).set(0 if until is None else 1)

    # -- latency -------------------------------------------------------------------------

    def observe_latency(self, target: ModelTarget, stream: bool, seconds: float) -> None:
        key = (target.name, stream)
        now = time.monotonic()
        known = self.latency.get(key)
        if known is None or now - known[1] > LATENCY_STALE_S:
            average = seconds
        else:
            average = known[0] + LATENCY_ALPHA * (seconds - known[0])
        self.latency[key] = (average, now)
        metrics.child(metrics.TARGET_LATENCY, target.name, "stream" if stream else "plain").set(
            average
        )

    def latency_of(self, target: ModelTarget, stream: bool) -> float | None:
        """The target's average, or ``None`` when unknown or stale (it gets measured first)."""
        known = self.latency.get((target.name, stream))
        if known is None or time.monotonic() - known[1] > LATENCY_STALE_S:
            return None
        return known[0]

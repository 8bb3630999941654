"""Counters and histograms for the request path, updated without a lock.

``prometheus_client``'s metrics are safe to update from any thread: every ``inc`` and
``observe`` checks its arguments and takes a lock, some 4,000 instructions for an ``inc`` and
9,000 for an ``observe`` (callgrind). A request updates a dozen of them, so the metrics alone
came to about 3 % of a governed request's instructions. The metrics here keep the same names,
labels and exposition, but a child is a plain object whose ``inc`` is one addition: they must
be updated only from the event loop's thread (every request stage runs there). Metrics changed
from other threads (the audit writer's, the spool's) stay ``prometheus_client`` ones.

A family registers itself as a collector of the registry it is given; ``collect`` runs when
``/metrics`` is scraped and reads the children as they are at that moment::

    REQUESTS = LoopCounter("custos_requests", "Requests by route and status.",
                           ["route", "status"], REGISTRY)
    REQUESTS.labels("/v1/chat/completions", "200").inc()
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: Observations per bucket, not cumulative (the last one is ``+Inf``'s).
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _Family:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:  # fmt: skip
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        registry.register(self)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")


class LoopCounter(_Family):
    """A labelled counter (exposed as ``NAME_total``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:  # fmt: skip
        self._children: dict[tuple[str, ...], CounterChild] = {}
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = CounterChild()
        return child

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class LoopHistogram(_Family):
    """A labelled histogram with fixed bucket bounds (``+Inf`` added)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry, buckets: Sequence[float]) -> None:  # fmt: skip
        self.bounds = tuple(sorted(float(b) for b in buckets if b != math.inf))
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, list(child.counts), strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
        yield family

"""The request path's lock-free metrics expose exactly what ``prometheus_client``'s would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from custos.telemetry.loop_metrics import LoopCounter, LoopHistogram

BOUNDS = (0.001, 0.005, 0.01, 1, 5)


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines without ``_created`` samples (their times differ)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_counter_and_histogram_expose_what_prometheus_client_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("x_requests", "Requests.", ["route", "status"], registry=theirs)
    histogram = Histogram("x_seconds", "Time.", ["route"], buckets=BOUNDS, registry=theirs)
    loop_counter = LoopCounter("x_requests", "Requests.", ["route", "status"], ours)
    loop_histogram = LoopHistogram("x_seconds", "Time.", ["route"], ours, BOUNDS)
    calls = [("/a", "200", 0.0004), ("/a", "200", 0.005), ("/a", "404", 0.01),
             ("/b", "200", 7.5), ("/b", "500", 1)]  # fmt: skip
    for route, status, seconds in calls:
        counter.labels(route, status).inc()
        loop_counter.labels(route, status).inc()
        histogram.labels(route).observe(seconds)  # 0.005, 0.01 and 1 sit on a bound: le
        loop_histogram.labels(route).observe(seconds)
    counter.labels("/a", "200").inc(2.5)
    loop_counter.labels("/a", "200").inc(2.5)
    assert _exposed(ours) == _exposed(theirs)
    assert re.search(
        r'x_requests_created\{route="/a",status="200"\} \d', generate_latest(ours).decode()
    )


def test_wrong_label_count_is_refused() -> None:
    registry = CollectorRegistry()
    family = LoopCounter("x_total_things", "Things.", ["kind"], registry)
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("a", "b")
    with pytest.raises(ValueError):  # a second family of the same name in one registry
        LoopCounter("x_total_things", "Things.", ["kind"], registry)

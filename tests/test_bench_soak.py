"""``bench/run.sh --soak``: the mix it sends, the slope and the verdicts it prints."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak


def test_the_mix_is_spread_over_the_cycle() -> None:
    order = soak.interleave(soak.MIX)
    assert Counter(order) == soak.MIX
    # every stretch of ten requests holds at least one stream and no more than three
    for start in range(len(order) - 10):
        assert 1 <= order[start : start + 10].count("stream") <= 3


def sample(requests: int, rss_mb: float, spool_mb: float, phase: str = "load") -> dict[str, Any]:
    return {
        "phase": phase,
        "requests": requests,
        "rss_kb": int(rss_mb * 1024),
        "hwm_kb": int(rss_mb * 1024),
        "rss_anon_kb": int(rss_mb * 1024) - 20_000,
        "spool_bytes": int(spool_mb * 2**20),
        "store_bytes": requests * 5000,
        "open_files": 20,
        "threads": 7,
    }


def result(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": samples,
        "answers": {"total": 50, "streams": 10, "statuses": {200: 45, 403: 2, 400: 2, 429: 1}},
        "expected_share": soak.expected_shares(),
        "disconnects": {"started": 5, "left": 5, "other_status": 0, "ended": 0, "errors": 0},
    }


def test_a_flat_curve_and_a_sawtooth_spool_pass() -> None:
    samples = [sample(0, 90, 0, "before load")]
    samples += [sample(n * 10_000, 120 + (n % 2) * 0.5, (n % 4) * 2) for n in range(1, 101)]
    samples += [sample(1_000_000, 120, 1, "end of load"), sample(1_000_000, 120, 0.5, "idle")]
    figures = soak.figures(result(samples))
    assert abs(figures["rss_mb"]["slope_second_half_mb_per_100k"]) < 0.1
    assert figures["verdicts"] == {
        "rss_no_trend": True,
        "rss_peak_within_budget": True,
        "rss_flat": True,
        "spool_bounded": True,
        "mix_as_sent": True,
        "disconnects_mid_stream": True,
    }


def test_growth_and_a_filling_spool_are_reported() -> None:
    # 2 MB per 100k requests (20 bytes a request), a spool that never empties
    samples = [sample(n * 10_000, 100 + n * 0.2, n * 0.5) for n in range(1, 101)]
    samples.append(sample(1_000_000, 120, 50, "idle"))
    figures = soak.figures(result(samples))
    assert figures["rss_mb"]["slope_second_half_mb_per_100k"] == 2.0
    assert figures["verdicts"]["rss_flat"] is False
    assert figures["verdicts"]["spool_bounded"] is False

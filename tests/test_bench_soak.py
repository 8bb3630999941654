"""``bench/run.sh --soak``: the mix it sends, the slope and the verdicts it prints, and a short
soak against a real gateway that answers every kind as the mix says, leaves streams half-way
and writes its samples and plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402


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


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("taskset")), reason="wrk and taskset needed"
)
def test_a_short_soak_serves_the_mix_and_plots_it(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    available = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "BENCH_SOAK_SAMPLE_S": "0.5", "BENCH_SOAK_DISCONNECTS": "20",
           "BENCH_CONNECTIONS": "16", "BENCH_GATEWAY_CPU": str(available[0]),
           "BENCH_LOAD_CPU": str(available[-1])}  # fmt: skip
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "bench" / "run.py"), "--soak",
         "--requests", "3000", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RSS slope over the second half" in done.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "soak" and report["problems"] == []
    answers = report["results"]["answers"]
    assert answers["total"] == 3000
    # the mix's shares, give or take the 16 requests in flight when the count reached 3,000
    expected = {"200": 2700, "403": 120, "400": 120, "429": 60}
    assert set(answers["statuses"]) == set(expected)
    for status, n in expected.items():
        assert answers["statuses"][status] == pytest.approx(n, abs=16)
    assert answers["streams"] == pytest.approx(600, abs=16)
    assert report["results"]["disconnects"]["left"] > 0
    samples = report["results"]["samples"]
    assert [s["phase"] for s in samples[:2]] == ["before load", "load"]
    assert samples[-1]["requests"] >= 3000 and all(s["rss_kb"] > 0 for s in samples)
    assert report["figures"]["store_bytes_per_request"] > 0
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""``bench/run.py --compare``: each verdict carries the change of every round, measured within
that round, beside the change of the medians."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import run


def rounds(figures: list[float]) -> list[dict[str, Any]]:
    return [
        {"round": n + 1, "requests_per_s": rps, "cpu": {"gateway_cpu_pct": 100.0}}
        for n, rps in enumerate(figures)
    ]


def test_each_round_is_compared_within_itself() -> None:
    # The machine slows down during the run; within each round the audit trail costs 10 %.
    runs = {
        "limits": rounds([4000, 3000, 2000]),
        "audit": rounds([3600, 2700, 1800]),
    }
    verdicts = run.compare_verdicts(run.compare_figures(runs), runs)
    (audit,) = [v for v in verdicts if v["variant"] == "audit"]
    assert audit["per_round_change_pct"] == [-10.0, -10.0, -10.0]
    assert audit["throughput_change_pct"] == -10.0
    assert run.paired_changes(runs, "audit", "missing") == []
    # A round whose base run is missing is left out, not compared with another round's.
    runs["limits"] = runs["limits"][1:]
    assert run.paired_changes(runs, "audit", "limits") == [-10.0, -10.0]


def test_the_issue_ratios_come_from_the_same_rounds() -> None:
    # guarded at half of passthrough non-streaming, streams measured in each round too
    runs = {"passthrough": rounds([4000, 3000, 2000]), "guarded": rounds([2400, 1500, 1300])}
    for variant, streams in (("passthrough", [3000, 2000, 1000]), ("guarded", [1500, 1400, 700])):
        for result, rps in zip(runs[variant], streams, strict=True):
            result["stream"] = {"requests_per_s": rps, "cpu": {"gateway_cpu_pct": 100.0}}
    figures = run.compare_figures(runs)
    assert figures["guarded"]["stream_rps_median"] == 1400
    plain, streams = run.compare_ratios(figures, runs)
    assert (plain["figure"], plain["ratio"], plain["ok"]) == ("non-streaming", 0.5, False)
    assert plain["per_round"] == [0.6, 0.5, 0.65]
    assert (streams["ratio"], streams["ok"]) == (0.7, True)
    assert streams["per_round"] == [0.5, 0.7, 0.7]
    # every run at 100 % of the core: the CPU ratio is the throughput ratio
    assert (plain["cpu_ratio"], streams["cpu_ratio"]) == (0.5, 0.7)
    # without both variants there is no ratio to print
    assert run.compare_ratios({"guarded": figures["guarded"]}, runs) == []

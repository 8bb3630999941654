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

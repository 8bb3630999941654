"""``bench/store_cost.py`` still runs against the current schema and stores what it measures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_store_cost_measures_every_record_stored() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store_cost.py"), "--records", "300",
         "--batch", "40"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = re.findall(
        r"^(.+?): +([\d.]+) µs a record \(user [\d.]+, system [\d.]+\)", done.stdout, re.M
    )
    assert [what for what, _ in figures] == ["AuditStore.insert", "sqlite3 alone, same rows"]
    assert all(float(cpu) > 0 for _, cpu in figures)
    assert "300 records of" in done.stdout

"""``bench/tool_report.py``: how long the tool-call report takes over a seeded quarter.

    .venv/bin/python bench/tool_report.py [--store URL] [--calls N] [--repeat R]

Inserts ``N`` (default 200,000) ``mcp.tool_call`` records spread over Q3 2026 (the test suite's
generator, ``tests/test_audit_tool_calls.py``: 3 teams, 4 tools on 3 servers, six endings)
through ``AuditStore.insert`` in batches of 2,000 (as the writer ships them) into a fresh store
(SQLite in a temporary directory unless ``--store`` names a PostgreSQL database, whose
``custos_bench_tools`` schema is dropped and made again), then times ``build_tool_report`` for the
quarter, ``R`` times for each grouping, and prints the best and the median in milliseconds.
Run it from the repository's root (it imports ``tests``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custos.audit.compliance.report import parse_range
from custos.audit.compliance.tool_report import build_tool_report, parse_group_by
from custos.audit.records.record import unix_ms
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store
from tests.test_audit_tool_calls import QUARTER_END, QUARTER_START, sealed, tool_call

GROUPINGS = ("team,server,tool", "team,server,tool,outcome,stage", "principal,tool", "day")
SCHEMA = "custos_bench_tools"


async def _fresh(url: str | None, directory: str) -> str:
    if url is None:
        return f"sqlite:///{directory}/custos.db"
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    finally:
        await conn.close()
    return f"{url}{'&' if '?' in url else '?'}search_path={SCHEMA}"


async def main(url: str | None, calls: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = await open_store(await _fresh(url, directory))
        try:
            audit = AuditStore(store)
            rng = random.Random(1)
            first, span = unix_ms(QUARTER_START), unix_ms(QUARTER_END) - unix_ms(QUARTER_START)
            started = time.perf_counter()
            for start in range(0, calls, 2000):
                times = sorted(first + rng.randrange(span) for _ in range(min(2000, calls - start)))
                await audit.insert(sealed([tool_call(at, rng, start + i)
                                           for i, at in enumerate(times)]))  # fmt: skip
            seeded = time.perf_counter() - started
            print(f"{store.dialect}: {calls} tool calls inserted in {seeded:.1f} s "
                  f"({seeded / calls * 1e6:.0f} µs a record)")  # fmt: skip
            since, until = parse_range("2026-07-01", "2026-09-30")
            for grouping in GROUPINGS:
                group_by = parse_group_by(grouping)
                spent = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    report = await build_tool_report(audit, since=since, until=until,
                                                     group_by=group_by)  # fmt: skip
                    spent.append((time.perf_counter() - began) * 1000)
                assert report["totals"]["calls"] == calls
                print(f"  --group-by {grouping}: {len(report['rows'])} rows, best "
                      f"{min(spent):.0f} ms, median {statistics.median(spent):.0f} ms")  # fmt: skip
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a PostgreSQL URL (default: SQLite, temporary)")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.store, args.calls, args.repeat))

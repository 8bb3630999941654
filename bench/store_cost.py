"""``bench/store_cost.py``: what the audit store costs per record, apart from the gateway.

    .venv/bin/python bench/store_cost.py [--store URL] [--records N] [--batch B] [--log]
        [--metadata]

``--compare`` and ``--instructions`` (bench/run.py) measure the whole audit trail inside a
loaded gateway, where the store's share cannot be told from the rest. This inserts ``N``
``llm.call`` records shaped like those the benchmark's traffic produces through
``AuditStore.insert``, ``B`` at a time (as the writer ships them), into a fresh store, and prints
the CPU time of this process per record, user and system (``getrusage``: every thread, so
SQLite's worker thread is counted; a PostgreSQL server's own work is not). ``--log`` also
appends the records to the Merkle log, as ``custos serve`` does.

With SQLite it also inserts the same rows with ``sqlite3`` alone (same tables, same batches, no
custos code): the floor that SQLite itself sets, against which the store's own overhead reads.
Run it on an idle machine; the figures move by several per cent between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import sys
import tempfile
import time
from typing import Any

from custos.audit.log.merkle import Frontier
from custos.audit.records.record import SealedRecord, rfc3339_ms, seal
from custos.audit.storage import store as audit_store
from custos.state.backends import open_store
from custos.state.migrations import m0003_audit, m0006_audit_lean, m0008_audit_type_index

#: 2026-07-01T00:00:00Z
START_MS = 1_782_864_000_000


#: ``--metadata``: what the calls carry in ``X-Custos-Metadata`` (two keys, 16 values).
PROJECTS = [f"project-{n}" for n in range(8)]


def record(n: int, metadata: bool = False) -> SealedRecord:
    """A served ``llm.call`` record as the benchmark's requests produce (1.6 KB sealed), three
    a millisecond; with ``metadata``, a project and an environment."""
    at_ms = START_MS + n // 3
    fields: dict[str, Any] = {
        "event_type": "llm.call", "request_id": f"{n:024x}",
        "time_start": rfc3339_ms(at_ms), "time_end": rfc3339_ms(at_ms + 17),
        "gateway.instance": "bench", "gateway.version": "0.1.0", "config.revision": "b3" * 32,
        "principal.kind": "user", "principal.id": "usr_ad2925691a826a9d76f8",
        "principal.teams": ["bench"], "team": "bench", "auth.token_id": "tok_8c16fb1d9c7da17c2ea4",
        "metadata": {"project": PROJECTS[n % 8], "environment": ["prod", "staging"][n % 2]}
        if metadata else {},
        "data_classes": [], "api.protocol": "openai",
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "bench-openai/gpt-5.5",
        "gen_ai.request.stream": False, "gen_ai.request.max_tokens": None,
        "gen_ai.provider.name": "openai", "provider.account": "bench-openai",
        "provider.model": "gpt-5.5", "provider.upstream_model": "gpt-5.5", "cloud.region": None,
        "attempts": [{"target": "bench-openai/gpt-5.5", "region": None, "status": 200,
                      "error": None, "offset_ms": 0, "latency_ms": 17}],
        "decisions": [
            {"stage": "authorize", "rule": "bench-all-models", "decision": "allow"},
            {"stage": "budget", "rule": "bench-per-team", "decision": "allow"},
            {"stage": "rate_limit", "rule": "bench-per-user", "decision": "allow"},
        ],
        "limits.estimated_input_tokens": 4, "limits.estimated_output_tokens": 256,
        "limits.reserved_micros": 2565,
        "http.response.status_code": 200, "outcome": "served", "stopped_at": None,
        "error.type": None, "gen_ai.usage.input_tokens": 16, "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 0, "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0, "usage.estimated": False,
        "cost_micros": 220, "currency": "USD", "latency_ms": 17, "time_to_first_chunk_ms": None,
    }  # fmt: skip
    return seal(fields, at_ms=at_ms, check=False)


class CpuMeter:
    """CPU time of this process (all threads) between ``__enter__`` and ``__exit__``."""

    def __enter__(self) -> CpuMeter:
        self._start = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        self.user_s = end.ru_utime - self._start.ru_utime
        self.system_s = end.ru_stime - self._start.ru_stime

    def per(self, n: int) -> str:
        user, system = self.user_s / n * 1e6, self.system_s / n * 1e6
        return f"{user + system:6.1f} µs a record (user {user:.1f}, system {system:.1f})"


async def through_store(url: str, records: list[SealedRecord], batch: int, log: bool) -> str:
    if not log:  # as bench/variant.py's audit variant: stored, not appended to the log

        async def unlogged(tx: Any, leaves: Any, **_: Any) -> Frontier:
            return Frontier()

        audit_store.append_leaves = unlogged  # type: ignore[assignment]
    store = await open_store(url)
    try:
        audit = audit_store.AuditStore(store)
        before = await audit.count()
        with CpuMeter() as cpu:
            for start in range(0, len(records), batch):
                await audit.insert(records[start : start + batch])
        _check_stored(await audit.count() - before, len(records))
    finally:
        await store.close()
    return cpu.per(len(records))


def _check_stored(stored: int, sent: int) -> None:
    """A figure per record means nothing unless every record was stored, once."""
    if stored != sent:
        raise SystemExit(f"store_cost: {stored:,} records stored of {sent:,} sent")


def sqlite_alone(path: str, records: list[SealedRecord], batch: int) -> str:
    """The same events and projection rows, bound and inserted with ``sqlite3`` only, with
    the store's settings (WAL, ``synchronous = FULL``) and indexes."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for script in (m0003_audit.SQLITE, m0006_audit_lean._DROPPED, m0008_audit_type_index.SQLITE):
        conn.executescript(script)
    events = "INSERT INTO audit_events (event_id, event_type, at, record, leaf_hash, received_at)"
    values = ", ".join("?" * 23)
    text = audit_store._sqlite_time
    now = audit_store._sqlite_time(time.time_ns() // 1_000_000)
    rows = [
        (r.event_id, r.event_type, text(r.at_ms), r.body, r.leaf_hash, now)
        for r in records
    ]  # fmt: skip
    calls = [
        (r.event_id, text(r.at_ms), text(r.at_ms + r.fields["latency_ms"]),
         *audit_store._call_values(r.fields))
        for r in records
    ]  # fmt: skip
    with CpuMeter() as cpu:
        for start in range(0, len(records), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"{events} VALUES (?, ?, ?, ?, ?, ?)", rows[start : start + batch])
            conn.executemany(
                f"INSERT INTO audit_llm_calls VALUES ({values})", calls[start : start + batch]
            )
            conn.execute("COMMIT")
    _check_stored(conn.execute("SELECT count(*) FROM audit_llm_calls").fetchone()[0], len(rows))
    conn.close()
    return cpu.per(len(records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a postgresql:// URL (default: a fresh SQLite file)")
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=150)
    parser.add_argument("--log", action="store_true", help="append to the Merkle log too")
    parser.add_argument("--metadata", action="store_true", help="calls carry two metadata keys")
    args = parser.parse_args(argv)
    records = [record(n, args.metadata) for n in range(args.records)]
    size = sum(len(r.body) for r in records) // len(records)
    print(f"{args.records:,} records of {size:,} bytes, {args.batch} a transaction")
    with tempfile.TemporaryDirectory(prefix="custos-store-cost-") as tmp:
        url = args.store or f"sqlite:///{tmp}/audit.db"
        began = time.perf_counter()
        figure = asyncio.run(through_store(url, records, args.batch, args.log))
        seconds = time.perf_counter() - began
        what = "AuditStore.insert" + (" and the Merkle log" if args.log else "")
        print(f"{what}: {figure}; {args.records / seconds:,.0f} records/s")
        if not args.store:
            raw = sqlite_alone(os.path.join(tmp, "raw.db"), records, args.batch)
            print(f"sqlite3 alone, same rows: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading the audit trail by event type: page after page in insertion order, each page read
from an index in that order (migration 0008), not by sorting every remaining record again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from custos.audit.records.record import SealedRecord, rfc3339_ms, seal
from custos.audit.storage.store import AuditStore
from custos.state import sqlite as sqlite_store
from custos.state.backends import open_store
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

#: 2026-07-01T00:00:00Z
JULY = 1_782_864_000_000


def event(n: int, event_type: str) -> SealedRecord:
    return seal(
        {"event_type": event_type, "time_start": rfc3339_ms(JULY + n), "request_id": f"r{n}"},
        at_ms=JULY + n,
    )


async def test_pages_of_one_type_come_in_insertion_order(store: Store) -> None:  # noqa: F811
    records = [event(n, "auth.failure" if n % 3 else "config.revision") for n in range(60)]
    audit = AuditStore(store)
    for start in range(0, len(records), 7):
        await audit.insert(records[start : start + 7])
    pages: list[list[str]] = []
    after = 0
    while page := await audit.events(after=after, limit=9, event_type="auth.failure"):
        pages.append([e.event_id for e in page])
        after = page[-1].ingest_id
    wanted = [r.event_id for r in records if r.event_type == "auth.failure"]
    assert [i for p in pages for i in p] == wanted
    assert all(len(p) == 9 for p in pages[:-1])
    assert await audit.count("auth.failure") == len(wanted)


async def test_a_page_of_one_type_is_read_in_index_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's plan for a page (PostgreSQL's planner chooses by its statistics)."""
    db = await open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    asked: list[tuple[str, tuple[Any, ...]]] = []
    fetch = sqlite_store._SQLiteTx.fetch

    async def recording(self: Any, sql: str, *args: Any) -> Any:
        asked.append((sql, args))
        return await fetch(self, sql, *args)

    try:
        monkeypatch.setattr(sqlite_store._SQLiteTx, "fetch", recording)
        await AuditStore(db).events(after=5, limit=100, event_type="llm.call")
        ((sql, args),) = asked
        async with db.transaction(readonly=True) as tx:
            rows = await fetch(tx, "EXPLAIN QUERY PLAN " + sql, *args)
    finally:
        await db.close()
    plan = " | ".join(r["detail"] for r in rows)
    assert "audit_events_type" in plan and "TEMP B-TREE" not in plan, plan

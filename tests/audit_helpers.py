"""Reading the audit trail of a test gateway straight from its store (SQLite file or PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from custos.audit.record import leaf_hash
from custos.state.store import open_store

T = TypeVar("T")


async def _query(store_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    store = await open_store(store_url, migrate=False)
    try:
        async with store.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *args)
    finally:
        await store.close()


def query(store_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    return asyncio.run(_query(store_url, sql, *args))


def stored_records(store_url: str, event_type: str | None = None) -> list[dict[str, Any]]:
    """Every stored record (parsed), after checking its leaf hash matches its bytes."""
    rows = query(store_url, "SELECT * FROM audit_events ORDER BY ingest_id")
    out = []
    for row in rows:
        body = bytes(row["record"])
        assert bytes(row["leaf_hash"]) == leaf_hash(body)
        record = orjson.loads(body)
        if event_type is None or record["event_type"] == event_type:
            out.append(record)
    return out


def call_records(store_url: str, request_id: str) -> list[dict[str, Any]]:
    return [r for r in stored_records(store_url, "llm.call") if r["request_id"] == request_id]


def eventually(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 10.0) -> T:
    """``fetch()`` until ``ok`` holds of its result (then return it) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def one_call(store_url: str, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one ``llm.call`` record of ``request_id``; fails unless there is exactly one (and
    still exactly one a moment later)."""
    found = eventually(lambda: call_records(store_url, request_id), bool, timeout)
    assert len(found) == 1, f"{len(found)} records for request {request_id}"
    time.sleep(0.15)  # a second record, if one were written, would be shipped by now
    again = call_records(store_url, request_id)
    assert len(again) == 1, f"{len(again)} records for request {request_id}"
    return found[0]

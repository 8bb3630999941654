"""The query projections (``audit_llm_calls``, ``audit_llm_call_data_classes``) on SQLite
(bound from the records' fields) and PostgreSQL (derived by the database from the stored
bytes): every value equals the record's field, with the column's type; a record stored twice
projects once; records other than ``llm.call`` project nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from custos.audit.records.record import SealedRecord, rfc3339_ms, seal
from custos.audit.storage.store import AuditStore
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 2026-07-01T00:00:00Z
JULY = 1_782_864_000_000

#: audit_llm_calls column → the record key it holds (times are checked on their own).
COLUMNS = {
    "request_id": "request_id",
    "team": "team",
    "principal_kind": "principal.kind",
    "principal_id": "principal.id",
    "token_id": "auth.token_id",
    "operation": "gen_ai.operation.name",
    "requested_model": "gen_ai.request.model",
    "provider": "provider.account",
    "provider_name": "gen_ai.provider.name",
    "model": "provider.model",
    "region": "cloud.region",
    "status": "http.response.status_code",
    "outcome": "outcome",
    "stopped_at": "stopped_at",
    "error_type": "error.type",
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cost_micros": "cost_micros",
    "latency_ms": "latency_ms",
    "config_revision": "config.revision",
}


def call(n: int, at_ms: int, latency_ms: int, **fields: Any) -> SealedRecord:
    """A served ``llm.call`` record shaped as ``custos.audit.records.events.llm_call`` builds it,
    with ``fields`` replacing the defaults."""
    record: dict[str, Any] = {
        "event_type": "llm.call",
        "request_id": f"req_{n:06d}",
        "time_start": rfc3339_ms(at_ms),
        "time_end": rfc3339_ms(at_ms + latency_ms),
        "gateway.instance": "test-1",
        "gateway.version": "0",
        "config.revision": "c" * 64,
        "principal.kind": "user",
        "principal.id": f"usr_{n:020d}",
        "principal.teams": ["research"],
        "team": "research",
        "auth.token_id": f"tok_{n}",
        "metadata": {"run": f"r{n}"},
        "data_classes": [],
        "api.protocol": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "openai-main/gpt-5.5",
        "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": None,
        "gen_ai.provider.name": "openai",
        "provider.account": "openai-main",
        "provider.model": "gpt-5.5",
        "provider.upstream_model": "gpt-5.5-2026",
        "cloud.region": "us",
        "attempts": [],
        "decisions": [],
        "http.response.status_code": 200,
        "outcome": "served",
        "stopped_at": None,
        "error.type": None,
        "gen_ai.usage.input_tokens": 1200 + n,
        "gen_ai.usage.output_tokens": 300 + n,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "usage.estimated": False,
        "cost_micros": 4_503_599_627_370_495 - n,  # near the largest integer a record holds
        "currency": "USD",
        "latency_ms": latency_ms,
        "time_to_first_chunk_ms": None,
    }
    record.update(fields)
    return seal(record, at_ms=at_ms)


#: record 6's time_end, written with an offset instead of ``Z``.
LATER_END = "2026-07-01T00:00:40.012+00:00"


def varied() -> list[SealedRecord]:
    denied = {
        "outcome": "denied", "stopped_at": "rate_limit", "error.type": "rate_limit_exceeded",
        "http.response.status_code": 429, "gen_ai.provider.name": None, "provider.account": None,
        "provider.model": None, "provider.upstream_model": None, "cloud.region": None,
        "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0, "cost_micros": 0,
        "principal.kind": None, "principal.id": None, "auth.token_id": None, "team": None,
        "gen_ai.request.model": None,
    }  # fmt: skip
    classes = [
        {"class": "customer_data", "count": 3, "source": "declared"},
        {"class": "pii.email", "count": None, "source": "declared"},
        {"class": "pii.email", "count": 7, "source": "detector.email"},
        {"class": "customer_data", "count": 9, "source": "declared"},  # a repeat: the first stays
    ]
    # Not projected, but in the bytes the projections are read from.
    metadata = {"note": "naïve café ☕", "nul": "a\u0000b", "slash": "\\u0000 stays"}
    return [
        call(1, JULY + 999, 1, data_classes=classes),  # time_end in the next second
        call(2, JULY - 1, 86_400_001, **denied),  # before midnight, ends a day later
        call(3, JULY + 12_345, 40, team="équipe-データ", metadata=metadata),
        # A NUL in a projected field (PostgreSQL text cannot hold it), and the escape's text.
        call(4, JULY + 20_000, 5, **{"gen_ai.request.model": "m\u0000x\\u0000y"}),
        call(5, JULY + 30_000, 0, data_classes=[{"class": "x", "count": 0, "source": "s"}]),
        # Times in other RFC 3339 shapes than the gateway writes (a record from elsewhere,
        # replayed): the same instants are stored.
        call(6, JULY + 40_000, 12, time_start="2026-07-01T00:00:40Z", time_end=LATER_END),
    ]


def expected_time(dialect: str, ms: int) -> Any:
    moment = EPOCH + timedelta(milliseconds=ms)
    if dialect == "sqlite":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return moment


def expected_value(dialect: str, value: Any) -> Any:
    # PostgreSQL text cannot hold a NUL character: its projections have U+FFFD in its place.
    # SQLite's hold the value as bound.
    if dialect == "postgresql" and isinstance(value, str):
        return value.replace("\u0000", "\ufffd")
    return value


def expected_call(dialect: str, r: SealedRecord) -> dict[str, Any]:
    f = r.fields
    row = {column: expected_value(dialect, f[key]) for column, key in COLUMNS.items()}
    row["event_id"] = r.event_id
    row["time_start"] = expected_time(dialect, r.at_ms)
    row["time_end"] = expected_time(dialect, r.at_ms + f["latency_ms"])
    return row


def expected_classes(dialect: str, records: list[SealedRecord]) -> set[tuple[Any, ...]]:
    out: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for r in records:
        for c in r.fields["data_classes"]:
            key = (r.event_id, c["class"], c["source"])
            out.setdefault(key, (*key, c["count"], expected_time(dialect, r.at_ms)))
    return set(out.values())


async def projections(db: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    async with db.transaction(readonly=True) as tx:
        calls = await tx.fetch("SELECT * FROM audit_llm_calls")
        classes = await tx.fetch("SELECT * FROM audit_llm_call_data_classes")
    return {c["event_id"]: c for c in calls}, classes


def same_typed(row: dict[str, Any], want: dict[str, Any]) -> None:
    for column, value in want.items():
        assert row[column] == value, column
        assert type(row[column]) is type(value), column


def other(n: int, event_type: str) -> SealedRecord:
    return seal(
        {"event_type": event_type, "time_start": rfc3339_ms(JULY + n), "request_id": f"o{n}",
         "team": "research", "data_classes": [{"class": "c", "count": 1, "source": "s"}]},
        at_ms=JULY + n,
    )  # fmt: skip


async def test_projection_equals_the_record_fields(store: Store) -> None:  # noqa: F811
    records = varied()
    audit = AuditStore(store)
    others = [other(1, "auth.failure"), other(2, "config.revision")]
    await audit.insert([records[0], *others, *records[1:], records[2]])  # one twice in a batch
    await audit.insert([records[1], records[4]])  # again, in a later batch
    calls, classes = await projections(store)
    assert set(calls) == {r.event_id for r in records}
    for r in records:
        same_typed(calls[r.event_id], expected_call(store.dialect, r))
    got = {(c["event_id"], c["data_class"], c["source"], c["match_count"], c["time_start"])
           for c in classes}  # fmt: skip
    assert len(got) == len(classes) == 4
    assert got == expected_classes(store.dialect, records)
    for c in classes:
        assert c["match_count"] is None or type(c["match_count"]) is int
    assert await audit.count() == len(records) + len(others)
    if store.dialect == "sqlite":  # the log: each record once, in insertion order
        async with store.transaction(readonly=True) as tx:
            events = await tx.fetch("SELECT event_id FROM audit_events ORDER BY ingest_id")
            leaves = await tx.fetch("SELECT event_id FROM audit_leaves ORDER BY seq")
        assert [x["event_id"] for x in leaves] == [e["event_id"] for e in events]


async def test_large_batches_project_every_record_once(store: Store) -> None:  # noqa: F811
    """Large batches of several sizes: every record projects once, and the log stays one
    entry per record."""
    records = [
        call(n, JULY + n * 7, n % 50, team=f"équipe-{n % 3}",
             data_classes=[{"class": "c", "count": n, "source": "declared"}] if n % 4 else [])
        for n in range(500)
    ]  # fmt: skip
    audit = AuditStore(store)
    start = 0
    for size in (1, 15, 16, 17, 191, 192, 68):
        await audit.insert(records[start : start + size])
        start += size
    await audit.insert(records[:300])  # replayed
    assert start == len(records)
    calls, classes = await projections(store)
    assert len(calls) == len(records)
    for r in records:
        same_typed(calls[r.event_id], expected_call(store.dialect, r))
    assert len(classes) == len(expected_classes(store.dialect, records))
    async with store.transaction(readonly=True) as tx:
        stored = await tx.fetch("SELECT event_id FROM audit_events ORDER BY ingest_id")
    assert [s["event_id"] for s in stored] == [r.event_id for r in records]
    if store.dialect == "sqlite":  # the log: each record once, in insertion order
        async with store.transaction(readonly=True) as tx:
            leaves = await tx.fetch("SELECT event_id FROM audit_leaves ORDER BY seq")
        assert [x["event_id"] for x in leaves] == [r.event_id for r in records]


async def test_events_are_stored_exactly_as_sealed(store: Store) -> None:  # noqa: F811
    """Every record's bytes, leaf hash, id, type and time arrive exactly, in batch order,
    whichever way the batch travels: PostgreSQL takes a batch as one value per column (ids and
    times one per line, records cut apart by their lengths) unless an id could not be told
    apart so (a newline in it, say, from a replayed spool), or the batch is one record."""
    records = [*varied(), other(7, "auth.failure")]
    odd = call(8, JULY + 50_000, 3, event_id="id with a\nnewline")
    # The store goes by at_ms, also where the record's own time_start says otherwise.
    drifted = call(9, JULY + 60_000, 4, time_start=rfc3339_ms(JULY))
    batches = [[*records[:3], drifted], [records[3]], [records[4], odd, *records[5:]]]
    audit = AuditStore(store)
    for batch in batches:
        await audit.insert(batch)
    sent = [r for batch in batches for r in batch]
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT event_id, event_type, at, record, leaf_hash FROM audit_events"
            " ORDER BY ingest_id"
        )
    assert [r["event_id"] for r in rows] == [r.event_id for r in sent]
    for row, r in zip(rows, sent, strict=True):
        assert bytes(row["record"]) == r.body and bytes(row["leaf_hash"]) == r.leaf_hash
        assert row["event_type"] == r.event_type
        assert row["at"] == expected_time(store.dialect, r.at_ms)
    calls, _ = await projections(store)
    for r in (odd, drifted):
        same_typed(calls[r.event_id], expected_call(store.dialect, r))

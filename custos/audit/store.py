"""The audit tables (migration 0003) behind the ``Store``'s transactions: insert and read.

Contracts:

- ``insert`` writes a batch of sealed records and their projections in one transaction, with
  ``ON CONFLICT DO NOTHING`` everywhere: inserting a record twice (a spool replayed after a
  crash, a batch retried after a timeout whose commit did land) changes nothing.
- On SQLite that transaction also appends the records to the Merkle log (``insert_in``).
- Reads never re-serialise a record: ``record`` comes back as the stored bytes.
- Times are stored as the dialect's time type (SQLite: fixed-width ISO text; PostgreSQL:
  ``timestamptz``), converted from Unix milliseconds exactly.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from custos.audit.content_store import insert_attachments
from custos.audit.record import LLM_CALL, SealedRecord
from custos.audit.sequencer import append_leaves
from custos.state.models import utcnow
from custos.state.store import Store, Tx

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ADMIN_CURSOR = "admin_events"


def ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _sqlite_time(ms: int) -> str:
    """The text the SQLite store keeps times as (``custos.state.sqlite``'s format), made from
    Unix ms directly: converting a datetime per column costs more than the insert itself."""
    seconds, rest = divmod(ms, 1000)
    return f"{_second(seconds)}.{rest:03d}000+00:00"


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


_INSERT_EVENT = (
    "INSERT INTO audit_events (event_id, event_type, at, record, leaf_hash, received_at)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING"
)
_LLM_COLUMNS = (
    "event_id, request_id, time_start, time_end, team, principal_kind, principal_id, token_id,"
    " operation, requested_model, provider, provider_name, model, region, status, outcome,"
    " stopped_at, error_type, input_tokens, output_tokens, cost_micros, latency_ms,"
    " config_revision"
)
_INSERT_LLM = (
    f"INSERT INTO audit_llm_calls ({_LLM_COLUMNS}) VALUES ("
    + ", ".join(f"${i}" for i in range(1, 24))
    + ") ON CONFLICT (event_id) DO NOTHING"
)
_INSERT_CLASS = (
    "INSERT INTO audit_llm_call_data_classes (event_id, data_class, source, match_count,"
    " time_start) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)


def _llm_row(r: SealedRecord, at: Callable[[int], Any]) -> tuple[Any, ...]:
    f = r.fields
    return (
        r.event_id,
        f["request_id"],
        at(r.at_ms),
        at(r.at_ms + f["latency_ms"]),  # time_end
        f["team"],
        f["principal.kind"],
        f["principal.id"],
        f["auth.token_id"],
        f["gen_ai.operation.name"],
        f["gen_ai.request.model"],
        f["provider.account"],
        f["gen_ai.provider.name"],
        f["provider.model"],
        f["cloud.region"],
        f["http.response.status_code"],
        f["outcome"],
        f["stopped_at"],
        f["error.type"],
        f["gen_ai.usage.input_tokens"],
        f["gen_ai.usage.output_tokens"],
        f["cost_micros"],
        f["latency_ms"],
        f["config.revision"],
    )


class AuditStore:
    """The audit tables of one ``Store`` (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def dialect(self) -> str:
        return self.store.dialect

    # -- writes --------------------------------------------------------------------------------

    async def insert(
        self, records: Sequence[SealedRecord], attachments: Sequence[bytes] = ()
    ) -> None:
        """Insert ``records`` and their projections (and the records' attachments: encrypted
        content, ``custos.audit.content_store``) in one transaction; idempotent."""
        if not records and not attachments:
            return
        async with self.store.transaction() as tx:
            if records:
                await insert_in(tx, records)
            if attachments:
                await insert_attachments(tx, attachments)

    async def save_config_text(self, revision: str, text: str) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO audit_config_texts (revision, text, first_seen) VALUES ($1, $2, $3)"
                " ON CONFLICT (revision) DO NOTHING",
                revision,
                text,
                utcnow(),
            )

    async def ingest_admin_events(
        self, build: Callable[[dict[str, Any]], SealedRecord], *, limit: int = 500
    ) -> list[SealedRecord]:
        """Turn admin events not yet recorded into records, in one transaction with the cursor
        that says how far they were read: each admin event becomes exactly one record, even
        with several replicas doing this at once (the cursor row is locked)."""
        async with self.store.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT position FROM audit_cursors WHERE name = $1{tx.for_update}", ADMIN_CURSOR
            )
            position = int(row["position"]) if row else 0
            rows = await tx.fetch(
                "SELECT * FROM admin_events WHERE id > $1 ORDER BY id LIMIT $2", position, limit
            )
            if not rows:
                return []
            records = [build(_admin_row(r)) for r in rows]
            await insert_in(tx, records)
            await tx.execute(
                "INSERT INTO audit_cursors (name, position) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                ADMIN_CURSOR,
                int(rows[-1]["id"]),
            )
        return records

    async def ping(self) -> None:
        async with self.store.transaction(readonly=True) as tx:
            await tx.fetch("SELECT 1 AS one")

    # -- reads ---------------------------------------------------------------------------------

    async def events(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        since: datetime | None = None,
        until: datetime | None = None,
        event_type: str | None = None,
    ) -> list[StoredEvent]:
        """Stored records in insertion order, ``ingest_id > after`` (a cursor)."""
        sql = "SELECT * FROM audit_events WHERE ingest_id > $1"
        args: list[Any] = [after]
        if since is not None:
            args.append(since)
            sql += f" AND at >= ${len(args)}"
        if until is not None:
            args.append(until)
            sql += f" AND at < ${len(args)}"
        if event_type is not None:
            args.append(event_type)
            sql += f" AND event_type = ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY ingest_id LIMIT ${len(args)}"
        async with self.store.transaction(readonly=True) as tx:
            rows = await tx.fetch(sql, *args)
        return [StoredEvent.of(r) for r in rows]

    async def find(self, ref: str) -> list[StoredEvent]:
        """The records of one request (its request id) or one event (its event id)."""
        async with self.store.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT e.* FROM audit_events e JOIN audit_llm_calls c ON c.event_id = e.event_id"
                " WHERE c.request_id = $1 ORDER BY e.ingest_id",
                ref,
            )
            if not rows:
                rows = await tx.fetch("SELECT * FROM audit_events WHERE event_id = $1", ref)
            if not rows:
                # auth.failure records have a request id but no projection: look in the bytes.
                rows = await tx.fetch(
                    "SELECT * FROM audit_events WHERE event_type = 'auth.failure'"
                    " ORDER BY ingest_id DESC LIMIT 10000"
                )
                rows = [r for r in rows if _request_id(r) == ref]
        return [StoredEvent.of(r) for r in rows]

    async def config_text(self, revision: str) -> str | None:
        async with self.store.transaction(readonly=True) as tx:
            row = await tx.fetchrow(
                "SELECT text FROM audit_config_texts WHERE revision = $1", revision
            )
        return None if row is None else str(row["text"])

    async def count(self, event_type: str | None = None) -> int:
        async with self.store.transaction(readonly=True) as tx:
            if event_type is None:
                row = await tx.fetchrow("SELECT count(*) AS n FROM audit_events")
            else:
                row = await tx.fetchrow(
                    "SELECT count(*) AS n FROM audit_events WHERE event_type = $1", event_type
                )
        assert row is not None
        return int(row["n"])

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """A read-only query (for the report)."""
        async with self.store.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *args)


async def insert_in(tx: Tx, records: Sequence[SealedRecord]) -> None:
    """``AuditStore.insert`` inside an open transaction.

    On SQLite the same transaction also appends the records it stored to the Merkle log
    (``append_leaves``): SQLite runs one writing transaction at a time, so whoever inserts can
    sequence, and there is no queue to fill and drain (on PostgreSQL a trigger queues the
    records in ``audit_pending`` for the one sequencer)."""
    at = _sqlite_time if tx.dialect == "sqlite" else ms_to_datetime
    now = at(time.time_ns() // 1_000_000)
    inline = tx.dialect == "sqlite"
    if inline:
        before = await tx.fetchrow("SELECT COALESCE(MAX(ingest_id), 0) AS n FROM audit_events")
    await tx.executemany(
        _INSERT_EVENT,
        [(r.event_id, r.event_type, at(r.at_ms), r.body, r.leaf_hash, now) for r in records],
    )
    calls = [r for r in records if r.event_type == LLM_CALL]
    if calls:
        await tx.executemany(_INSERT_LLM, [_llm_row(r, at) for r in calls])
        classes = [
            (r.event_id, c["class"], c["source"], c["count"], at(r.at_ms))
            for r in calls
            for c in r.fields["data_classes"]
        ]
        if classes:
            await tx.executemany(_INSERT_CLASS, classes)
    if not inline:
        return
    # The rows this statement added (a replayed record was skipped by ON CONFLICT): rowids only
    # grow, so they are exactly those past the largest before it.
    assert before is not None
    added = await tx.fetch(
        "SELECT event_id FROM audit_events WHERE ingest_id > $1 ORDER BY ingest_id", before["n"]
    )
    if added:
        leaf_of = {r.event_id: r.leaf_hash for r in records}
        await append_leaves(tx, [(a["event_id"], leaf_of[a["event_id"]]) for a in added])


def _admin_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("before", "after"):
        value = out.get(key)
        if isinstance(value, str | bytes):
            out[key] = orjson.loads(value)
    at = out["at"]
    out["at"] = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    return out


def _request_id(row: dict[str, Any]) -> str | None:
    try:
        value = orjson.loads(bytes(row["record"])).get("request_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    ingest_id: int
    event_id: str
    event_type: str
    record: bytes
    leaf_hash: bytes

    @classmethod
    def of(cls, row: dict[str, Any]) -> StoredEvent:
        return cls(
            int(row["ingest_id"]),
            row["event_id"],
            row["event_type"],
            bytes(row["record"]),
            bytes(row["leaf_hash"]),
        )

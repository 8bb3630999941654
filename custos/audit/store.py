"""The audit tables (migration 0003) behind the ``Store``'s transactions: insert and read.

Contracts:

- ``insert`` writes a batch of sealed records and their projections in one transaction, with
  ``ON CONFLICT DO NOTHING`` everywhere: inserting a record twice (a spool replayed after a
  crash, a batch retried after a timeout whose commit did land) changes nothing.
- The projections (``audit_llm_calls``, ``audit_llm_call_data_classes``) are derived by the
  database from the stored bytes of the ``llm.call`` records the batch added, so they say
  exactly what the records say, with one exception: a NUL character, which PostgreSQL text
  cannot hold, is projected as U+FFFD on both dialects. On PostgreSQL this reads the bytes as
  UTF-8 text in the database's encoding, so the database must be able to hold every character
  a record may carry (``UTF8``, the usual encoding).
- On SQLite that transaction also appends the records to the Merkle log (``insert_in``).
- Reads never re-serialise a record: ``record`` comes back as the stored bytes.
- Times are stored as the dialect's time type (SQLite: fixed-width ISO text; PostgreSQL:
  ``timestamptz``), converted exactly from Unix milliseconds (``time_start``) or from the
  record's millisecond RFC 3339 text (``time_end``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

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


_EVENT_COLUMNS = "event_id, event_type, at, record, leaf_hash, received_at"

#: Rows per multi-row INSERT of ``audit_events`` on SQLite: five bound values a row and the
#: shared receipt time stay under 999, the bound-parameter limit of SQLite before 3.32.
_EVENT_CHUNK: Final = 192
#: Shorter statements are rounded down to a multiple of this (and a remainder below it), so
#: that at most 27 texts exist and stay in ``sqlite3``'s statement cache: preparing a 100-row
#: INSERT costs as much as running it.
_CHUNK_STEP: Final = 16

#: ``audit_llm_calls`` columns after ``event_id, time_start, time_end``, each with the record
#: key it is read from and its PostgreSQL cast ("" for text).
_LLM_FIELDS: Final = (
    ("request_id", "request_id", ""),
    ("team", "team", ""),
    ("principal_kind", "principal.kind", ""),
    ("principal_id", "principal.id", ""),
    ("token_id", "auth.token_id", ""),
    ("operation", "gen_ai.operation.name", ""),
    ("requested_model", "gen_ai.request.model", ""),
    ("provider", "provider.account", ""),
    ("provider_name", "gen_ai.provider.name", ""),
    ("model", "provider.model", ""),
    ("region", "cloud.region", ""),
    ("status", "http.response.status_code", "::integer"),
    ("outcome", "outcome", ""),
    ("stopped_at", "stopped_at", ""),
    ("error_type", "error.type", ""),
    ("input_tokens", "gen_ai.usage.input_tokens", "::bigint"),
    ("output_tokens", "gen_ai.usage.output_tokens", "::bigint"),
    ("cost_micros", "cost_micros", "::bigint"),
    ("latency_ms", "latency_ms", "::bigint"),
    ("config_revision", "config.revision", ""),
)
_LLM_COLUMNS = "event_id, time_start, time_end, " + ", ".join(c for c, _, _ in _LLM_FIELDS)
_CLASS_COLUMNS = "event_id, data_class, source, match_count, time_start"


def _nul_as_replacement(text: str, chr_function: str) -> str:
    r"""SQL for the JSON ``text`` with each escaped NUL (``\u0000``, not ``\\u0000``) written as
    ``\ufffd``. Neither dialect projects a NUL character: PostgreSQL text cannot hold one (its
    jsonb refuses the escape, which would fail the whole batch on a client-chosen string) and
    SQLite's json_extract cuts the string there. Escaped backslashes are set aside first as
    ``chr(1)``, which canonical JSON never holds raw."""
    backslash = f"{chr_function}(92)"
    pair, mark = f"{backslash} || {backslash}", f"{chr_function}(1)"
    escaped = f"replace({text}, {pair}, {mark})"
    replaced = f"replace({escaped}, {backslash} || 'u0000', {backslash} || 'ufffd')"
    return f"replace({replaced}, {mark}, {pair})"


#: The record's text (SQLite keeps it as a BLOB: the CAST keeps 3.45+ from reading it as its
#: binary JSONB), and the same for the rare batch with an escaped NUL in some record.
_SQLITE_TEXT = "CAST(record AS TEXT)"
_SQLITE_TEXT_NO_NUL = _nul_as_replacement(_SQLITE_TEXT, "char")


def _sqlite_project_calls(text: str) -> str:
    """SQLite: the ``audit_llm_calls`` rows of the records stored past ingest_id ``$1``, read
    from ``text``. ``NOT INDEXED`` keeps the planner on the rowid range (the (event_type, at)
    index would visit every llm.call ever stored). json_extract gives JSON integers as INTEGER,
    strings as TEXT and null as NULL, as binding Python values would. ``at`` is time_start in
    the store's time text already; the record's time_end (``….mmmZ``, time_start + latency_ms)
    becomes the same form (``….mmm000+00:00``)."""
    values = [f"json_extract({text}, '$.\"{key}\"')" for _, key, _ in _LLM_FIELDS]
    time_end = f"substr(json_extract({text}, '$.time_end'), 1, 23) || '000+00:00'"
    return (
        f"INSERT INTO audit_llm_calls ({_LLM_COLUMNS}) SELECT event_id, at, {time_end}, "
        + ", ".join(values)
        + " FROM audit_events NOT INDEXED WHERE ingest_id > $1 AND event_type = 'llm.call'"
        " ON CONFLICT (event_id) DO NOTHING"
    )


_SQLITE_PROJECT_CALLS = _sqlite_project_calls(_SQLITE_TEXT)
_SQLITE_PROJECT_CALLS_NO_NUL = _sqlite_project_calls(_SQLITE_TEXT_NO_NUL)
# Class names and sources are plain identifiers, so a NUL elsewhere in the record (json_each
# reads it fine) needs no variant here.
_SQLITE_PROJECT_CLASSES = (
    f"INSERT INTO audit_llm_call_data_classes ({_CLASS_COLUMNS})"
    " SELECT e.event_id, json_extract(c.value, '$.class'), json_extract(c.value, '$.source'),"
    " json_extract(c.value, '$.count'), e.at"
    " FROM audit_events AS e NOT INDEXED, json_each(CAST(e.record AS TEXT), '$.data_classes') AS c"
    " WHERE e.ingest_id > $1 AND e.event_type = 'llm.call' ON CONFLICT DO NOTHING"
)
#: How an escaped NUL looks in the record bytes.
_ESCAPED_NUL = b"\\u0000"

# PostgreSQL: one statement inserts the batch (arrays, one value per record).
_PG_INSERT_EVENTS = (
    f"INSERT INTO audit_events ({_EVENT_COLUMNS})"
    " SELECT e.event_id, e.event_type, e.at, e.record, e.leaf_hash, $6"
    " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[], $5::bytea[])"
    " AS e (event_id, event_type, at, record, leaf_hash)"
    " ON CONFLICT (event_id) DO NOTHING"
)
# And for batches that hold llm.call records, the same statement derives the projections from
# the rows it really added (RETURNING: a record already stored adds nothing), parsing each
# record once. A batch without any (the purge's audit.purge record) names no projection table,
# so a role without INSERT on them (docs/audit.md, the retention role) can still write it.
_PG_JSON = (
    "(CASE WHEN strpos(t, chr(92) || 'u0000') = 0 THEN t ELSE "
    + _nul_as_replacement("t", "chr")
    + " END)::jsonb"
)
_PG_INSERT_WITH_CALLS = (
    f"WITH added AS ({_PG_INSERT_EVENTS} RETURNING event_id, event_type, at, record),"
    " texts AS (SELECT event_id, at, convert_from(record, 'UTF8') AS t FROM added"
    " WHERE event_type = 'llm.call'),"
    f" calls AS (SELECT event_id, at, {_PG_JSON} AS r FROM texts),"
    f" projected AS (INSERT INTO audit_llm_calls ({_LLM_COLUMNS})"
    " SELECT event_id, at, (r ->> 'time_end')::timestamptz, "
    + ", ".join(f"(r ->> '{key}'){cast}" for _, key, cast in _LLM_FIELDS)
    + " FROM calls ON CONFLICT (event_id) DO NOTHING)"
    f" INSERT INTO audit_llm_call_data_classes ({_CLASS_COLUMNS})"
    " SELECT calls.event_id, c ->> 'class', c ->> 'source', (c ->> 'count')::bigint, calls.at"
    " FROM calls CROSS JOIN LATERAL jsonb_array_elements(calls.r -> 'data_classes') AS c"
    " ON CONFLICT DO NOTHING"
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

    The records go in as their bytes, a few statements per batch, and the database derives the
    projection rows of the ``llm.call`` records it actually added from those bytes: no value is
    bound twice, and no statement runs once per record (each would hand the interpreter lock
    between the event loop and SQLite's worker thread).

    On SQLite the same transaction also appends the records it stored to the Merkle log
    (``append_leaves``): SQLite runs one writing transaction at a time, so whoever inserts can
    sequence, and there is no queue to fill and drain (on PostgreSQL a trigger queues the
    records in ``audit_pending`` for the one sequencer)."""
    if not records:
        return
    if tx.dialect == "sqlite":
        await _insert_sqlite(tx, records)
    else:
        await _insert_postgresql(tx, records)


async def _insert_sqlite(tx: Tx, records: Sequence[SealedRecord]) -> None:
    before_row = await tx.fetchrow("SELECT COALESCE(MAX(ingest_id), 0) AS n FROM audit_events")
    assert before_row is not None
    before = before_row["n"]
    now = _sqlite_time(time.time_ns() // 1_000_000)
    start = 0
    for size in _chunk_sizes(len(records)):
        args: list[Any] = [now]
        for r in records[start : start + size]:
            args += (r.event_id, r.event_type, _sqlite_time(r.at_ms), r.body, r.leaf_hash)
        await tx.execute(_sqlite_insert_events(size), *args)
        start += size
    calls = [r for r in records if r.event_type == LLM_CALL]
    if calls:
        rare = any(_ESCAPED_NUL in r.body for r in calls)
        await tx.execute(_SQLITE_PROJECT_CALLS_NO_NUL if rare else _SQLITE_PROJECT_CALLS, before)
        if any(r.fields.get("data_classes") for r in calls):
            await tx.execute(_SQLITE_PROJECT_CLASSES, before)
    # The rows this transaction added (a replayed record was skipped by ON CONFLICT): rowids
    # only grow, so they are exactly those past the largest before it.
    added = await tx.fetch(
        "SELECT event_id FROM audit_events WHERE ingest_id > $1 ORDER BY ingest_id", before
    )
    if added:
        leaf_of = {r.event_id: r.leaf_hash for r in records}
        await append_leaves(tx, [(a["event_id"], leaf_of[a["event_id"]]) for a in added])


def _chunk_sizes(count: int) -> list[int]:
    """The lengths of the INSERTs that store ``count`` records, in order: full chunks, then the
    rest rounded down to a multiple of ``_CHUNK_STEP``, then what is left."""
    sizes = [_EVENT_CHUNK] * (count // _EVENT_CHUNK)
    rest = count % _EVENT_CHUNK
    return sizes + [n for n in (rest - rest % _CHUNK_STEP, rest % _CHUNK_STEP) if n]


@functools.lru_cache(maxsize=32)
def _sqlite_insert_events(rows: int) -> str:
    """The INSERT of ``rows`` records: ``$1`` is the receipt time they share, then five values
    a record."""
    values = ",".join(
        f"(${n},${n + 1},${n + 2},${n + 3},${n + 4},$1)" for n in range(2, 2 + 5 * rows, 5)
    )
    return (
        f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES {values}"
        " ON CONFLICT (event_id) DO NOTHING"
    )


async def _insert_postgresql(tx: Tx, records: Sequence[SealedRecord]) -> None:
    with_calls = any(r.event_type == LLM_CALL for r in records)
    await tx.execute(
        _PG_INSERT_WITH_CALLS if with_calls else _PG_INSERT_EVENTS,
        [r.event_id for r in records],
        [r.event_type for r in records],
        [ms_to_datetime(r.at_ms) for r in records],
        [r.body for r in records],
        [r.leaf_hash for r in records],
        ms_to_datetime(time.time_ns() // 1_000_000),
    )


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

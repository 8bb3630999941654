"""The audit tables (migration 0003) behind the ``Store``'s transactions: insert and read.

Contracts:

- ``insert`` writes a batch of sealed records and their projections in one transaction, with
  ``ON CONFLICT DO NOTHING`` everywhere: inserting a record twice (a spool replayed after a
  crash, a batch retried after a timeout whose commit did land) changes nothing.
- The projections (``audit_llm_calls``, ``audit_llm_call_data_classes`` of ``llm.call``
  records; ``audit_tool_calls``, ``audit_tool_call_data_classes`` of ``mcp.tool_call``
  records) say exactly what the records say. On PostgreSQL the database derives them from the
  stored bytes of the records the batch added, with one exception: a NUL character, which
  PostgreSQL text cannot hold, is projected as U+FFFD; this reads the bytes as UTF-8 text in
  the database's encoding, so the database must be able to hold every character a record may
  carry (``UTF8``: ``PostgresStore.open`` refuses any other). On SQLite they are bound from
  the records' parsed fields (the tool-call projections with a NUL as U+FFFD too: migration
  0011 filled them through SQLite's JSON functions, which end a text at a NUL).
- On SQLite that transaction also appends the records to the Merkle log (``insert_in``).
- Reads never re-serialise a record: ``record`` comes back as the stored bytes.
- Times are stored as the dialect's time type (SQLite: fixed-width ISO text; PostgreSQL:
  ``timestamptz``), converted exactly: ``time_start`` from Unix milliseconds, ``time_end``
  from the record's millisecond RFC 3339 text (PostgreSQL) or as ``time_start`` plus
  ``latency_ms``, which is what that text says (SQLite).
"""

from __future__ import annotations

import operator
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from custos.audit.log.sequencer import append_leaves
from custos.audit.records.record import (
    LLM_CALL,
    MCP_TOOL_CALL,
    SealedRecord,
    rfc3339_ms,
    utc_second,
)
from custos.audit.storage import rollup, tool_rollup
from custos.audit.storage.content_store import insert_attachments
from custos.state.errors import Conflict, Invalid
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
    return f"{utc_second(seconds)}.{rest:03d}000+00:00"


_EVENT_COLUMNS = "event_id, event_type, at, record, leaf_hash, received_at"

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
#: Projection column → the record key it is read from.
_RECORD_KEY: Final = {column: key for column, key, _ in _LLM_FIELDS}
_CLASS_COLUMNS = "event_id, data_class, source, match_count, time_start"
#: ``audit_tool_calls`` columns (migration 0011) after ``event_id, time_start``, as
#: ``_LLM_FIELDS``. Every one may be null: a record built only in part still gets its row.
TOOL_FIELDS: Final = (
    ("request_id", "request_id", ""),
    ("team", "team", ""),
    ("principal_kind", "principal.kind", ""),
    ("principal_id", "principal.id", ""),
    ("token_id", "auth.token_id", ""),
    ("endpoint", "mcp.endpoint", ""),
    ("server", "mcp.server", ""),
    ("tool", "mcp.tool", ""),
    ("called_as", "mcp.tool.called_as", ""),
    ("region", "cloud.region", ""),
    ("status", "http.response.status_code", "::integer"),
    ("outcome", "outcome", ""),
    ("stopped_at", "stopped_at", ""),
    ("error_type", "error.type", ""),
    ("tool_error", "mcp.result.is_error", "::boolean"),
    ("latency_ms", "latency_ms", "::bigint"),
    ("config_revision", "config.revision", ""),
)
_TOOL_COLUMNS = "event_id, time_start, " + ", ".join(c for c, _, _ in TOOL_FIELDS)
_TOOL_KEYS: Final = tuple(key for _, key, _ in TOOL_FIELDS)
#: What a NUL character in text is in ``audit_tool_calls``, on both stores.
TOOL_NUL: Final = "\ufffd"


def _nul_as_replacement(text: str) -> str:
    r"""SQL for the JSON ``text`` with each escaped NUL (``\u0000``, not ``\\u0000``) written as
    ``\ufffd``: PostgreSQL text cannot hold a NUL character (its jsonb refuses the escape, which
    would fail the whole batch on a client-chosen string). Escaped backslashes are set aside
    first as ``chr(1)``, which canonical JSON never holds raw."""
    backslash = "chr(92)"
    pair, mark = f"{backslash} || {backslash}", "chr(1)"
    escaped = f"replace({text}, {pair}, {mark})"
    replaced = f"replace({escaped}, {backslash} || 'u0000', {backslash} || 'ufffd')"
    return f"replace({replaced}, {mark}, {pair})"


# SQLite: the rows are bound from Python. Deriving them in SQL (json_extract per column) was
# measured at about 10 µs a record against 3 µs for binding, and the worker thread's CPU is the
# gateway's own core.
_SQLITE_INSERT_EVENT = (
    f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (event_id) DO NOTHING"
)
_SQLITE_INSERT_CALL = (
    f"INSERT INTO audit_llm_calls ({_LLM_COLUMNS}) VALUES ("
    + ", ".join(f"${i}" for i in range(1, 4 + len(_LLM_FIELDS)))
    + ") ON CONFLICT (event_id) DO NOTHING"
)
_SQLITE_INSERT_CLASS = (
    f"INSERT INTO audit_llm_call_data_classes ({_CLASS_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT DO NOTHING"
)
_SQLITE_INSERT_TOOL_CLASS = (
    f"INSERT INTO audit_tool_call_data_classes ({_CLASS_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT DO NOTHING"
)
_SQLITE_INSERT_TOOL = (
    f"INSERT INTO audit_tool_calls ({_TOOL_COLUMNS}) VALUES ("
    + ", ".join(f"${i}" for i in range(1, 3 + len(TOOL_FIELDS)))
    + ") ON CONFLICT (event_id) DO NOTHING"
)
#: The tool-call rollup's dimensions (``tool_rollup.DIMS``) out of ``_tool_values``.
_TOOL_COLUMN_INDEX: Final = {c: i for i, (c, _, _) in enumerate(TOOL_FIELDS)}
_tool_rollup_dims = operator.itemgetter(*(_TOOL_COLUMN_INDEX[d] for d in tool_rollup.DIMS))
_TOOL_ERROR: Final = _TOOL_COLUMN_INDEX["tool_error"]
#: The projected fields of a record, in column order, read in one C call.
_call_values = operator.itemgetter(*(key for _, key, _ in _LLM_FIELDS))
#: The rollup's dimensions (``rollup.CALL_DIMS``) out of ``_call_values``.
_rollup_dims = operator.itemgetter(
    *(next(i for i, (c, _, _) in enumerate(_LLM_FIELDS) if c == dim) for dim in rollup.CALL_DIMS)
)

# PostgreSQL: one statement inserts the batch. Its columns arrive either as arrays, one value
# per record, or (``_pg_joined``) each as one value: the ids, types and times one per line, the
# records and leaf hashes concatenated and cut apart by the records' lengths and the hashes'
# 32 bytes. asyncpg checks every element of an array against ``collections.abc`` classes
# before encoding it (nine checks a record here), which cost the gateway more than the rest of
# the insert; the joined values cost it a few ``join``s.
_PG_FROM_ARRAYS = (
    "unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[], $5::bytea[])"
    " WITH ORDINALITY AS e (event_id, event_type, at, record, leaf_hash, i)"
)
_PG_FROM_JOINED = (
    "(SELECT s.i, s.event_id, s.event_type, s.at::timestamptz AS at,"
    " substring($4::bytea FROM (sum(s.size::integer) OVER w - s.size::integer + 1)::integer"
    " FOR s.size::integer) AS record,"
    " substring($5::bytea FROM ((s.i - 1) * 32 + 1)::integer FOR 32) AS leaf_hash"
    " FROM unnest(string_to_array($1::text, chr(10)), string_to_array($2::text, chr(10)),"
    " string_to_array($3::text, chr(10)), string_to_array($7::text, ','))"
    " WITH ORDINALITY AS s (event_id, event_type, at, size, i)"
    " WINDOW w AS (ORDER BY s.i)) AS e"
)


def _pg_insert_events(source: str) -> str:
    return (
        f"INSERT INTO audit_events ({_EVENT_COLUMNS})"
        f" SELECT e.event_id, e.event_type, e.at, e.record, e.leaf_hash, $6 FROM {source}"
        " ORDER BY e.i ON CONFLICT (event_id) DO NOTHING"
    )


# And for batches that hold llm.call or mcp.tool_call records, the same statement derives the
# projections from the rows it really added (RETURNING: a record already stored adds nothing),
# parsing each record once. A batch without any (the purge's audit.purge record) names no
# projection table, so a role without INSERT on them (docs/audit.md, the retention role) can
# still write it.
_PG_JSON = (
    "(CASE WHEN strpos(t, chr(92) || 'u0000') = 0 THEN t ELSE "
    + _nul_as_replacement("t")
    + " END)::jsonb"
)
_PG_INSERT_TOOLS = (
    f"INSERT INTO audit_tool_calls ({_TOOL_COLUMNS}) SELECT event_id, at, "
    + ", ".join(f"(r ->> '{key}'){cast}" for _, key, cast in TOOL_FIELDS)
    + " FROM tool_calls ON CONFLICT (event_id) DO NOTHING RETURNING *"
)

#: A tool call's data classes (the array, when its record has one: a record built only in part
#: has none), in the order the record lists them (a class named twice by one source: the first).
_PG_INSERT_TOOL_CLASSES = (
    f"INSERT INTO audit_tool_call_data_classes ({_CLASS_COLUMNS})"
    " SELECT event_id, c ->> 'class', c ->> 'source', (c ->> 'count')::bigint, at"
    " FROM tool_calls CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN"
    " jsonb_typeof(r -> 'data_classes') = 'array' THEN r -> 'data_classes' END)"
    " WITH ORDINALITY AS x (c, n) ORDER BY event_id, n ON CONFLICT DO NOTHING"
)


def _pg_insert_projecting(source: str, *, calls: bool, tools: bool) -> str:
    """The batch's insert with the projections of the ``llm.call`` (``calls``) and the
    ``mcp.tool_call`` (``tools``) records it added, as one statement."""
    added = f"{_pg_insert_events(source)} RETURNING event_id, event_type, at, record"
    ctes = [f"WITH added AS ({added})"]
    if tools:
        ctes += [
            " tool_texts AS (SELECT event_id, at, convert_from(record, 'UTF8') AS t FROM added"
            f" WHERE event_type = '{MCP_TOOL_CALL}')",
            f" tool_calls AS (SELECT event_id, at, {_PG_JSON} AS r FROM tool_texts)",
            f" tools_projected AS ({_PG_INSERT_TOOLS})",
        ]
        ctes.append(f" tools_rolled AS ({tool_rollup.pg_rollup_sql('tools_projected')})")
        if not calls:
            return ",".join(ctes) + " " + _PG_INSERT_TOOL_CLASSES
        ctes.append(f" tool_classes AS ({_PG_INSERT_TOOL_CLASSES})")
    ctes += [
        " texts AS (SELECT event_id, at, convert_from(record, 'UTF8') AS t FROM added"
        f" WHERE event_type = '{LLM_CALL}')",
        f" calls AS (SELECT event_id, at, {_PG_JSON} AS r FROM texts)",
        f" projected AS (INSERT INTO audit_llm_calls ({_LLM_COLUMNS})"
        " SELECT event_id, at, (r ->> 'time_end')::timestamptz, "
        + ", ".join(f"(r ->> '{key}'){cast}" for _, key, cast in _LLM_FIELDS)
        + " FROM calls ON CONFLICT (event_id) DO NOTHING RETURNING *)",
        _PG_ROLLUPS,
    ]
    return ",".join(ctes) + (
        f" INSERT INTO audit_llm_call_data_classes ({_CLASS_COLUMNS})"
        " SELECT calls.event_id, c ->> 'class', c ->> 'source', (c ->> 'count')::bigint,"
        " calls.at FROM calls"
        " CROSS JOIN LATERAL jsonb_array_elements(calls.r -> 'data_classes') AS c"
        " ON CONFLICT DO NOTHING"
    )


def _pg_rollups() -> str:
    """CTEs adding the projection rows the statement really inserted (``projected``) to the
    daily rollups (``custos.audit.storage.rollup``), grouped, in key order."""
    day = "to_char(p.time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    sums = "count(*), sum(p.input_tokens), sum(p.output_tokens), sum(p.cost_micros)"
    # Each call's classes once per (class, source), once per class as '*', or (null, null).
    keyed = (
        "(SELECT DISTINCT p.event_id, c ->> 'class' AS data_class, c ->> 'source' AS source"
        " FROM projected p JOIN calls ON calls.event_id = p.event_id"
        " CROSS JOIN LATERAL jsonb_array_elements(calls.r -> 'data_classes') AS c)"
    )
    ctes = [
        f" pairs AS {keyed},"
        " keyed AS (SELECT event_id, data_class, source FROM pairs"
        f" UNION ALL SELECT DISTINCT event_id, data_class, '{rollup.ANY_SOURCE}' FROM pairs"
        " UNION ALL SELECT p.event_id, NULL, NULL FROM projected p"
        " WHERE NOT EXISTS (SELECT 1 FROM pairs WHERE pairs.event_id = p.event_id))"
    ]
    for n, (table, dims) in enumerate(rollup.CALL_ROLLUPS.items()):
        keys = ", ".join([day, *(f"p.{d}" for d in dims)])
        ctes.append(
            f" rolled{n} AS ("
            + rollup.upsert_sql(
                table,
                "postgresql",
                f"SELECT {keys}, {sums} FROM projected p GROUP BY {keys} ORDER BY {keys}",
            )
            + ")"
        )
    keys = ", ".join([day, *(f"p.{d}" for d in rollup.CLASS_DIMS), "k.data_class", "k.source"])
    ctes.append(
        " rolled_classes AS ("
        + rollup.upsert_sql(
            rollup.CLASSES,
            "postgresql",
            f"SELECT {keys}, {sums} FROM keyed k JOIN projected p ON p.event_id = k.event_id"
            f" GROUP BY {keys} ORDER BY {keys}",
        )
        + ")"
    )
    # Each call's metadata pairs (a record's metadata is an object; anything else has none),
    # read from ``calls``, the records the statement added, with the projection's own
    # expressions. Joining ``projected`` back to ``calls`` instead cost the server about 70 µs
    # of CPU a record, metadata or not (measured; this costs about 7 µs for two keys, nothing
    # without). A call the statement added is a call it projected: a projection row never
    # exists without its record (as on SQLite, whose sums come from the records added).
    keys = ", ".join([
        "to_char(calls.at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        *(f"(calls.r ->> '{_RECORD_KEY[d]}')" for d in rollup.METADATA_DIMS),
        "m.key", "m.value",
    ])  # fmt: skip
    measures = ", ".join(
        f"sum((calls.r ->> '{_RECORD_KEY[m]}')::bigint)"
        for m in ("input_tokens", "output_tokens", "cost_micros")
    )
    pairs = (
        "jsonb_each_text(CASE WHEN jsonb_typeof(calls.r -> 'metadata') = 'object'"
        " THEN calls.r -> 'metadata' ELSE '{}'::jsonb END) AS m"
    )
    ctes.append(
        " rolled_metadata AS ("
        + rollup.upsert_sql(
            rollup.METADATA,
            "postgresql",
            f"SELECT {keys}, count(*), {measures} FROM calls CROSS JOIN LATERAL {pairs}"
            f" GROUP BY {keys} ORDER BY {keys}",
        )
        + ")"
    )
    return ",".join(ctes)


_PG_ROLLUPS: Final = _pg_rollups()


#: (joined, with llm.call records, with mcp.tool_call records) → the statement.
_PG_INSERTS = {
    (joined, calls, tools): (
        _pg_insert_projecting(source, calls=calls, tools=tools)
        if calls or tools
        else _pg_insert_events(source)
    )
    for joined, source in ((False, _PG_FROM_ARRAYS), (True, _PG_FROM_JOINED))
    for calls in (False, True)
    for tools in (False, True)
}


class AuditStore:
    """The audit tables of one ``Store`` (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- writes --------------------------------------------------------------------------------

    async def insert(
        self, records: Sequence[SealedRecord], attachments: Sequence[bytes] = ()
    ) -> None:
        """Insert ``records`` and their projections (and the records' attachments: encrypted
        content, ``custos.audit.storage.content_store``) in one transaction; idempotent."""
        if not records and not attachments:
            return

        async def insert(tx: Tx) -> None:
            if records:
                await insert_in(tx, records)
            if attachments:
                await insert_attachments(tx, attachments)

        await self.store.run_transaction(insert)

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
        with several replicas doing this at once (the cursor row is locked). A read-only look
        first: most polls find nothing, and need not take the write lock (SQLite's, which the
        audit batches wait on) to find it."""

        async def any_new(tx: Tx) -> bool:
            row = await tx.fetchrow(
                "SELECT 1 AS one FROM admin_events WHERE id > COALESCE("
                "(SELECT position FROM audit_cursors WHERE name = $1), 0) LIMIT 1",
                ADMIN_CURSOR,
            )
            return row is not None

        if not await self.store.run_transaction(any_new, readonly=True):
            return []
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
                rows = await tx.fetch(
                    "SELECT e.* FROM audit_events e JOIN audit_tool_calls t"
                    " ON t.event_id = e.event_id WHERE t.request_id = $1 ORDER BY e.ingest_id",
                    ref,
                )
            if not rows:
                # auth.failure records have a request id but no projection: look in the bytes
                # of the latest ones.
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


#: SQLSTATE classes of a statement refused for what it holds: 22 (data exception) and 23
#: (integrity constraint violation). SQLite's errors are told apart by their type.
_REFUSAL_CLASSES: Final = ("22", "23")


def refuses_records(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing what was sent (a constraint it breaks, a value a
    column cannot hold) rather than being unable to take anything (connection lost, disk
    full, locked, timed out): sending the same records again would be refused again."""
    if isinstance(exc, Invalid | Conflict | sqlite3.DataError | sqlite3.IntegrityError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)  # asyncpg's errors carry PostgreSQL's code
    return isinstance(sqlstate, str) and sqlstate[:2] in _REFUSAL_CLASSES


async def insert_in(tx: Tx, records: Sequence[SealedRecord]) -> None:
    """``AuditStore.insert`` inside an open transaction.

    On PostgreSQL one statement inserts the batch (one value per column, or arrays: see
    ``_PG_FROM_JOINED``) and derives the projection rows of the ``llm.call`` and
    ``mcp.tool_call`` records it actually added from their bytes, so the work of projecting
    is the database server's, not the gateway's. On SQLite (in the gateway's process either
    way) the projection rows are bound from the records' fields, which costs less than having
    SQLite parse each record again.

    On SQLite the same transaction also appends the records it stored to the Merkle log
    (``append_leaves``): SQLite runs one writing transaction at a time, so whoever inserts can
    sequence, and there is no queue to fill and drain (on PostgreSQL a trigger queues the
    records in ``audit_pending`` for the one sequencer)."""
    if not records:
        return
    if tx.serial_writes:
        await _insert_sqlite(tx, records)
    else:
        await _insert_postgresql(tx, records)


async def _insert_sqlite(tx: Tx, records: Sequence[SealedRecord]) -> None:
    now = _sqlite_time(time.time_ns() // 1_000_000)
    starts = [_sqlite_time(r.at_ms) for r in records]  # at_ms is what the store goes by
    inserted = await tx.executemany(
        _SQLITE_INSERT_EVENT,
        [(r.event_id, r.event_type, start, r.body, r.leaf_hash, now)
         for r, start in zip(records, starts, strict=True)],
    )  # fmt: skip
    if inserted == len(records):  # every record is new: they were added in this order
        added = list(zip(records, starts, strict=True))
    else:
        added = await _added_sqlite(tx, records, starts, inserted)
    # Only the records this transaction added get projection rows (as on PostgreSQL): a
    # record replayed after the purge emptied it must not come back into the reports.
    calls = [(r, start) for r, start in added if r.event_type == LLM_CALL]
    if calls:
        await _project_sqlite(tx, calls)
    tools = [(r, start) for r, start in added if r.event_type == MCP_TOOL_CALL]
    if tools:
        await _project_tools_sqlite(tx, tools)
    if added:
        await append_leaves(tx, [(r.event_id, r.leaf_hash) for r, _ in added])


async def _project_tools_sqlite(tx: Tx, tools: list[tuple[SealedRecord, str]]) -> None:
    """The ``audit_tool_calls`` rows of newly added ``mcp.tool_call`` records, and their sums
    in the daily rollup."""
    deltas = tool_rollup.Deltas()
    rows = []
    for r, start in tools:
        values = _tool_values(r.fields)
        rows.append((r.event_id, start, *values))
        deltas.add(start[:10], _tool_rollup_dims(values), values[_TOOL_ERROR])
    await tx.executemany(_SQLITE_INSERT_TOOL, rows)
    classes = [
        (r.event_id, *_without_nul(c["class"], c["source"]), c["count"], start)
        for r, start in tools
        if type(r.fields.get("data_classes")) is list
        for c in r.fields["data_classes"]
    ]
    if classes:
        await tx.executemany(_SQLITE_INSERT_TOOL_CLASS, classes)
    await deltas.apply(tx, "sqlite")


def _without_nul(*texts: str) -> list[str]:
    return [t.replace("\x00", TOOL_NUL) for t in texts]


def _tool_values(fields: dict[str, Any]) -> list[Any]:
    """A tool call's ``audit_tool_calls`` values (SQLite), a NUL in text as U+FFFD as on
    PostgreSQL (migration 0011's backfill, through SQLite's JSON functions, cannot keep one)."""
    values = [fields.get(key) for key in _TOOL_KEYS]
    return [v.replace("\x00", TOOL_NUL) if type(v) is str and "\x00" in v else v for v in values]


async def _added_sqlite(
    tx: Tx, records: Sequence[SealedRecord], starts: list[str], inserted: int
) -> list[tuple[SealedRecord, str]]:
    """The records (with their start text) the event insert really added, in order, when some
    were stored already (a replay: ON CONFLICT skipped them). Each row added took the largest
    row id plus one, so the rows this transaction added are the ``inserted`` largest."""
    if not inserted:
        return []
    rows = await tx.fetch(
        "SELECT event_id FROM audit_events ORDER BY ingest_id DESC LIMIT $1", inserted
    )
    first = {}
    for r, start in zip(records, starts, strict=True):
        first.setdefault(r.event_id, (r, start))  # a repeat within the batch was skipped
    return [first[row["event_id"]] for row in reversed(rows)]


async def _project_sqlite(tx: Tx, calls: list[tuple[SealedRecord, str]]) -> None:
    """The projection rows of newly added ``llm.call`` records, and their rollup sums."""
    deltas = rollup.Deltas()
    rows = []
    for r, start in calls:
        f = r.fields
        values = _call_values(f)
        rows.append((r.event_id, start, _sqlite_time(r.at_ms + f["latency_ms"]), *values))
        deltas.add(
            start[:10],
            _rollup_dims(values),
            (f["gen_ai.usage.input_tokens"], f["gen_ai.usage.output_tokens"], f["cost_micros"]),
            [(c["class"], c["source"]) for c in f["data_classes"]],
            f.get("metadata"),
        )
    # time_end is time_start + latency_ms, as the record's own time_end says.
    await tx.executemany(_SQLITE_INSERT_CALL, rows)
    classes = [
        (r.event_id, c["class"], c["source"], c["count"], start)
        for r, start in calls
        for c in r.fields["data_classes"]
    ]
    if classes:
        await tx.executemany(_SQLITE_INSERT_CLASS, classes)
    await deltas.apply(tx, "sqlite")


async def _insert_postgresql(tx: Tx, records: Sequence[SealedRecord]) -> None:
    kinds = {r.event_type for r in records}
    projecting = LLM_CALL in kinds, MCP_TOOL_CALL in kinds
    received = ms_to_datetime(time.time_ns() // 1_000_000)
    joined = _pg_joined(records)
    if joined is not None:
        ids, types, times, bodies, hashes, sizes = joined
        sql = _PG_INSERTS[True, *projecting]
        await tx.execute(sql, ids, types, times, bodies, hashes, received, sizes)
        return
    await tx.execute(
        _PG_INSERTS[False, *projecting],
        [r.event_id for r in records],
        [r.event_type for r in records],
        [ms_to_datetime(r.at_ms) for r in records],
        [r.body for r in records],
        [r.leaf_hash for r in records],
        received,
    )


def _pg_joined(records: Sequence[SealedRecord]) -> tuple[str, str, str, bytes, bytes, str] | None:
    """The batch as ``_PG_FROM_JOINED`` takes it, or ``None`` where it cannot be cut apart again
    exactly (then the arrays carry it): a single record (one empty id would split into no line
    at all), an id or type that is not a string or holds a newline, a leaf hash of another
    length than 32 bytes."""
    if len(records) < 2:
        return None
    lines = len(records) - 1
    try:
        ids = "\n".join([r.event_id for r in records])
        types = "\n".join([r.event_type for r in records])
    except TypeError:
        return None
    hashes = b"".join([r.leaf_hash for r in records])
    if ids.count("\n") != lines or types.count("\n") != lines or len(hashes) != 32 * len(records):
        return None
    times = "\n".join([rfc3339_ms(r.at_ms) for r in records])  # what the store goes by
    sizes = ",".join([str(len(r.body)) for r in records])
    return ids, types, times, b"".join([r.body for r in records]), hashes, sizes


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

"""The daily rollups of the LLM-call projection (migration 0009): what the report sums instead
of the raw rows when it can.

- ``audit_llm_daily``: per UTC day and every value of the call's report dimensions
  (``CALL_DIMS``), how many calls, their input and output tokens and their cost.
- ``audit_llm_daily_routes`` and ``audit_llm_daily_principals``: the same sums over fewer
  dimensions (``ROUTE_DIMS``: no principal, status, stage or error; ``PRINCIPAL_DIMS``: team,
  principal and outcome), so far fewer rows a day for the groupings they hold.
- ``audit_llm_daily_classes``: per UTC day, the dimensions ``CLASS_DIMS``, a data class and a
  source: the same sums over the calls carrying that class. ``source`` is ``declared`` or
  ``detected`` (a call counts once per class and source it carries), ``*`` (once per class it
  carries, from either source or both), or null with a null class (the calls carrying none).
- ``audit_llm_daily_metadata`` (migration 0012): per UTC day, the dimensions ``METADATA_DIMS``,
  a metadata key and its value: the same sums over the calls whose record's ``metadata``
  carries that key with that value (a call counts once per key it carries). The calls that do
  not carry a key are not listed: they are the day's calls (any per-call rollup) less those
  that do.

Contracts:

- Each rollup is exactly the sum of the projection rows (``audit_llm_calls``,
  ``audit_llm_call_data_classes``) it covers, in every committed state: it changes in the
  transaction that changes them, by what that transaction adds or deletes and nothing else. A
  record inserted again (a replay) adds no projection row and so nothing here; the purge
  subtracts what it deletes (``subtract_calls``) and drops sums that reach zero.
- Keys are null-safe: a null team and a team named ``"0"`` are different rows (PostgreSQL:
  ``NULLS NOT DISTINCT``; SQLite: ``ifnull(column, 0)``, an integer, which never equals text).
- Days are ``YYYY-MM-DD`` text on both dialects, the report's own ``day`` bucket.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from custos.state.store import Tx

CALLS: Final = "audit_llm_daily"
ROUTES: Final = "audit_llm_daily_routes"
PRINCIPALS: Final = "audit_llm_daily_principals"
CLASSES: Final = "audit_llm_daily_classes"
CALL_DIMS: Final = ("team", "principal_kind", "principal_id", "operation", "requested_model",
                    "provider", "provider_name", "model", "region", "status", "outcome",
                    "stopped_at", "error_type")  # fmt: skip
ROUTE_DIMS: Final = ("team", "operation", "requested_model", "provider", "provider_name",
                     "model", "region", "outcome")  # fmt: skip
PRINCIPAL_DIMS: Final = ("team", "principal_kind", "principal_id", "outcome")
CLASS_DIMS: Final = ("team", "operation", "provider", "provider_name", "region", "outcome")
METADATA: Final = "audit_llm_daily_metadata"
METADATA_DIMS: Final = ("team", "provider", "model", "outcome")
METADATA_KEYS: Final = ("key", "value")
#: The per-call rollups, fewest rows a day first (a report reads the first that holds its
#: grouping), each with its dimensions; ``outcome`` is in each (served, denied, failed).
CALL_ROLLUPS: Final = {ROUTES: ROUTE_DIMS, PRINCIPALS: PRINCIPAL_DIMS, CALLS: CALL_DIMS}
DIMS: Final = {**CALL_ROLLUPS, CLASSES: CLASS_DIMS, METADATA: METADATA_DIMS}
CLASS_KEYS: Final = ("data_class", "source")
#: The keys each rollup has besides the day and its dimensions.
_EXTRA_KEYS: Final = {CLASSES: CLASS_KEYS, METADATA: METADATA_KEYS}
MEASURES: Final = ("requests", "input_tokens", "output_tokens", "cost_micros")
ANY_SOURCE: Final = "*"
#: Columns the projection never leaves null (the others are keyed null-safely on SQLite).
_NOT_NULL: Final = frozenset({"operation", "status", "outcome", "day", "key"})

#: Each rollup's dimensions out of a call's ``CALL_DIMS`` values.
_PICK: Final = {
    table: operator.itemgetter(*(CALL_DIMS.index(d) for d in dims)) for table, dims in DIMS.items()
}

Key = tuple[Any, ...]
Sums = list[int]


def _key_columns(table: str) -> tuple[str, ...]:
    return ("day", *DIMS[table], *_EXTRA_KEYS.get(table, ()))


def conflict_target(table: str, dialect: str) -> str:
    """The rollup's unique key as an ``ON CONFLICT`` target (the index migration 0009 made)."""
    columns = _key_columns(table)
    if dialect == "postgresql":
        return ", ".join(columns)
    return ", ".join(c if c in _NOT_NULL else f"ifnull({c}, 0)" for c in columns)


def upsert_sql(table: str, dialect: str, source: str = "") -> str:
    """Add rows of (key, measures) to ``table``'s sums: bound values (``source`` empty) or the
    rows of a ``SELECT`` (``source``)."""
    columns = (*_key_columns(table), *MEASURES)
    if not source:
        source = "VALUES (" + ", ".join(f"${i}" for i in range(1, len(columns) + 1)) + ")"
    adds = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) {source}"
        f" ON CONFLICT ({conflict_target(table, dialect)}) DO UPDATE SET {adds}"
    )


class Deltas:
    """What a set of calls adds to (or, with ``sign=-1``, takes from) both rollups."""

    def __init__(self, sign: int = 1) -> None:
        self.sign = sign
        self.sums: dict[str, dict[Key, Sums]] = {
            table: defaultdict(lambda: [0, 0, 0, 0]) for table in DIMS
        }

    def add(self, day: str, dims: Sequence[Any], measures: Sequence[int],
            classes: Iterable[tuple[str, str]],
            metadata: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """One call: its day, its ``CALL_DIMS`` values, (input tokens, output tokens, cost),
        its (class, source) pairs (repeats count once, as the projection keeps them) and its
        record's metadata."""
        one = (self.sign, *(self.sign * int(m) for m in measures))
        for table in CALL_ROLLUPS:
            _plus(self.sums[table][(day, *_PICK[table](dims))], one)
        if metadata:
            by_key = (day, *_PICK[METADATA](dims))
            metadata_sums = self.sums[METADATA]
            for key, value in metadata.items():
                _plus(metadata_sums[(*by_key, key, value)], one)
        narrow = (day, *_PICK[CLASSES](dims))
        classes_sums = self.sums[CLASSES]
        pairs = set(classes)
        if not pairs:
            _plus(classes_sums[(*narrow, None, None)], one)
        for pair in pairs:
            _plus(classes_sums[(*narrow, *pair)], one)
        for name in {name for name, _ in pairs}:
            _plus(classes_sums[(*narrow, name, ANY_SOURCE)], one)

    async def apply(self, tx: Tx, dialect: str) -> None:
        for table, sums in self.sums.items():
            if sums:
                await tx.executemany(
                    upsert_sql(table, dialect), [(*key, *v) for key, v in sorted_items(sums)]
                )
        if self.sign < 0:  # drop the sums that reached zero, on the days touched
            days = sorted({key[0] for key in self.sums[CALLS]})
            for table in CALL_ROLLUPS.keys() | {CLASSES}:
                await tx.executemany(
                    f"DELETE FROM {table} WHERE day = $1 AND requests = 0", [(d,) for d in days]
                )
            # The metadata rollup's unique index leads with the key: delete by key and day.
            keys = sorted({(key[-2], key[0]) for key in self.sums[METADATA]})
            if keys:
                await tx.executemany(
                    f"DELETE FROM {METADATA} WHERE key = $1 AND day = $2 AND requests = 0", keys
                )


def sorted_items(sums: dict[Key, Sums]) -> list[tuple[Key, Sums]]:
    """In key order (nulls first), so concurrent writers lock rollup rows in one order."""
    return sorted(sums.items(), key=lambda kv: [(v is not None, str(v)) for v in kv[0]])


def _plus(acc: Sums, values: Sequence[int]) -> None:
    for i, value in enumerate(values):
        acc[i] += value


#: Each dialect's ``day`` of ``time_start`` (``Store.time_bucket``'s).
_DAY_OF: Final = {
    "sqlite": "substr(time_start, 1, 10)",
    "postgresql": "to_char(time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def _metadata(record: bytes) -> dict[str, Any] | None:
    """A stored record's ``metadata`` object (``None`` when it has none)."""
    try:
        found = orjson.loads(record).get("metadata")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


async def subtract_calls(tx: Tx, event_ids: Sequence[str]) -> None:
    """Take the projection rows of ``event_ids`` out of the rollups; call it before deleting
    those rows and before emptying their records (the metadata is read from the records), in
    the same transaction."""
    deltas = Deltas(sign=-1)
    dialect = "sqlite" if tx.serial_writes else "postgresql"
    day_of = _DAY_OF[dialect]
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
        rows = await tx.fetch(
            f"SELECT event_id, {day_of} AS day, {', '.join(CALL_DIMS)},"
            f" input_tokens, output_tokens, cost_micros FROM audit_llm_calls"
            f" WHERE event_id IN ({marks})",
            *chunk,
        )
        pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for row in await tx.fetch(
            "SELECT event_id, data_class, source FROM audit_llm_call_data_classes"
            f" WHERE event_id IN ({marks})",
            *chunk,
        ):
            pairs[row["event_id"]].append((row["data_class"], row["source"]))
        metadata = {
            row["event_id"]: _metadata(bytes(row["record"]))
            for row in await tx.fetch(
                f"SELECT event_id, record FROM audit_events WHERE event_id IN ({marks})", *chunk
            )
        }
        for row in rows:
            deltas.add(
                str(row["day"]),
                [row[d] for d in CALL_DIMS],
                (row["input_tokens"], row["output_tokens"], row["cost_micros"]),
                pairs.get(row["event_id"], ()),
                metadata.get(row["event_id"]),
            )
    await deltas.apply(tx, dialect)

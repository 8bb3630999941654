"""The daily rollup of the tool-call projection (migration 0011): what the tool-call report sums
instead of the rows when it can (whole UTC days, a grouping the rollup holds).

``audit_tool_daily``: per UTC day and each value of ``DIMS`` (team, endpoint, server, tool,
region, outcome, stage, error), how many calls and how many of them the tool itself marked as
an error. No principal, status or the name a tool was called as: a grouping by one of those
reads the rows.

Contracts (as ``custos.audit.storage.rollup``'s for model calls):

- The rollup is exactly the sum of the ``audit_tool_calls`` rows it covers, in every committed
  state: it changes in the transaction that changes them, by what that transaction adds
  (``Deltas``, or on PostgreSQL a grouped upsert in the insert's statement) or deletes (the
  purge: ``subtract_tool_calls``, which drops sums that reach zero).
- Keys are null-safe: PostgreSQL's ``NULLS NOT DISTINCT``; on SQLite ``ifnull(column, 0)``
  (every dimension is text, which never equals the integer 0).
- Days are ``YYYY-MM-DD`` text on both dialects, the report's ``day`` bucket.
- Not guarded (every batch updates today's sums) and not trusted by ``custos audit verify``:
  the report's figures can always be recomputed from the rows (``rollups=False``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from custos.state.store import Tx

TABLE: Final = "audit_tool_daily"
#: ``audit_tool_calls`` columns the rollup keeps, after ``day``.
DIMS: Final = ("team", "endpoint", "server", "tool", "region", "outcome", "stopped_at",
               "error_type")  # fmt: skip
MEASURES: Final = ("calls", "tool_errors")
_KEY: Final = ("day", *DIMS)

Key = tuple[Any, ...]


def conflict_target(dialect: str) -> str:
    """The rollup's unique key as an ``ON CONFLICT`` target (the index migration 0011 made)."""
    if dialect == "postgresql":
        return ", ".join(_KEY)
    return ", ".join(["day", *(f"ifnull({d}, 0)" for d in DIMS)])


def upsert_sql(dialect: str, source: str = "") -> str:
    """Add rows of (day, dimensions, calls, tool errors) to the sums: bound values (``source``
    empty) or the rows of a ``SELECT`` (``source``)."""
    columns = (*_KEY, *MEASURES)
    if not source:
        source = "VALUES (" + ", ".join(f"${i}" for i in range(1, len(columns) + 1)) + ")"
    adds = ", ".join(f"{m} = {TABLE}.{m} + excluded.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {TABLE} ({', '.join(columns)}) {source}"
        f" ON CONFLICT ({conflict_target(dialect)}) DO UPDATE SET {adds}"
    )


def pg_rollup_sql(projected: str) -> str:
    """The upsert adding the rows of the CTE ``projected`` (``audit_tool_calls`` rows the
    statement really inserted) to the sums, grouped, in key order (so that concurrent writers
    lock rollup rows in one order)."""
    day = "to_char(p.time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    keys = ", ".join([day, *(f"p.{d}" for d in DIMS)])
    sums = "count(*), count(*) FILTER (WHERE p.tool_error)"
    return upsert_sql(
        "postgresql",
        f"SELECT {keys}, {sums} FROM {projected} p GROUP BY {keys} ORDER BY {keys}",
    )


class Deltas:
    """What a set of tool calls adds to (``sign`` 1) or takes from (-1) the rollup."""

    def __init__(self, sign: int = 1) -> None:
        self.sign = sign
        self.sums: dict[Key, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, day: str, dims: Sequence[Any], tool_error: object) -> None:
        """One call: its day, its ``DIMS`` values and whether the tool marked it an error."""
        sums = self.sums[(day, *dims)]
        sums[0] += self.sign
        if tool_error:
            sums[1] += self.sign

    async def apply(self, tx: Tx, dialect: str) -> None:
        if not self.sums:
            return
        ordered = sorted(self.sums.items(), key=lambda kv: [(v is not None, str(v)) for v in kv[0]])
        await tx.executemany(upsert_sql(dialect), [(*key, *sums) for key, sums in ordered])
        if self.sign < 0:  # drop the sums that reached zero, on the days touched
            days = sorted({key[0] for key in self.sums})
            await tx.executemany(
                f"DELETE FROM {TABLE} WHERE day = $1 AND calls = 0", [(d,) for d in days]
            )


#: Each dialect's ``day`` of ``time_start``.
_DAY_OF: Final = {
    "sqlite": "substr(time_start, 1, 10)",
    "postgresql": "to_char(time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


async def subtract_tool_calls(tx: Tx, event_ids: Sequence[str]) -> None:
    """Take the ``audit_tool_calls`` rows of ``event_ids`` out of the rollup; call it before
    deleting those rows, in the same transaction."""
    deltas = Deltas(sign=-1)
    dialect = "sqlite" if tx.serial_writes else "postgresql"
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
        rows = await tx.fetch(
            f"SELECT {_DAY_OF[dialect]} AS day, {', '.join(DIMS)}, tool_error"
            f" FROM audit_tool_calls WHERE event_id IN ({marks})",
            *chunk,
        )
        for row in rows:
            deltas.add(str(row["day"]), [row[d] for d in DIMS], row["tool_error"])
    await deltas.apply(tx, dialect)

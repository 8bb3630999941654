"""The tool-call report: MCP tool calls between two times, grouped by team, server, tool, …,
with how many were served, denied (by which stage, grouping by ``stage``), cancelled or failed.

It answers "which teams called which tools on which servers last quarter, and what was refused"
with ``group_by=["team", "server", "tool"]``. It reads the projection ``audit_tool_calls``
(migration 0011) only, one indexed query per report, never the records themselves.

Contracts:

- The range is read as for the model-call report (``custos.audit.compliance.report``):
  dates are whole UTC days, both inclusive; RFC 3339 times are exact, ``to`` exclusive. A call
  is in the range when its ``time_start`` is.
- Every call is in exactly one row, so the rows add up to the totals; ``totals`` is their sum.
- ``served``, ``denied``, ``cancelled`` and ``failed`` (``upstream_error``, ``error``,
  ``client_disconnected``) add up to ``calls``; ``tool_errors`` counts the served calls whose
  result the tool itself marked as an error (``isError``), which the gateway passed on.
- No daily rollups: tool calls are fewer than model calls, and a quarter of 200,000 of them is
  summed from the rows in well under a second on either store (docs/mcp.md has the figures).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from custos.audit.compliance.report import ReportError
from custos.audit.storage.store import AuditStore

#: Report dimension → its column of ``audit_tool_calls t``.
_COLUMNS = {
    "team": "t.team",
    "principal": "t.principal_id",
    "principal_kind": "t.principal_kind",
    "endpoint": "t.endpoint",
    "server": "t.server",
    "tool": "t.tool",
    "called_as": "t.called_as",
    "region": "t.region",
    "outcome": "t.outcome",
    "status": "t.status",
    "stage": "t.stopped_at",
    "error": "t.error_type",
}
_TIME_UNITS = ("day", "month", "quarter")
DIMENSIONS = (*_COLUMNS, *_TIME_UNITS)
DEFAULT_GROUP_BY = "team,server,tool"
MEASURES = ("calls", "served", "denied", "cancelled", "failed", "tool_errors")


def _count_where(condition: str) -> str:
    return f"CAST(COALESCE(sum(CASE WHEN {condition} THEN 1 ELSE 0 END), 0) AS BIGINT)"


_FAILED = "t.outcome IS NULL OR t.outcome NOT IN ('served', 'denied', 'cancelled')"
_MEASURES_SQL = ", ".join([
    "count(*) AS calls",
    _count_where("t.outcome = 'served'") + " AS served",
    _count_where("t.outcome = 'denied'") + " AS denied",
    _count_where("t.outcome = 'cancelled'") + " AS cancelled",
    _count_where(_FAILED) + " AS failed",  # a null outcome: a record built only in part
    _count_where("t.tool_error") + " AS tool_errors",
])  # fmt: skip


def parse_group_by(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ReportError(f"cannot group by {unknown[0]!r}: choose from {', '.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise ReportError("a dimension appears twice in group_by")
    return names


async def build_tool_report(
    store: AuditStore, *, since: datetime, until: datetime, group_by: tuple[str, ...]
) -> dict[str, Any]:
    """The report as JSON (``rows`` of ``group`` and the measures, ``totals``)."""
    bucket = store.store.time_bucket
    columns = {**_COLUMNS, **{unit: bucket("t.time_start", unit) for unit in _TIME_UNITS}}
    select = ", ".join(f"{columns[name]} AS g{i}" for i, name in enumerate(group_by))
    sql = (
        f"SELECT {select + ', ' if select else ''}{_MEASURES_SQL} FROM audit_tool_calls t"
        " WHERE t.time_start >= $1 AND t.time_start < $2"
    )
    if group_by:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(len(group_by)))
    found = await store.fetch(sql, since, until)
    rows = [
        {"group": {name: row[f"g{i}"] for i, name in enumerate(group_by)},
         **{m: int(row[m]) for m in MEASURES}}
        for row in found
        if int(row["calls"]) > 0
    ]  # fmt: skip
    rows.sort(key=lambda r: [(v is None, str(v)) for v in r["group"].values()])
    totals = {m: sum(r[m] for r in rows) for m in MEASURES}
    return {
        "kind": "tool_calls",
        "from": since.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        "group_by": list(group_by),
        "rows": rows,
        "totals": totals,
    }

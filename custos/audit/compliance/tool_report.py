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
- Over whole UTC days, when every dimension asked for is one the daily rollup keeps (team,
  endpoint, server, tool, region, outcome, stage, error, and the time units), the report sums
  the rollup (``custos.audit.storage.tool_rollup``) instead of the rows, with the same
  result; grouping by principal, principal_kind, called_as or status, or an exact time range,
  reads the rows (``bench/tool_report.py`` measures both).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from custos.audit.compliance.report import _DAY_BUCKETS, ReportError, _whole_days
from custos.audit.storage import tool_rollup
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


_ENDED = "('served', 'denied', 'cancelled')"
_FAILED = f"t.outcome IS NULL OR t.outcome NOT IN {_ENDED}"
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


#: The same measures over the rollup ``r`` (its rows are sums already).
_ROLLUP_SUMS = ", ".join([
    "CAST(COALESCE(sum(r.calls), 0) AS BIGINT) AS calls",
    *(f"CAST(COALESCE(sum(CASE WHEN r.outcome = '{o}' THEN r.calls ELSE 0 END), 0) AS BIGINT)"
      f" AS {o}" for o in ("served", "denied", "cancelled")),
    f"CAST(COALESCE(sum(CASE WHEN r.outcome IS NULL OR r.outcome NOT IN {_ENDED} THEN r.calls"
    " ELSE 0 END), 0) AS BIGINT) AS failed",
    "CAST(COALESCE(sum(r.tool_errors), 0) AS BIGINT) AS tool_errors",
])  # fmt: skip


async def build_tool_report(
    store: AuditStore,
    *,
    since: datetime,
    until: datetime,
    group_by: tuple[str, ...],
    rollups: bool = True,
) -> dict[str, Any]:
    """The report as JSON (``rows`` of ``group`` and the measures, ``totals``): summed from the
    daily rollup (``custos.audit.storage.tool_rollup``) over whole UTC days when it holds every
    dimension of ``group_by``, else from the rows (always, with ``rollups=False``: the same
    report)."""
    days = _whole_days(since, until)
    rolled = {**{n: f"r.{c[2:]}" for n, c in _COLUMNS.items() if c[2:] in tool_rollup.DIMS},
              **_DAY_BUCKETS}  # fmt: skip
    if rollups and days is not None and set(group_by) <= set(rolled):
        select = ", ".join(f"{rolled[name]} AS g{i}" for i, name in enumerate(group_by))
        sql = (
            f"SELECT {select + ', ' if select else ''}{_ROLLUP_SUMS} FROM {tool_rollup.TABLE} r"
            " WHERE r.day >= $1 AND r.day < $2"
        )
        args: tuple[Any, ...] = days
    else:
        bucket = store.store.time_bucket
        columns = {**_COLUMNS, **{unit: bucket("t.time_start", unit) for unit in _TIME_UNITS}}
        select = ", ".join(f"{columns[name]} AS g{i}" for i, name in enumerate(group_by))
        sql = (
            f"SELECT {select + ', ' if select else ''}{_MEASURES_SQL} FROM audit_tool_calls t"
            " WHERE t.time_start >= $1 AND t.time_start < $2"
        )
        args = (since, until)
    if group_by:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(len(group_by)))
    found = await store.fetch(sql, *args)
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

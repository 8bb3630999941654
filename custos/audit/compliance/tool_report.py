"""The tool-call report: MCP tool calls between two times, grouped by team, server, tool, …,
with how many were served, denied (by which stage, grouping by ``stage``), cancelled or failed.

It answers "which teams called which tools on which servers last quarter, and what was refused"
with ``group_by=["team", "server", "tool"]``, and "which teams sent customer data to which
tools" with ``data_class="customer_data"``. It reads the projections of migration 0011
(``audit_tool_calls``, ``audit_tool_call_data_classes``, the daily rollup), never the records.

Contracts:

- The range is read as for the model-call report (``custos.audit.compliance.report``):
  dates are whole UTC days, both inclusive; RFC 3339 times are exact, ``to`` exclusive. A call
  is in the range when its ``time_start`` is.
- With ``data_class`` only calls that carry that class count; with ``source`` as well
  (``declared`` by the caller, ``detected`` in the arguments), only calls carrying it from that
  source; ``source`` alone: calls carrying any class from it (as the model-call report).
- Every call is in exactly one row, so the rows add up to the totals, except grouped by
  ``data_class``: a call is in the row of each class it carries (and calls with none in the
  row whose class is null), once per class whatever its sources, or once per class and source
  grouped by ``data_class_source`` too; ``totals`` then counts the calls themselves.
- ``served``, ``denied``, ``cancelled`` and ``failed`` (``upstream_error``, ``error``,
  ``client_disconnected``) add up to ``calls``; ``tool_errors`` counts the served calls whose
  result the tool itself marked as an error (``isError``), which the gateway passed on.
- Over whole UTC days, when every dimension asked for is one the daily rollup keeps (team,
  endpoint, server, tool, region, outcome, stage, error, and the time units) and no data class
  is asked about, the report sums the rollup (``custos.audit.storage.tool_rollup``) instead of
  the rows, with the same result; grouping by principal, principal_kind, called_as, status or
  data class, a data-class filter, or an exact time range reads the rows
  (``bench/tool_report.py`` measures both).
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
#: Grouping by data class: a call counts once per class it carries (``data_class``), or once
#: per class and source (with ``data_class_source`` too); calls carrying none: a null class.
_CLASS_COLUMNS = {"data_class": "d.data_class", "data_class_source": "d.source"}
_CLASSES = "audit_tool_call_data_classes"
_TIME_UNITS = ("day", "month", "quarter")
DIMENSIONS = (*_COLUMNS, *_CLASS_COLUMNS, *_TIME_UNITS)
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
    data_class: str | None = None,
    source: str | None = None,
    rollups: bool = True,
) -> dict[str, Any]:
    """The report as JSON (``rows`` of ``group`` and the measures, ``totals``): summed from the
    daily rollup (``custos.audit.storage.tool_rollup``) over whole UTC days when it holds every
    dimension of ``group_by`` and no data class is asked about, else from the rows (always,
    with ``rollups=False``: the same report)."""
    days = _whole_days(since, until)
    rolled = {**{n: f"r.{c[2:]}" for n, c in _COLUMNS.items() if c[2:] in tool_rollup.DIMS},
              **_DAY_BUCKETS}  # fmt: skip
    by_class = bool(_CLASS_COLUMNS.keys() & set(group_by))
    filtered = data_class is not None or source is not None
    if rollups and days is not None and set(group_by) <= set(rolled) and not filtered:
        found, totals = await _summed(store, days, group_by, rolled)
    else:
        found, totals = await _counted(store, since, until, group_by, data_class, source)
    rows = [
        {"group": {name: row[f"g{i}"] for i, name in enumerate(group_by)},
         **{m: int(row[m]) for m in MEASURES}}
        for row in found
        if int(row["calls"]) > 0
    ]  # fmt: skip
    rows.sort(key=lambda r: [(v is None, str(v)) for v in r["group"].values()])
    if not by_class:  # each call is in exactly one row
        totals = {m: sum(r[m] for r in rows) for m in MEASURES}
    return {
        "kind": "tool_calls",
        "from": since.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        "group_by": list(group_by),
        "data_class": data_class,
        "source": source,
        "rows": rows,
        "totals": totals,
    }


def _grouped(select: str, source: str, where: str, group_by: tuple[str, ...]) -> str:
    sql = f"SELECT {select + ', ' if select else ''}{source} WHERE {where}"
    if group_by:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(len(group_by)))
    return sql


async def _summed(
    store: AuditStore, days: tuple[str, str], group_by: tuple[str, ...], rolled: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    select = ", ".join(f"{rolled[name]} AS g{i}" for i, name in enumerate(group_by))
    source = f"{_ROLLUP_SUMS} FROM {tool_rollup.TABLE} r"
    found = await store.fetch(_grouped(select, source, "r.day >= $1 AND r.day < $2", group_by),
                              *days)  # fmt: skip
    return found, {}


async def _counted(
    store: AuditStore,
    since: datetime,
    until: datetime,
    group_by: tuple[str, ...],
    data_class: str | None,
    source: str | None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of the projection, counted; with the totals when a call may be in several rows
    (grouped by data class: once per class it carries, or per class and source)."""
    bucket = store.store.time_bucket
    columns = {**_COLUMNS, **_CLASS_COLUMNS,
               **{unit: bucket("t.time_start", unit) for unit in _TIME_UNITS}}  # fmt: skip
    args: list[Any] = [since, until]
    where = "t.time_start >= $1 AND t.time_start < $2"
    if data_class is not None or source is not None:
        carried = []
        for column, value in (("data_class", data_class), ("source", source)):
            if value is not None:
                args.append(value)
                carried.append(f" AND x.{column} = ${len(args)}")
        where += (
            f" AND EXISTS (SELECT 1 FROM {_CLASSES} x"
            f" WHERE x.event_id = t.event_id{''.join(carried)})"
        )
    join = ""
    if _CLASS_COLUMNS.keys() & set(group_by):
        source_column = ", source" if "data_class_source" in group_by else ""
        join = (
            f" LEFT JOIN (SELECT DISTINCT event_id, data_class{source_column} FROM {_CLASSES}"
            " WHERE time_start >= $1 AND time_start < $2) d ON d.event_id = t.event_id"
        )
    select = ", ".join(f"{columns[name]} AS g{i}" for i, name in enumerate(group_by))
    found = await store.fetch(
        _grouped(select, f"{_MEASURES_SQL} FROM audit_tool_calls t{join}", where, group_by),
        *args,
    )
    if not join:
        return found, {}
    (row,) = await store.fetch(f"SELECT {_MEASURES_SQL} FROM audit_tool_calls t WHERE {where}",
                               *args)  # fmt: skip
    return found, {m: int(row[m]) for m in MEASURES}

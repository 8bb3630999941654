"""The audit report: LLM calls between two times, grouped, with requests, tokens, cost, denials.

It answers "which teams sent customer data to which providers last quarter" with
``group_by=["team", "provider"]``, ``data_class="customer_data"``. It reads the projection
tables only (never parsing records), so it is one indexed query per report; over whole UTC
days it sums the daily rollups (``custos.audit.storage.rollup``) instead when one holds the
grouping and the filter, with the same result.

Contracts:

- ``--from``/``--to`` given as dates (``2026-07-01``) are whole UTC days, both inclusive;
  given as RFC 3339 times they are exact, ``from`` inclusive and ``to`` exclusive.
- A call is in the range when its ``time_start`` is.
- With ``data_class``, only calls that carry that class count; with ``source`` as well
  (``declared``: the caller said so in its metadata; ``detected``: the gateway found it in the
  content), only calls that carry it from that source. ``source`` alone: calls carrying any
  class from that source.
- Grouping by ``data_class`` puts a call in the row of each class it carries, once per class
  whatever its sources (and calls with no class in the row whose ``data_class`` is null), so
  those rows can add up to more than the totals; grouping by ``data_class_source`` too, once
  per class and source. ``totals`` is always computed from the calls themselves, never by
  adding rows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from custos.audit.storage import rollup
from custos.audit.storage.store import AuditStore

#: Report dimension → its SQL expression over ``audit_llm_calls c`` (and ``d``, the classes).
_COLUMNS = {
    "team": "c.team",
    "principal": "c.principal_id",
    "principal_kind": "c.principal_kind",
    "provider": "c.provider",
    "provider_name": "c.provider_name",
    "model": "c.model",
    "requested_model": "c.requested_model",
    "region": "c.region",
    "operation": "c.operation",
    "outcome": "c.outcome",
    "status": "c.status",
    "stage": "c.stopped_at",
    "error": "c.error_type",
    "data_class": "d.data_class",
    "data_class_source": "d.source",
}
_TIME_UNITS = ("day", "month", "quarter")
DIMENSIONS = (*_COLUMNS, *_TIME_UNITS)
#: ``metadata.KEY``: the value of KEY in the calls' metadata (the ``X-Custos-Metadata``
#: object their records hold); null for the calls without that key.
METADATA_PREFIX = "metadata."
MAX_KEY_LENGTH = 128
MEASURES = ("requests", "served", "denied", "failed", "input_tokens", "output_tokens",
            "cost_micros")  # fmt: skip

_MEASURES_SQL = """count(*) AS requests,
    CAST(COALESCE(sum(CASE WHEN c.outcome = 'served' THEN 1 ELSE 0 END), 0) AS BIGINT) AS served,
    CAST(COALESCE(sum(CASE WHEN c.outcome = 'denied' THEN 1 ELSE 0 END), 0) AS BIGINT) AS denied,
    CAST(COALESCE(sum(CASE WHEN c.outcome NOT IN ('served', 'denied') THEN 1 ELSE 0 END), 0)
         AS BIGINT) AS failed,
    CAST(COALESCE(sum(c.input_tokens), 0) AS BIGINT) AS input_tokens,
    CAST(COALESCE(sum(c.output_tokens), 0) AS BIGINT) AS output_tokens,
    CAST(COALESCE(sum(c.cost_micros), 0) AS BIGINT) AS cost_micros"""


#: A ``metadata.KEY`` dimension over a call's record ``e`` (``{n}``: the key's parameter):
#: the key's value, null when the call's metadata lacks it.
_METADATA_VALUE = {
    "sqlite": "(SELECT m.value FROM json_each(CAST(e.record AS TEXT), '$.metadata') m"
    " WHERE m.key = ${n})",
    "postgresql": "(convert_from(e.record, 'UTF8')::json -> 'metadata' ->> ${n}::text)",
}

#: The same measures over a rollup ``r`` (its rows are sums already).
_ROLLUP_SUMS = """CAST(COALESCE(sum(r.requests), 0) AS BIGINT) AS requests,
    CAST(COALESCE(sum(CASE WHEN r.outcome = 'served' THEN r.requests ELSE 0 END), 0) AS BIGINT)
         AS served,
    CAST(COALESCE(sum(CASE WHEN r.outcome = 'denied' THEN r.requests ELSE 0 END), 0) AS BIGINT)
         AS denied,
    CAST(COALESCE(sum(CASE WHEN r.outcome NOT IN ('served', 'denied') THEN r.requests ELSE 0
         END), 0) AS BIGINT) AS failed,
    CAST(COALESCE(sum(r.input_tokens), 0) AS BIGINT) AS input_tokens,
    CAST(COALESCE(sum(r.output_tokens), 0) AS BIGINT) AS output_tokens,
    CAST(COALESCE(sum(r.cost_micros), 0) AS BIGINT) AS cost_micros"""
#: The time units over a rollup's ``day`` text (``YYYY-MM-DD``), the same text on both
#: dialects as ``Store.time_bucket`` makes from a time.
_DAY_BUCKETS = {
    "day": "r.day",
    "month": "substr(r.day, 1, 7)",
    "quarter": "substr(r.day, 1, 4) || '-Q' || ((CAST(substr(r.day, 6, 2) AS INTEGER) + 2) / 3)",
}


class ReportError(ValueError):
    """A report request that cannot be answered (unknown dimension, bad date)."""


@dataclass(frozen=True, slots=True)
class Report:
    since: datetime
    until: datetime
    group_by: tuple[str, ...]
    data_class: str | None
    rows: list[dict[str, Any]]
    source: str | None = None
    totals: dict[str, int] = field(default_factory=dict)


def parse_range(since: str, until: str) -> tuple[datetime, datetime]:
    """``--from``/``--to`` as ``[since, until)`` (see the module docstring)."""
    start = _moment(since, "from", end=False)
    end = _moment(until, "to", end=True)
    if end <= start:
        raise ReportError("'to' must be after 'from'")
    return start, end


def _moment(text: str, name: str, *, end: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        # RFC 3339 allows a lower-case "t" and "z"; fromisoformat does not.
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"'{name}' must be a date (2026-07-01) or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ReportError(f"'{name}' must carry a time zone (e.g. Z)")
    return moment.astimezone(UTC)


def parse_group_by(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DIMENSIONS and metadata_key(n) is None]
    if unknown:
        raise ReportError(
            f"cannot group by {unknown[0]!r}: choose from {', '.join(DIMENSIONS)},"
            f" {METADATA_PREFIX}KEY"
        )
    if len(set(names)) != len(names):
        raise ReportError("a dimension appears twice in group_by")
    if sum(metadata_key(n) is not None for n in names) > 1:
        raise ReportError(f"group_by takes one {METADATA_PREFIX}KEY at a time")
    return names


def metadata_key(name: str) -> str | None:
    """The metadata key a ``metadata.KEY`` dimension names (``None``: not such a dimension)."""
    if not name.startswith(METADATA_PREFIX):
        return None
    key = name[len(METADATA_PREFIX) :]
    return key if 0 < len(key) <= MAX_KEY_LENGTH else None


async def build_report(
    store: AuditStore,
    *,
    since: datetime,
    until: datetime,
    group_by: tuple[str, ...],
    data_class: str | None = None,
    source: str | None = None,
    rollups: bool = True,
) -> Report:
    """The report; from the daily rollups where they can answer it (``rollups=False``: from
    the projection's rows always, which must give the same report)."""
    summed = (
        await _from_rollup(store, since, until, group_by, data_class, source) if rollups else None
    )
    if summed is not None:
        return summed
    bucket = store.store.time_bucket
    columns = {**_COLUMNS, **{unit: bucket("c.time_start", unit) for unit in _TIME_UNITS}}
    args: list[Any] = [since, until]
    where = "c.time_start >= $1 AND c.time_start < $2"
    join = ""
    if data_class is not None or source is not None:
        carried = []
        for column, value in (("data_class", data_class), ("source", source)):
            if value is not None:
                args.append(value)
                carried.append(f" AND x.{column} = ${len(args)}")
        where += (
            " AND EXISTS (SELECT 1 FROM audit_llm_call_data_classes x"
            f" WHERE x.event_id = c.event_id{''.join(carried)})"
        )
    filters = list(args)
    for name in group_by:
        key = metadata_key(name)
        if key is not None:
            # The projection has no metadata column: each call's record says.
            args.append(key)
            columns[name] = _METADATA_VALUE[store.store.dialect].format(n=len(args))
            join = " JOIN audit_events e ON e.event_id = c.event_id"
    if "data_class" in group_by or "data_class_source" in group_by:
        # A call counts once per class it carries; once per class and source only when the
        # rows are split by source (a class both declared and detected is one class).
        source_column = ", source" if "data_class_source" in group_by else ""
        join += (
            f" LEFT JOIN (SELECT DISTINCT event_id, data_class{source_column}"
            " FROM audit_llm_call_data_classes"
            " WHERE time_start >= $1 AND time_start < $2) d ON d.event_id = c.event_id"
        )
    select = ", ".join(f"{columns[name]} AS g{i}" for i, name in enumerate(group_by))
    groups = ", ".join(f"g{i}" for i in range(len(group_by)))
    sql = f"SELECT {select + ', ' if select else ''}{_MEASURES_SQL} FROM audit_llm_calls c{join}"
    sql += f" WHERE {where}"
    if groups:
        sql += f" GROUP BY {groups}"
    rows = await store.fetch(sql, *args)
    totals_rows = await store.fetch(f"SELECT {_MEASURES_SQL} FROM audit_llm_calls c WHERE {where}",
                                    *filters)  # fmt: skip
    return _report(since, until, group_by, data_class, source, rows, totals_rows[0])


def _report(
    since: datetime,
    until: datetime,
    group_by: tuple[str, ...],
    data_class: str | None,
    source: str | None,
    rows: list[dict[str, Any]],
    totals_row: dict[str, Any],
) -> Report:
    out = [
        {
            "group": {name: row[f"g{i}"] for i, name in enumerate(group_by)},
            **{m: int(row[m]) for m in MEASURES},
        }
        for row in rows
        if int(row["requests"]) > 0
    ]
    out.sort(key=lambda r: [(v is None, str(v)) for v in r["group"].values()])
    totals = {m: int(totals_row[m]) for m in MEASURES}
    return Report(since, until, group_by, data_class, out, totals=totals, source=source)


def _whole_days(since: datetime, until: datetime) -> tuple[str, str] | None:
    """``[since, until)`` as ``[first day, day after the last)``, when both are UTC midnights."""
    edges = [moment.astimezone(UTC) for moment in (since, until)]
    if any(moment.time() != time(0) for moment in edges):
        return None
    return edges[0].date().isoformat(), edges[1].date().isoformat()


def _rollup_query(
    group_by: tuple[str, ...], data_class: str | None, source: str | None
) -> tuple[str, str, str] | None:
    """Which rollup answers this report, if one can: (rows table, rows condition, totals
    table+condition). The rollup rows (``custos.audit.storage.rollup``) count exactly what the
    raw query counts: per class for ``data_class`` (source ``*``), per class and source for
    ``data_class_source``, the calls carrying a class (and source) for the filters."""
    by_class = {"data_class", "data_class_source"} & set(group_by)
    others = [_COLUMNS[g][2:] for g in group_by if g not in by_class and g not in _TIME_UNITS]
    if source is not None and data_class is None:
        return None  # calls carrying any class from a source: one row per class, not per call
    if data_class is not None:
        if by_class or not set(others) <= set(rollup.CLASS_DIMS):
            return None
        return rollup.CLASSES, "r.data_class = $3 AND r.source = $4", "same"
    if not by_class:
        # The rollup with the fewest rows a day that holds every dimension asked for.
        table = next((t for t, d in rollup.CALL_ROLLUPS.items() if set(others) <= set(d)), None)
        return None if table is None else (table, "TRUE", "same")
    if not set(others) <= set(rollup.CLASS_DIMS):
        return None
    star = f"'{rollup.ANY_SOURCE}'"
    rows = (
        f"(r.source IS NULL OR r.source <> {star})"
        if "data_class_source" in group_by
        else f"(r.source IS NULL OR r.source = {star})"
    )
    return rollup.CLASSES, rows, next(iter(rollup.CALL_ROLLUPS))


async def _from_rollup(
    store: AuditStore,
    since: datetime,
    until: datetime,
    group_by: tuple[str, ...],
    data_class: str | None,
    source: str | None,
) -> Report | None:
    """The report summed from the daily rollups, or ``None`` when they cannot answer it (a
    range not in whole days, a grouping or filter they do not hold)."""
    days = _whole_days(since, until)
    if days is not None and any(metadata_key(name) is not None for name in group_by):
        return await _from_metadata_rollup(store, since, until, days, group_by, data_class, source)
    plan = _rollup_query(group_by, data_class, source)
    if days is None or plan is None:
        return None
    table, condition, totals_table = plan
    args: list[Any] = [*days]
    if data_class is not None:
        args += [data_class, source or rollup.ANY_SOURCE]
    # Every dimension is the rollup column of the same name (``c.x`` → ``r.x``).
    names = {**{n: f"r.{e[2:]}" for n, e in _COLUMNS.items()}, "data_class_source": "r.source",
             **_DAY_BUCKETS}  # fmt: skip
    select = ", ".join(f"{names[name]} AS g{i}" for i, name in enumerate(group_by))
    where = f"r.day >= $1 AND r.day < $2 AND {condition}"
    sql = f"SELECT {select + ', ' if select else ''}{_ROLLUP_SUMS} FROM {table} r WHERE {where}"
    if group_by:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(len(group_by)))
    rows = await store.fetch(sql, *args)
    if totals_table == "same":
        totals_rows = await store.fetch(f"SELECT {_ROLLUP_SUMS} FROM {table} r WHERE {where}",
                                        *args)  # fmt: skip
    else:
        totals_rows = await store.fetch(
            f"SELECT {_ROLLUP_SUMS} FROM {totals_table} r WHERE r.day >= $1 AND r.day < $2",
            *days,
        )
    return _report(since, until, group_by, data_class, source, rows, totals_rows[0])


async def _from_metadata_rollup(
    store: AuditStore,
    since: datetime,
    until: datetime,
    days: tuple[str, str],
    group_by: tuple[str, ...],
    data_class: str | None,
    source: str | None,
) -> Report | None:
    """A report grouped by one ``metadata.KEY``, summed from the metadata rollup: the calls
    carrying the key, per value, from its rows; the calls without it (value null), per group
    of the other dimensions, as all the calls of that group (the smallest per-call rollup
    holding those dimensions) less those carrying the key. ``None`` when the rollups cannot
    answer it (a class filter or grouping, a dimension the metadata rollup lacks)."""
    position = next(i for i, name in enumerate(group_by) if metadata_key(name) is not None)
    key = metadata_key(group_by[position])
    others = [g for g in group_by if g != group_by[position]]
    columns = [_COLUMNS[g][2:] for g in others if g not in _TIME_UNITS]
    if (
        data_class is not None
        or source is not None
        or not set(columns) <= set(rollup.METADATA_DIMS)
    ):
        return None
    table = next(t for t, d in rollup.CALL_ROLLUPS.items() if set(columns) <= set(d))
    names = {**{n: f"r.{e[2:]}" for n, e in _COLUMNS.items()}, **_DAY_BUCKETS}
    select = [f"{names[g]} AS g{i}" for i, g in enumerate(others)]
    labels = [f"g{i}" for i in range(len(select))]
    with_key = await store.fetch(
        f"SELECT {', '.join([*select, 'r.value AS gv'])}, {_ROLLUP_SUMS}"
        f" FROM {rollup.METADATA} r WHERE r.day >= $1 AND r.day < $2 AND r.key = $3"
        f" GROUP BY {', '.join([*labels, 'gv'])}",
        *days,
        key,
    )
    every = await store.fetch(
        f"SELECT {', '.join([*select, _ROLLUP_SUMS])}"
        f" FROM {table} r WHERE r.day >= $1 AND r.day < $2"
        + (f" GROUP BY {', '.join(labels)}" if labels else ""),
        *days,
    )
    # Per group of the other dimensions: all its calls, less those carrying the key.
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    for row in every:
        out[(*(row[g] for g in labels), None)] = {m: int(row[m]) for m in MEASURES}
    for row in with_key:
        groups = tuple(row[g] for g in labels)
        without = out.setdefault((*groups, None), dict.fromkeys(MEASURES, 0))
        for m in MEASURES:
            without[m] -= int(row[m])
        carried = out.setdefault((*groups, row["gv"]), dict.fromkeys(MEASURES, 0))
        for m in MEASURES:  # a null value adds back to the calls without the key
            carried[m] += int(row[m])
    rows = []
    for groups, measures in out.items():
        values = list(groups[:-1])
        values.insert(position, groups[-1])
        rows.append({**{f"g{i}": v for i, v in enumerate(values)}, **measures})
    totals_rows = await store.fetch(
        f"SELECT {_ROLLUP_SUMS} FROM {next(iter(rollup.CALL_ROLLUPS))} r"
        " WHERE r.day >= $1 AND r.day < $2",
        *days,
    )
    return _report(since, until, group_by, data_class, source, rows, totals_rows[0])


async def metadata_keys(
    store: AuditStore, since: datetime, until: datetime, *, limit: int = 100
) -> list[str]:
    """The metadata keys carried by calls on the UTC days ``[since, until)`` touches (the
    metadata rollup's), in order, at most ``limit``: what ``metadata.KEY`` can group by."""
    last = until - timedelta(microseconds=1)
    # Key by key along the rollup's unique index (the key first), each checked for a row in
    # the range: a few index probes a key, where DISTINCT would read every row of the range.
    table = rollup.METADATA
    rows = await store.fetch(
        f"WITH RECURSIVE k (key) AS (SELECT min(key) FROM {table}"
        f" UNION ALL SELECT (SELECT min(m.key) FROM {table} m WHERE m.key > k.key)"
        " FROM k WHERE k.key IS NOT NULL)"
        " SELECT k.key AS key FROM k WHERE k.key IS NOT NULL AND EXISTS"
        f" (SELECT 1 FROM {table} r WHERE r.key = k.key AND r.day >= $1 AND r.day <= $2)"
        " LIMIT $3",
        since.astimezone(UTC).date().isoformat(),
        last.astimezone(UTC).date().isoformat(),
        limit,
    )
    return [str(row["key"]) for row in rows]


def usd(micros: int) -> str:
    """Micro-dollars as an exact decimal string: ``1234567`` → ``1.234567``."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def to_json(report: Report) -> dict[str, Any]:
    return {
        "from": report.since.isoformat().replace("+00:00", "Z"),
        "to": report.until.isoformat().replace("+00:00", "Z"),
        "group_by": list(report.group_by),
        "data_class": report.data_class,
        "source": report.source,
        "rows": report.rows,
        "totals": report.totals,
    }


_HEADINGS = {"input_tokens": "input tok", "output_tokens": "output tok", "cost_micros": "cost usd"}


def _cells(entry: dict[str, Any], measures: tuple[str, ...]) -> list[str]:
    return [usd(entry["cost_micros"]) if m == "cost_micros" else str(entry[m]) for m in measures]


def render_table(data: dict[str, Any], measures: tuple[str, ...] = MEASURES) -> str:
    """A report (``to_json``'s shape, or the tool-call report's with its ``measures``) as an
    aligned text table with a totals line."""
    group_by = data["group_by"]
    head = [g.upper() for g in group_by] + [_HEADINGS.get(m, m).upper() for m in measures]
    grid = [head]
    for row in data["rows"]:
        names = ["-" if row["group"][g] is None else str(row["group"][g]) for g in group_by]
        grid.append(names + _cells(row, measures))
    grid.append(["TOTAL"] + [""] * max(0, len(group_by) - 1) + _cells(data["totals"], measures))
    if not group_by:
        grid[-1] = grid[-1][1:]
    widths = [max(len(line[i]) for line in grid) for i in range(len(head))]
    kind = "tool-call report" if data.get("kind") == "tool_calls" else "audit report"
    title = f"{kind} {data['from']} .. {data['to']}"
    lines = [title + (f", data class {data['data_class']}" if data.get("data_class") else "")]
    for line in grid:
        cells = [
            v.ljust(w) if i < len(group_by) else v.rjust(w)
            for i, (v, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def render_csv(data: dict[str, Any], measures: tuple[str, ...] = MEASURES) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [*data["group_by"], *(m if m != "cost_micros" else "cost_usd" for m in measures)]
    )
    for row in data["rows"]:
        names = ["" if row["group"][g] is None else row["group"][g] for g in data["group_by"]]
        cells = [usd(row[m]) if m == "cost_micros" else row[m] for m in measures]
        writer.writerow([*names, *cells])
    return buffer.getvalue()

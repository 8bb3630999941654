"""Spend and usage over time, per team, model, provider or metadata key: the audit report,
charted.

Both charts and both tables come from ``custos.audit.service.report`` (the function behind
``GET /admin/v1/audit/report`` and ``custos audit report``) with the signed-in principal, so
the totals are the report's own and the role check is the API's (admin, auditor).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from custos.audit import service as audit_service
from custos.audit.compliance.report import METADATA_PREFIX, metadata_key
from custos.console import charts
from custos.console.web import Request, Response, usd

DIMENSIONS = ("team", "model", "provider", "requested_model", "principal", "data_class")
#: Longer ranges chart only the days with calls.
MAX_DAYS = 400
MEASURES = {
    "cost_micros": "Cost (USD)",
    "requests": "Requests",
    "input_tokens": "Input tokens",
    "output_tokens": "Output tokens",
}


def default_range(days: int = 30) -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=days - 1)).isoformat(), today.isoformat()


def _every_day(daily: audit_service.ReportOut, measure: str) -> list[tuple[str, int]]:
    """One point per day of the range, days without calls at 0 (the report lists only days
    with calls); ranges over ``MAX_DAYS`` list only those."""
    found = {str(row.group["day"])[:10]: getattr(row, measure) for row in daily.rows}
    try:
        first = date.fromisoformat(daily.from_[:10])
        # ``to`` is exclusive: the day before it, unless it is not at midnight.
        end = datetime.fromisoformat(daily.to.replace("Z", "+00:00"))
        last = (end - timedelta(microseconds=1)).date()
    except ValueError:
        return sorted(found.items())
    if (last - first).days > MAX_DAYS:
        return sorted(found.items())
    days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    return [(day, found.get(day, 0)) for day in days]


async def _reports(
    service: Any, p: Any, since: str, until: str, by: str
) -> tuple[audit_service.ReportOut, audit_service.ReportOut]:
    """The report per day and the report per ``by``: two small reports (a day's rows and a
    value's rows each), not one grouped by both, which has a row per day and value (tens of
    thousands for a quarter per principal)."""

    async def report(group_by: str) -> audit_service.ReportOut:
        query = {"from": since, "to": until, "group_by": group_by}
        return await audit_service.report(
            service, p, audit_service.ReportQuery.model_validate(query)
        )

    return await report("day"), await report(by)


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    start, end = default_range()
    since, until = r.query.get("from") or start, r.query.get("to") or end
    keys = await audit_service.metadata_keys(service, r.principal, since, until)
    by = r.query.get("by") or "team"
    # Any metadata key may be asked for (one no call carries has a single "(none)" bar).
    if by not in DIMENSIONS and metadata_key(by) is None:
        by = "team"
    measure = r.query.get("measure") if r.query.get("measure") in MEASURES else "cost_micros"
    daily, grouped = await _reports(service, r.principal, since, until, by)
    fmt = usd if measure == "cost_micros" else (lambda v: f"{v:,}")
    day_points = _every_day(daily, measure)
    group_points = [
        (str(row.group[by]) if row.group[by] is not None else "(none)", getattr(row, measure))
        for row in sorted(grouped.rows, key=lambda row: -getattr(row, measure))
    ]
    return c.render(
        r,
        "spend.html",
        since=since,
        until=until,
        by=by,
        measure=measure,
        measures=MEASURES,
        dimensions=[*DIMENSIONS, *(f"{METADATA_PREFIX}{k}" for k in keys)]
        + ([by] if by not in DIMENSIONS and metadata_key(by) not in keys else []),
        daily=daily,
        grouped=grouped,
        day_chart=charts.bars(day_points, label=f"{MEASURES[measure]} per day", fmt=fmt),
        group_chart=charts.bars(group_points, label=f"{MEASURES[measure]} per {by}", fmt=fmt),
        day_points=day_points,
        group_points=group_points,
        fmt=fmt,
        total=getattr(daily.totals, measure),
    )

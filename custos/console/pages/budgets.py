"""Budgets: limit, spent, reserved and remaining per split, with how fast each is burning; and
the rate-limit and budget refusals of the last days.

The budgets are ``AdminService.list_budgets`` (``GET /admin/v1/budgets``: admins and auditors
every budget, team managers their teams'); the refusals are the audit report grouped by stage
and error (admins and auditors, as the report).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from custos.admin import rights
from custos.audit import service as audit_service
from custos.console import charts
from custos.console.web import Request, Response
from custos.state.counters import CountersUnavailable

#: Days of refusals shown.
REFUSAL_DAYS = 7


def _elapsed(start: datetime | None, end: datetime | None, now: datetime) -> float | None:
    """The share of the budget's period gone by (``None`` for a period without an end)."""
    if start is None or end is None or end <= start:
        return None
    return min(max((now - start) / (end - start), 0.0), 1.0)


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    now = datetime.now(UTC)
    try:
        found = await service.list_budgets(r.principal)
        budgets, unavailable = found.data, False
    except CountersUnavailable:
        budgets, unavailable = [], True
    rows = []
    for b in budgets:
        elapsed = _elapsed(b.period_start, b.period_end, now)
        for s in b.splits:
            used = s.spent_micros + s.reserved_micros
            share = used / s.limit_micros if s.limit_micros else 0.0
            projected = None
            if elapsed:
                projected = int(s.spent_micros / elapsed)
            rows.append({
                "budget": b, "split": s, "share": share, "elapsed": elapsed,
                "projected": projected,
                "meter": charts.meter(s.spent_micros, s.reserved_micros, s.limit_micros,
                                      elapsed),
            })  # fmt: skip
    refusals = None
    if rights.reads_all(r.principal):
        today = now.date()
        query = audit_service.ReportQuery.model_validate({
            "from": (today - timedelta(days=REFUSAL_DAYS - 1)).isoformat(),
            "to": today.isoformat(), "group_by": "stage,error",
        })  # fmt: skip
        report = await audit_service.report(service, r.principal, query)
        refusals = [row for row in report.rows if row.group["stage"] in ("rate_limit", "budget")]
    return c.render(
        r, "budgets.html", rows=rows, budgets=budgets, unavailable=unavailable,
        refusals=refusals, days=REFUSAL_DAYS,
    )  # fmt: skip

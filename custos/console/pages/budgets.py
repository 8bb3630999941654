"""Budgets: limit, spent, reserved and remaining per split, with how fast each is burning; and
the rate-limit and budget refusals of the last days. One budget's page: its burn-down (the
current period's settled spend day by day, per split) and its last periods.

The budgets are ``AdminService.list_budgets`` (``GET /admin/v1/budgets``: admins and auditors
every budget, team managers their teams'); the refusals are the audit report grouped by stage
and error (admins and auditors, as the report). A budget's page is
``AdminService.budget_history``: the spend ledger, for the splits ``list_budgets`` shows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
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


async def one(c: Any, r: Request) -> Response:
    service, _ = c.service()
    try:
        history = await service.budget_history(r.principal, r.params["budget"])
    except CountersUnavailable:
        return c.render(r, "budget.html", unavailable=True, b=None, history=None, splits=[])
    b = history.budget
    today = datetime.now(UTC).date()
    splits = []
    for split in history.days:
        points = _every_day(b.period_start, b.period_end, today, split.days)
        label = ", ".join(f"{k}={v}" for k, v in split.split.items()) or "the whole budget"
        chart = charts.burn(points, b.limit_micros, label=f"Spent so far, {label}")
        splits.append({"split": split, "label": label, "chart": chart})
    return c.render(r, "budget.html", history=history, b=b, splits=splits, unavailable=False)


def _every_day(
    start: datetime | None, end: datetime | None, today: date, days: list[Any]
) -> list[tuple[str, int | None]]:
    """(day, spent so far) for every day of the period up to today, ``None`` for the days to
    come; a period without bounds ("total"): the days with spend."""
    written = {d.day: d.cumulative_micros for d in days}
    if start is None or end is None:
        return [(d.day, d.cumulative_micros) for d in days]
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    out: list[tuple[str, int | None]] = []
    so_far = 0
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        so_far = written.get(day.isoformat(), so_far)
        out.append((day.isoformat(), so_far if day <= today else None))
    return out

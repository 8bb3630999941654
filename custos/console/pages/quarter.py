"""The quarter question: which teams sent which data classes to which providers between two
dates, from ``custos.audit.service.report`` grouped by team, data class and provider (the
admin API's report, admin and auditor roles), with the records behind each cell to download.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from custos.audit import service as audit_service
from custos.audit import traces
from custos.console.web import Request, Response


def _quarter() -> tuple[str, str]:
    """The current calendar quarter, as days."""
    today = datetime.now(UTC).date()
    first_month = 3 * ((today.month - 1) // 3) + 1
    start = today.replace(month=first_month, day=1)
    end_month = first_month + 2
    next_start = (
        start.replace(year=start.year + 1, month=1)
        if end_month == 12
        else start.replace(month=end_month + 1)
    )
    last = next_start.toordinal() - 1
    return start.isoformat(), datetime.fromordinal(last).date().isoformat()


def _name(value: Any) -> str:
    return traces.NONE if value is None else str(value)


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    start, end = _quarter()
    since, until = r.query.get("from") or start, r.query.get("to") or end
    report = await audit_service.report(
        service, r.principal,
        audit_service.ReportQuery.model_validate(
            {"from": since, "to": until, "group_by": "team,data_class,provider"}
        ),
    )  # fmt: skip
    providers = sorted({_name(row.group["provider"]) for row in report.rows})
    cells: dict[tuple[str, str], dict[str, int]] = {}
    for row in report.rows:
        key = (_name(row.group["team"]), _name(row.group["data_class"]))
        cells.setdefault(key, {})[_name(row.group["provider"])] = row.requests
    return c.render(
        r,
        "quarter.html",
        since=since,
        until=until,
        providers=providers,
        cells=sorted(cells.items()),
        totals=report.totals,
    )


async def records(c: Any, r: Request) -> Response:
    service, _ = c.service()
    q = r.query
    found = await traces.cell_records(
        service, r.principal,
        since=q.get("from", ""), until=q.get("to", ""), team=q.get("team", traces.NONE),
        data_class=q.get("data_class", traces.NONE), provider=q.get("provider", traces.NONE),
    )  # fmt: skip
    body = b"".join(record + b"\n" for record in found)
    return Response(
        200, body, b"application/x-ndjson",
        [(b"content-disposition", b'attachment; filename="custos-records.jsonl"')],
    )  # fmt: skip

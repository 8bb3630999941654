"""``GET /admin/v1/budgets``: every budget's limit, spent, reserved and remaining, per split.

Who sees what (the admin API's rules, ``custos.admin.rights``):

- ``admin`` and ``auditor``: every budget and every split;
- a team manager: the budgets whose ``when.subjects`` name a team they manage (all splits), and
  of the others the splits whose ``team`` is a team they manage;
- anyone else: 403.

Figures are integer micro-dollars of the budget's current UTC period, read from the live
counters (memory or Redis; reservations past their TTL released first). ``remaining`` is
``limit - spent - reserved`` and goes negative when a budget is over its limit (an audit-mode
budget, or the bounded overshoot documented in docs/architecture.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from custos.admin import rights
from custos.admin.errors import Forbidden
from custos.identity.principal import Principal
from custos.limits.service import BudgetReport, SplitReport
from custos.policy.limits import parse_split


class BudgetSource(Protocol):
    async def report(self) -> list[BudgetReport]: ...


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: str | None = Field(None, description="Only this budget (its id).")


class BudgetSplitOut(_Out):
    split: dict[str, str] = Field(
        description='The applies_per values of this counter, e.g. {"team": "support-ai"}; '
        "{} for a budget without applies_per."
    )
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int


class BudgetOut(_Out):
    id: str
    mode: Literal["enforce", "audit"]
    period: Literal["day", "week", "month", "quarter", "total"]
    period_key: str
    period_start: datetime | None
    period_end: datetime | None
    applies_per: list[str]
    limit_usd: str
    #: The limit of each split (``applies_per``), or of the whole budget.
    limit_micros: int
    spent_micros: int = Field(description="Summed over the splits shown.")
    reserved_micros: int = Field(description="Summed over the splits shown.")
    remaining_micros: int | None = Field(
        description="For a budget without applies_per; per split otherwise (null here)."
    )
    splits: list[BudgetSplitOut]


class BudgetList(_Out):
    data: list[BudgetOut]


def _split_out(limit: int, split: SplitReport) -> BudgetSplitOut:
    return BudgetSplitOut(
        split=parse_split(split.split),
        limit_micros=limit,
        spent_micros=split.spent,
        reserved_micros=split.reserved,
        remaining_micros=limit - split.spent - split.reserved,
    )


def _seen(p: Principal, report: BudgetReport) -> bool | frozenset[str]:
    """What of the budget ``p`` may see: every split (``True``), the splits of these teams
    (a set), or nothing (``False``)."""
    if rights.reads_all(p):
        return True
    managed = rights.managed_teams(p)
    subjects = report.budget.source.when.subjects
    named = (
        {s.removeprefix("team:") for s in (subjects.in_ or ()) if s.startswith("team:")}
        if (subjects is not None)
        else set()
    )
    if not named.isdisjoint(managed):
        return True
    if "team" not in report.budget.splitter.dimensions:
        return False
    return managed


def _sees(seen: bool | frozenset[str], split: str) -> bool:
    return seen is True or (isinstance(seen, frozenset) and parse_split(split).get("team") in seen)


def _visible_splits(p: Principal, report: BudgetReport) -> list[SplitReport] | None:
    """The splits ``p`` may see (``None``: not this budget at all)."""
    seen = _seen(p, report)
    shown = [s for s in report.splits if _sees(seen, s.split)]
    if seen is True:
        return shown
    return shown or None


async def list_budgets(source: BudgetSource, p: Principal, budget: str | None) -> BudgetList:
    if not (rights.reads_all(p) or rights.managed_teams(p)):
        raise Forbidden(
            "reading budgets needs the admin or auditor role, or the team_manager role and a "
            "manager membership of the team"
        )
    out = []
    for report in await source.report():
        if budget is not None and report.budget.id != budget:
            continue
        splits = _visible_splits(p, report)
        if splits is None:
            continue
        b = report.budget
        spent = sum(s.spent for s in splits)
        reserved = sum(s.reserved for s in splits)
        out.append(
            BudgetOut(
                id=b.id,
                mode=b.source.mode,
                period=b.period,
                period_key=report.period.key,
                period_start=report.period.start,
                period_end=report.period.end,
                applies_per=list(b.splitter.dimensions),
                limit_usd=str(b.source.limit_usd),
                limit_micros=b.limit_micros,
                spent_micros=spent,
                reserved_micros=reserved,
                remaining_micros=(
                    None if b.splitter.dimensions else b.limit_micros - spent - reserved
                ),
                splits=[_split_out(b.limit_micros, s) for s in splits],
            )
        )
    return BudgetList(data=out)


class BudgetDayOut(_Out):
    day: str
    spent_micros: int = Field(description="Written to the ledger that UTC day.")
    cumulative_micros: int = Field(description="Written in the period up to that day.")


class BudgetSplitDaysOut(_Out):
    split: dict[str, str]
    days: list[BudgetDayOut]


class BudgetPeriodOut(_Out):
    period_key: str
    split: dict[str, str]
    spent_micros: int


class BudgetHistoryOut(_Out):
    budget: BudgetOut
    #: The current period's spend by day, per split (from the ledger: settled spend only).
    days: list[BudgetSplitDaysOut]
    #: The settled spend of the last periods, newest first, per split.
    periods: list[BudgetPeriodOut]


class SpendHistory(Protocol):
    async def history(self, budget_id: str, *, periods: int) -> list[tuple[str, str, int]]: ...

    async def days(self, budget_id: str, period: str) -> list[tuple[str, str, int]]: ...


async def budget_history(
    source: BudgetSource, ledger: SpendHistory, p: Principal, budget: str, *, periods: int = 12
) -> BudgetHistoryOut | None:
    """One budget's burn-down (its current period's settled spend by day) and its last
    ``periods`` periods, per split, as ``list_budgets`` shows it to ``p`` (``None``: no such
    budget, or none ``p`` may see)."""
    listed = await list_budgets(source, p, budget)
    report = next((r for r in await source.report() if r.budget.id == budget), None)
    if not listed.data or report is None:
        return None
    seen = _seen(p, report)
    by_split: dict[str, list[BudgetDayOut]] = {}
    for split, day, spent in await ledger.days(budget, report.period.key):
        if _sees(seen, split):
            days = by_split.setdefault(split, [])
            total = (days[-1].cumulative_micros if days else 0) + spent
            days.append(BudgetDayOut(day=day, spent_micros=spent, cumulative_micros=total))
    history = [
        BudgetPeriodOut(period_key=period, split=parse_split(split), spent_micros=spent)
        for period, split, spent in await ledger.history(budget, periods=periods)
        if _sees(seen, split)
    ]
    return BudgetHistoryOut(
        budget=listed.data[0],
        days=[
            BudgetSplitDaysOut(split=parse_split(s), days=d) for s, d in sorted(by_split.items())
        ],
        periods=history,
    )

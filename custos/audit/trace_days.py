"""Which UTC days can hold the calls a trace search asks for, read from the daily rollups.

Why: the projection ``audit_llm_calls`` has indexes on time, team, principal and request id
only; migration 0006 dropped those on provider, model and status because each one cost every
insert, on the gateway's own core with SQLite. A search on one of those columns (or on the
outcome, or a data class) walks the time index newest first until it has a page: for a value
that no recent call has, that walk is the whole table. The daily rollups
(``custos.audit.storage.rollup``) already say, per day, how many calls have each value, and they
change in the transaction that adds or purges the calls. Reading them first tells the search
which days to walk and how many rows to expect there, at no cost to the insert.

Contract: ``matching_days`` returns, newest first, every day on which a call meeting the filter
and the caller's scope may lie, with an upper bound of how many there are: the rollup's count
for the conditions it holds (a rollup that holds only some of them counts a superset, never
fewer). Days it leaves out hold no such call as of the rollups' read. ``None``: the rollups
would not help (no filter on an unindexed column, or a request id, which has an index).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from custos.admin import rights
from custos.audit.storage import rollup
from custos.audit.storage.store import AuditStore
from custos.identity.principal import Principal

#: Filters on columns the projection has no index for (a data class has one, but the search
#: reaches it through each call's row, walking the time index as for the others).
UNINDEXED: Final = ("provider", "model", "status", "outcome", "data_class")
#: Days of rollups read first (``spans``).
RECENT_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class Asked:
    """A search's conditions, as the rollups can read them."""

    team: str | None = None
    provider: str | None = None
    model: str | None = None
    status: int | None = None
    outcome: str | None = None
    data_class: str | None = None
    request_id: str | None = None
    principal_ids: Sequence[str] = ()
    #: The first and last UTC day the search's time bounds (range and cursor) allow.
    first_day: date | None = None
    last_day: date | None = None


@dataclass(frozen=True, slots=True)
class Span:
    """Consecutive days with matches: ``[start, end)`` in UTC, and at most ``count`` calls."""

    start: datetime
    end: datetime
    count: int


def narrows(a: Asked) -> bool:
    """Whether reading the rollups first can spare the search a long walk."""
    return a.request_id is None and any(getattr(a, name) is not None for name in UNINDEXED)


async def matching_days(store: AuditStore, p: Principal, a: Asked) -> list[tuple[date, int]] | None:
    """The days that may hold matches, newest first, each with its bound (module docstring)."""
    if not narrows(a):
        return None
    return await _matching(store, p, a, a.first_day, a.last_day)


async def spans(store: AuditStore, p: Principal, a: Asked) -> AsyncIterator[Span]:
    """The runs of consecutive days that may hold matches, newest first. The rollups are read
    for the last ``RECENT_DAYS`` first, and for the days before only if the search goes on: a
    value most calls have fills its page from the first run, and the rollup with every
    dimension (statuses) has thousands of rows a day."""
    top = a.last_day or datetime.now(UTC).date() + timedelta(days=1)
    recent = top - timedelta(days=RECENT_DAYS - 1)
    windows: list[tuple[date | None, date | None]] = [
        (recent if a.first_day is None else max(a.first_day, recent), a.last_day)
    ]
    if a.first_day is None or a.first_day < recent:
        windows.append((a.first_day, recent - timedelta(days=1)))
    for first, last in windows:
        for span in runs(await _matching(store, p, a, first, last)):
            yield span


async def _matching(
    store: AuditStore, p: Principal, a: Asked, first: date | None, last: date | None
) -> list[tuple[date, int]]:
    found: dict[date, int] | None = None
    for table, conds, args in _plans(p, a):
        days = await _days(store, table, conds, args, first, last)
        if found is not None:
            days = {d: min(n, found[d]) for d, n in days.items() if d in found}
        found = days
    assert found is not None
    return sorted(found.items(), reverse=True)


def runs(days: list[tuple[date, int]]) -> list[Span]:
    """Newest first, the runs of consecutive days among ``days`` (newest first)."""
    out: list[Span] = []
    for day, count in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if out and out[-1].start == start + timedelta(days=1):
            out[-1] = Span(start, out[-1].end, out[-1].count + count)
        else:
            out.append(Span(start, start + timedelta(days=1), count))
    return out


def _plans(p: Principal, a: Asked) -> list[tuple[str, list[str], list[Any]]]:
    """(rollup, conditions over its rows ``r``, arguments) for each rollup to read: the smallest
    per-call rollup holding every condition but the data class; with a data class, the classes'
    rollup for it (and the conditions that rollup holds), and a per-call rollup only for the
    conditions the classes' rollup lacks. Their days are intersected."""
    calls: list[tuple[str, Any]] = [("team", a.team), ("provider", a.provider),
                                    ("status", a.status), ("outcome", a.outcome)]  # fmt: skip
    calls += [("principal_id", pid) for pid in a.principal_ids]
    conds: list[str] = []
    args: list[Any] = []
    dims: set[str] = set()
    held_by_classes: set[str] = set()

    def equal(column: str, value: Any) -> None:
        args.append(value)
        conds.append(f"r.{column} = ${len(args)}")
        dims.add(column)

    for column, value in calls:
        if value is not None:
            equal(column, value)
    if a.model is not None:
        args.append(a.model)
        conds.append(f"(r.model = ${len(args)} OR r.requested_model = ${len(args)})")
        dims.update(("model", "requested_model"))
    if not rights.reads_all(p):
        args.append(p.id)
        scope = [f"r.principal_id = ${len(args)}"]
        for team in sorted(rights.managed_teams(p)):
            args.append(team)
            scope.append(f"r.team = ${len(args)}")
        conds.append("(" + " OR ".join(scope) + ")")
        dims.update(("principal_id", "team"))
    plans = []
    if a.data_class is not None:
        class_conds: list[str] = []
        class_args: list[Any] = [a.data_class, rollup.ANY_SOURCE]
        for column, value in (("team", a.team), ("provider", a.provider),
                              ("outcome", a.outcome)):  # fmt: skip
            if value is not None:
                class_args.append(value)
                class_conds.append(f"r.{column} = ${len(class_args)}")
                held_by_classes.add(column)
        plans.append((rollup.CLASSES, ["r.data_class = $1", "r.source = $2", *class_conds],
                      class_args))  # fmt: skip
    if dims - held_by_classes:
        table = next(t for t, d in rollup.CALL_ROLLUPS.items() if dims <= set(d))
        plans.append((table, conds, args))
    return plans


async def _days(
    store: AuditStore,
    table: str,
    conds: list[str],
    args: list[Any],
    first: date | None,
    last: date | None,
) -> dict[date, int]:
    args = list(args)
    where = list(conds)
    for op, day in ((">=", first), ("<=", last)):
        if day is not None:
            args.append(day.isoformat())
            where.append(f"r.day {op} ${len(args)}")
    rows = await store.fetch(
        f"SELECT r.day AS day, sum(r.requests) AS n FROM {table} r"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        " GROUP BY r.day HAVING sum(r.requests) > 0",
        *args,
    )
    return {date.fromisoformat(str(row["day"])): int(row["n"]) for row in rows}

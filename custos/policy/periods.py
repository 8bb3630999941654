"""Budget periods on UTC boundaries: day, ISO week (from Monday), month, quarter, total.

A period is named by its kind and UTC start date, ``month:2025-06-01``; ``total`` has no start
and no end. The name is part of every budget counter's key, in Redis and in the ledger, so a new
period starts from zero without anything being reset. A call is charged to the period in which
it was admitted, even when it ends in the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

PeriodKind = Literal["day", "week", "month", "quarter", "total"]
KINDS: tuple[PeriodKind, ...] = ("day", "week", "month", "quarter", "total")


@dataclass(frozen=True, slots=True)
class Period:
    kind: PeriodKind
    #: ``kind:YYYY-MM-DD`` (the UTC start), or ``total``.
    key: str
    start: datetime | None
    end: datetime | None

    def seconds_left(self, now_s: float) -> float | None:
        return None if self.end is None else max(self.end.timestamp() - now_s, 0.0)


def _start(kind: PeriodKind, day: date) -> date:
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)


def _next(kind: PeriodKind, start: date) -> date:
    if kind == "day":
        return start + timedelta(days=1)
    if kind == "week":
        return start + timedelta(days=7)
    months = 1 if kind == "month" else 3
    month = start.month - 1 + months
    return date(start.year + month // 12, month % 12 + 1, 1)


def period_at(kind: PeriodKind, now: datetime) -> Period:
    """The period of ``kind`` that contains ``now`` (an aware datetime)."""
    if kind == "total":
        return Period("total", "total", None, None)
    start = _start(kind, now.astimezone(UTC).date())
    end = _next(kind, start)
    return Period(
        kind,
        f"{kind}:{start.isoformat()}",
        datetime(start.year, start.month, start.day, tzinfo=UTC),
        datetime(end.year, end.month, end.day, tzinfo=UTC),
    )


class PeriodClock:
    """The current period of each kind, recomputed only when one ends (the hot path asks per
    request; this answers with two float comparisons)."""

    def __init__(self) -> None:
        #: kind -> (period, start, end) in unix seconds (±inf for ``total``).
        self._current: dict[PeriodKind, tuple[Period, float, float]] = {}

    def current(self, kind: PeriodKind, now_s: float) -> Period:
        """The period of ``kind`` containing ``now_s`` (unix seconds)."""
        found = self._current.get(kind)
        if found is None or not found[1] <= now_s < found[2]:
            period = period_at(kind, datetime.fromtimestamp(now_s, UTC))
            start = period.start.timestamp() if period.start is not None else float("-inf")
            end = period.end.timestamp() if period.end is not None else float("inf")
            found = self._current[kind] = (period, start, end)
        return found[0]

    def current_keys(self, now_s: float) -> list[str]:
        """The key of every kind's current period: what a seed reads from the ledger."""
        return [self.current(kind, now_s).key for kind in KINDS]


def period_from_key(key: str) -> Period:
    """The period a key names (``month:2025-06-01``, ``total``); raises ``ValueError``."""
    if key == "total":
        return period_at("total", datetime.now(UTC))
    kind, _, start = key.partition(":")
    if kind not in KINDS:
        raise ValueError(f"not a period key: {key!r}")
    day = date.fromisoformat(start)
    return period_at(kind, datetime(day.year, day.month, day.day, tzinfo=UTC))  # type: ignore[arg-type]

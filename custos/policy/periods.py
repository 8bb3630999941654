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

    def seconds_left(self, now: datetime) -> float | None:
        return None if self.end is None else max((self.end - now).total_seconds(), 0.0)


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
    request; this answers with one comparison)."""

    def __init__(self) -> None:
        self._current: dict[PeriodKind, Period] = {}

    def current(self, kind: PeriodKind, now: datetime) -> Period:
        period = self._current.get(kind)
        if (
            period is None
            or (period.end is not None and now >= period.end)
            or (period.start is not None and now < period.start)
        ):
            period = self._current[kind] = period_at(kind, now)
        return period

    def current_keys(self, now: datetime) -> list[str]:
        """The key of every kind's current period: what a seed reads from the ledger."""
        return [self.current(kind, now).key for kind in KINDS]


def period_from_key(key: str) -> Period:
    """The period a key names (``month:2025-06-01``, ``total``); raises ``ValueError``."""
    if key == "total":
        return period_at("total", datetime.now(UTC))
    kind, _, start = key.partition(":")
    if kind not in KINDS:
        raise ValueError(f"not a period key: {key!r}")
    day = date.fromisoformat(start)
    return period_at(kind, datetime(day.year, day.month, day.day, tzinfo=UTC))  # type: ignore[arg-type]

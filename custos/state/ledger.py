"""The durable spend ledger: settled spend per budget counter, in the store, written in batches.

The request path never waits on it: ``record`` adds to an in-memory batch and the gateway calls
``flush`` about once a second, which writes the whole batch in one transaction (an upsert that
adds to ``budget_spend.spent_micros``). A failed flush keeps its batch for the next one. What a
crash can lose is the spend of at most one flush interval (with in-process counters).

Seeding shared counters
-----------------------
Redis loses everything when it restarts without persistence. The counters then find their seed
marker gone and are seeded again from this ledger, so a budget never restarts from zero. Spend
settled in Redis but not yet flushed here is the gap to close, and the ``counter_epoch`` row
closes it:

- ``seed`` increments ``epoch`` and reads the totals in one transaction; the counters store
  that epoch in Redis with the totals.
- Every settlement reports the epoch it was applied under (``None`` if Redis was unreachable).
  ``flush`` writes its batch and reads ``epoch`` in one transaction. Both update the one
  ``counter_epoch`` row, so seeds and flushes are totally ordered (row lock on PostgreSQL, the
  single writer on SQLite).
- Spend applied under the epoch a flush reads is in Redis and not in that seed (the seed came
  before the flush). Any other spend (applied under an older epoch that a newer seed replaced,
  or not applied at all) is in no seed that came before the flush and not in Redis: ``flush``
  returns it as ``stale`` and the counters apply it under exactly that epoch
  (``RedisCounters.reapply``), or drop it if a still newer seed (which read this flush) exists.

So every settled micro-dollar is counted once in Redis, whatever the order of restarts, seeds
and flushes, as long as the store is reachable; while it is not, batches wait in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from custos.state.models import utcnow
from custos.state.store import Store, Tx

log = logging.getLogger("custos.ledger")

#: (budget id, period key, split): one budget counter.
LedgerKey = tuple[str, str, str]

_UPSERT = (
    "INSERT INTO budget_spend (budget_id, period, split, spent_micros, updated_at)"
    " VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (budget_id, period, split) DO UPDATE"
    " SET spent_micros = budget_spend.spent_micros + excluded.spent_micros,"
    " updated_at = excluded.updated_at"
)

#: The same spend, by the UTC day it was written (migration 0013: the console's burn-down).
_UPSERT_DAY = (
    "INSERT INTO budget_spend_daily (budget_id, period, split, day, spent_micros)"
    " VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (budget_id, period, split, day) DO UPDATE"
    " SET spent_micros = budget_spend_daily.spent_micros + excluded.spent_micros"
)


@dataclass(frozen=True, slots=True)
class Flushed:
    #: The seed epoch current when the batch was committed.
    epoch: int
    #: Spend written now that the counters under ``epoch`` do not hold (see the module doc).
    stale: tuple[tuple[LedgerKey, int], ...]
    written: int


@dataclass(frozen=True, slots=True)
class Seed:
    epoch: int
    spent: tuple[tuple[LedgerKey, int], ...]


class SpendLedger:
    def __init__(self, store: Store) -> None:
        self.store = store
        #: (counter, epoch it was applied under) -> micro-dollars not yet written.
        self._pending: dict[tuple[LedgerKey, int | None], int] = {}

    def record(self, key: LedgerKey, amount: int, epoch: int | None) -> None:
        """Add settled spend to the next batch (no I/O)."""
        if amount > 0:
            slot = (key, epoch)
            self._pending[slot] = self._pending.get(slot, 0) + amount

    @property
    def pending_micros(self) -> int:
        return sum(self._pending.values())

    async def flush(self) -> Flushed | None:
        """Write the batch in one transaction; ``None`` when there was nothing to write.

        Raises the store's error after putting the batch back for the next attempt.
        """
        if not self._pending:
            return None
        batch, self._pending = self._pending, {}
        totals: dict[LedgerKey, int] = {}
        for (key, _), amount in batch.items():
            totals[key] = totals.get(key, 0) + amount
        now = utcnow()
        try:
            async with self.store.transaction() as tx:
                await tx.execute("UPDATE counter_epoch SET flushes = flushes + 1 WHERE id = 1")
                row = await tx.fetchrow("SELECT epoch FROM counter_epoch WHERE id = 1")
                rows = [(b, p, s, amount, now) for (b, p, s), amount in sorted(totals.items())]
                await tx.executemany(_UPSERT, rows)
                day = now.date().isoformat()
                await tx.executemany(_UPSERT_DAY, [(b, p, s, day, a) for b, p, s, a, _ in rows])
        except BaseException:
            for slot, amount in batch.items():
                self._pending[slot] = self._pending.get(slot, 0) + amount
            raise
        assert row is not None
        epoch = int(row["epoch"])
        stale = tuple((key, amount) for (key, applied), amount in batch.items() if applied != epoch)
        return Flushed(epoch, stale, sum(totals.values()))

    async def seed(self, periods: Sequence[str]) -> Seed:
        """Start a new seed epoch and read the spend of the given periods, in one transaction."""
        async with self.store.transaction() as tx:
            await tx.execute("UPDATE counter_epoch SET epoch = epoch + 1 WHERE id = 1")
            row = await tx.fetchrow("SELECT epoch FROM counter_epoch WHERE id = 1")
            rows = await _spend_rows(tx, periods)
        assert row is not None
        return Seed(int(row["epoch"]), rows)

    async def history(self, budget_id: str, *, periods: int) -> list[tuple[str, str, int]]:
        """(period, split, spent) of the budget's last ``periods`` periods with spend, newest
        period first."""
        async with self.store.transaction(readonly=True) as tx:
            keys = await tx.fetch(
                "SELECT DISTINCT period FROM budget_spend WHERE budget_id = $1"
                " ORDER BY period DESC LIMIT $2",
                budget_id,
                periods,
            )
            if not keys:
                return []
            rows = await tx.fetch(
                "SELECT period, split, spent_micros FROM budget_spend"
                " WHERE budget_id = $1 AND period >= $2 ORDER BY period DESC, split",
                budget_id,
                keys[-1]["period"],
            )
        return [(r["period"], r["split"], int(r["spent_micros"])) for r in rows]

    async def days(self, budget_id: str, period: str) -> list[tuple[str, str, int]]:
        """(split, day, spent) of one budget period, by the UTC day the spend was written."""
        async with self.store.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT split, day, spent_micros FROM budget_spend_daily"
                " WHERE budget_id = $1 AND period = $2 ORDER BY split, day",
                budget_id,
                period,
            )
        return [(r["split"], r["day"], int(r["spent_micros"])) for r in rows]

    async def totals(self, periods: Sequence[str]) -> tuple[tuple[LedgerKey, int], ...]:
        """The spend of the given periods (what in-process counters start from)."""
        async with self.store.transaction(readonly=True) as tx:
            return await _spend_rows(tx, periods)

    # -- alerts ------------------------------------------------------------------------------

    async def claim_alert(self, key: LedgerKey, percent: int) -> bool:
        """True for exactly one caller per counter and percentage, across replicas and restarts."""
        async with self.store.transaction() as tx:
            inserted = await tx.execute(
                "INSERT INTO budget_alerts (budget_id, period, split, percent, claimed_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                *key,
                percent,
                utcnow(),
            )
        return inserted == 1

    async def alert_outcome(
        self, key: LedgerKey, percent: int, *, delivered: bool, attempts: int, error: str | None
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE budget_alerts SET delivered_at = $5, attempts = $6, last_error = $7"
                " WHERE budget_id = $1 AND period = $2 AND split = $3 AND percent = $4",
                *key,
                percent,
                utcnow() if delivered else None,
                attempts,
                error,
            )


async def _spend_rows(tx: Tx, periods: Sequence[str]) -> tuple[tuple[LedgerKey, int], ...]:
    if not periods:
        return ()
    marks = ", ".join(f"${i}" for i in range(1, len(periods) + 1))
    rows = await tx.fetch(
        "SELECT budget_id, period, split, spent_micros FROM budget_spend"
        f" WHERE period IN ({marks}) ORDER BY budget_id, period, split",
        *periods,
    )
    return tuple(((r["budget_id"], r["period"], r["split"]), int(r["spent_micros"])) for r in rows)

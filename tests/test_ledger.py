"""The spend ledger (custos.state.ledger) on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from custos.state.ledger import SpendLedger
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401 (fixtures)

MONTH = ("team-budget", "month:2026-11-01", "team=support")
TOTAL = ("forever", "total", "")


async def test_flush_adds_batches_to_the_stored_totals(store: Store):  # noqa: F811
    ledger = SpendLedger(store)
    assert await ledger.flush() is None  # nothing to write, no transaction
    ledger.record(MONTH, 120, epoch=None)
    ledger.record(MONTH, 30, epoch=None)
    ledger.record(TOTAL, 5, epoch=None)
    ledger.record(TOTAL, 0, epoch=None)  # free calls write nothing
    flushed = await ledger.flush()
    assert flushed is not None and flushed.written == 155
    assert ledger.pending_micros == 0
    ledger.record(MONTH, 50, epoch=None)
    await ledger.flush()
    totals = dict(await ledger.totals(["month:2026-11-01", "total", "day:2026-11-27"]))
    assert totals == {MONTH: 200, TOTAL: 5}
    assert dict(await ledger.totals(["month:2026-10-01"])) == {}


async def test_a_failed_flush_keeps_its_batch(store: Store):  # noqa: F811
    ledger = SpendLedger(store)
    ledger.record(MONTH, 10, epoch=1)
    async with store.transaction() as tx:  # make the write fail: the table is gone
        await tx.execute("ALTER TABLE budget_spend RENAME TO budget_spend_away")
    with pytest.raises(Exception):  # noqa: B017 (whatever the driver raises)
        await ledger.flush()
    assert ledger.pending_micros == 10
    async with store.transaction() as tx:
        await tx.execute("ALTER TABLE budget_spend_away RENAME TO budget_spend")
    ledger.record(MONTH, 5, epoch=1)
    await ledger.flush()
    assert dict(await ledger.totals(["month:2026-11-01"])) == {MONTH: 15}


async def test_seeds_and_flushes_are_ordered_by_the_epoch(store: Store):  # noqa: F811
    ledger = SpendLedger(store)
    first = await ledger.seed(["total"])
    assert (first.epoch, first.spent) == (1, ())
    ledger.record(TOTAL, 7, epoch=1)  # applied in Redis under the current epoch
    ledger.record(TOTAL, 3, epoch=None)  # Redis was unreachable
    flushed = await ledger.flush()
    assert flushed is not None and flushed.epoch == 1
    assert flushed.stale == ((TOTAL, 3),)  # only what Redis does not hold
    ledger.record(TOTAL, 4, epoch=1)  # settled before a restart, flushed after the new seed
    second = await ledger.seed(["total"])
    assert second.epoch == 2 and second.spent == ((TOTAL, 10),)
    flushed = await ledger.flush()
    assert flushed is not None and flushed.epoch == 2 and flushed.stale == ((TOTAL, 4),)
    assert dict(await ledger.totals(["total"])) == {TOTAL: 14}


async def test_an_alert_is_claimed_once(store: Store):  # noqa: F811
    ledger = SpendLedger(store)
    assert await ledger.claim_alert(MONTH, 80)
    assert not await ledger.claim_alert(MONTH, 80)
    assert await ledger.claim_alert(MONTH, 100)
    assert await ledger.claim_alert(("team-budget", "month:2026-12-01", "team=support"), 80)
    await ledger.alert_outcome(MONTH, 80, delivered=True, attempts=2, error=None)
    async with store.transaction(readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT attempts, delivered_at FROM budget_alerts WHERE percent = 80"
            " AND period = 'month:2026-11-01'"
        )
    assert row is not None and row["attempts"] == 2 and row["delivered_at"] is not None


async def test_each_flush_is_kept_by_day_too_and_the_days_add_up(store: Store):  # noqa: F811
    """The burn-down's days (budget_spend_daily) are the same batches as the totals, under the
    flush's UTC day; history lists the last periods newest first."""
    ledger = SpendLedger(store)
    ledger.record(MONTH, 120, epoch=None)
    ledger.record(TOTAL, 5, epoch=None)
    await ledger.flush()
    ledger.record(MONTH, 30, epoch=None)
    await ledger.flush()
    async with store.transaction() as tx:  # yesterday's flush, as a day earlier would write it
        await tx.execute(
            "UPDATE budget_spend_daily SET day = '2026-11-02' WHERE budget_id = 'team-budget'"
        )
    ledger.record(MONTH, 50, epoch=None)
    flushed = await ledger.flush()
    assert flushed is not None
    days = await ledger.days("team-budget", "month:2026-11-01")
    assert len(days) == 2 and days[0][1:] == ("2026-11-02", 150)
    assert sum(spent for *_, spent in days) == dict(await ledger.totals([MONTH[1]]))[MONTH] == 200
    assert {split for split, _, _ in days} == {"team=support"}
    earlier = ("team-budget", "month:2026-10-01", "team=support")
    ledger.record(earlier, 7, epoch=None)
    await ledger.flush()
    assert await ledger.history("team-budget", periods=2) == [
        ("month:2026-11-01", "team=support", 200), ("month:2026-10-01", "team=support", 7),
    ]  # fmt: skip
    assert await ledger.history("team-budget", periods=1) == [
        ("month:2026-11-01", "team=support", 200)
    ]

"""The sequencer: gap-free order, the stored tree, leadership, takeover and fencing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest

from custos.audit.log.merkle import Frontier, root_of
from custos.audit.log.sequencer import Fenced, Sequencer, append_leaves, load_frontier
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store
from custos.state.store import Store
from tests.audit_log_worker import record
from tests.conftest import ROOT
from tests.store_fixtures import PG_URL, pg_url, store, store_url  # noqa: F401  (fixtures)


async def rows(db: Store, sql: str, *args: object) -> list[dict]:
    async with db.transaction(readonly=True) as tx:
        return await tx.fetch(sql, *args)


async def drain(sequencer: Sequencer) -> None:
    assert await sequencer.lead()
    while await sequencer.tick():
        pass


async def check_log(store: Store, expected: int) -> None:  # noqa: F811
    """``expected`` records, seq 0..expected-1, every event sequenced once, the head and every
    stored complete node matching the leaves."""
    leaves = await rows(store, "SELECT seq, event_id, leaf_hash FROM audit_leaves ORDER BY seq")
    assert [r["seq"] for r in leaves] == list(range(expected))
    events = await rows(store, "SELECT event_id, leaf_hash FROM audit_events")
    assert len(events) == expected
    by_id = {r["event_id"]: bytes(r["leaf_hash"]) for r in events}
    assert {r["event_id"] for r in leaves} == set(by_id)
    assert all(bytes(r["leaf_hash"]) == by_id[r["event_id"]] for r in leaves)
    hashes = [bytes(r["leaf_hash"]) for r in leaves]
    head = (await rows(store, "SELECT size, root FROM audit_tree_head"))[0]
    assert head["size"] == expected
    assert bytes(head["root"]) == root_of(hashes)
    nodes = await rows(store, "SELECT level, idx, hash FROM audit_merkle_nodes")
    expected_nodes = {(lvl, idx): h for lvl, idx, h in Frontier().extend(hashes)}
    assert {(r["level"], r["idx"]): bytes(r["hash"]) for r in nodes} == expected_nodes
    assert await rows(store, "SELECT * FROM audit_pending") == []


async def test_sequences_in_batches_without_gaps(store: Store) -> None:  # noqa: F811
    audit = AuditStore(store)
    records = [record("t", n) for n in range(700)]
    await audit.insert(records[:300])
    sequencer = Sequencer(store, batch=128)
    await drain(sequencer)
    await audit.insert(records[300:])
    await audit.insert(records[:50])  # a replayed batch: already stored, never queued again
    await drain(sequencer)
    await check_log(store, 700)
    # A second sequencer in the same database picks up where the first stopped.
    await sequencer.step_down()
    more = [record("u", n) for n in range(33)]
    await audit.insert(more)
    other = Sequencer(store, batch=10)
    await drain(other)
    await check_log(store, 733)
    order = await rows(store, "SELECT event_id FROM audit_leaves WHERE seq >= 700 ORDER BY seq")
    assert [r["event_id"] for r in order] == [r.event_id for r in more]


async def test_a_superseded_leader_is_fenced(store: Store) -> None:  # noqa: F811
    if store.dialect == "sqlite":
        pytest.skip("SQLite sequences in the inserting transaction: see the test below")
    audit = AuditStore(store)
    await audit.insert([record("t", n) for n in range(10)])
    old, new = Sequencer(store, name="old"), Sequencer(store, name="new")
    if store.dialect == "postgresql":
        # The lock makes the second one a standby until the first one's session dies.
        assert await old.lead()
        assert not await new.lead()
        await old.step_down()
    assert await old.lead()
    old_epoch = old.epoch
    # ``new`` takes over (on PostgreSQL only after the old lock session died, simulated here
    # by stepping ``old``'s lock session down but keeping its stale in-memory state).
    lock = old._leader_lock
    if lock is not None:
        old._leader_lock = None
        await lock.release()
    assert await new.lead()
    old.epoch, old.frontier = old_epoch, Frontier()  # the stalled leader still thinks it leads
    await drain(new)
    await audit.insert([record("u", n) for n in range(5)])
    with pytest.raises(Fenced):
        await old.tick()
    assert old.fenced == 1
    await drain(new)
    await check_log(store, 15)


async def test_sqlite_inserts_sequence_and_a_stale_tree_is_fenced(store: Store) -> None:  # noqa: F811
    """On SQLite every insert extends the log in its own transaction (no queue), and the
    sequencer's tick reports the grown tree; an append from a copy of the tree that is no
    longer the head is refused and writes nothing."""
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL queues records for its one sequencer")
    grown: list[int] = []

    async def on_committed(size: int, root: bytes) -> None:
        grown.append(size)

    sequencer = Sequencer(store, on_committed=on_committed)
    assert await sequencer.lead()
    audit = AuditStore(store)
    first = [record("t", n) for n in range(10)]
    await audit.insert(first)
    await check_log(store, 10)
    async with store.transaction() as tx:
        stale = await load_frontier(tx)
    assert await sequencer.tick() == 0
    await audit.insert([record("u", n) for n in range(5)])
    await audit.insert(first[:3])  # replayed: not logged twice
    await sequencer.tick()
    await sequencer.tick()  # no growth: no call
    assert grown == [10, 15]
    with pytest.raises(Fenced):
        async with store.transaction() as tx:
            await append_leaves(tx, [("x", bytes(32))], frontier=stale)
    await check_log(store, 15)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.audit_log_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )


@pytest.mark.timeout(300)
async def test_four_writers_sequencer_killed_midway_and_stalled_leader_fenced(
    pg_url: str,  # noqa: F811
) -> None:
    store = await open_store(pg_url)  # noqa: F811
    try:
        first = _spawn("sequence", pg_url)
        assert first.stdout is not None
        assert (await asyncio.to_thread(first.stdout.readline)).strip() == b"ready"
        writers = [_spawn("write", pg_url, "2500", f"w{i}") for i in range(4)]

        async def head_size() -> int:
            return int((await rows(store, "SELECT size FROM audit_tree_head"))[0]["size"])

        deadline = time.monotonic() + 120
        while await head_size() < 3000:
            assert time.monotonic() < deadline, "the first sequencer made no progress"
            assert first.poll() is None
            await asyncio.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # mid-way: writers are still writing
        first.wait()
        killed_at = await head_size()
        assert killed_at < 10_000
        assert any(w.poll() is None for w in writers), "the writers finished too early"

        # A stalled leader: it computed a batch, then stopped; meanwhile its lock session was
        # cut (as when its host is partitioned) and another replica took over.
        stalled = Sequencer(store, name="stalled", batch=50)
        takeover = Sequencer(store, name="takeover", batch=500, interval_s=0.02)
        deadline = time.monotonic() + 30
        while not await stalled.lead():  # the killed process's lock is released by PG
            assert time.monotonic() < deadline, "the dead sequencer's lock was never released"
            await asyncio.sleep(0.1)
        paused, resume = asyncio.Event(), asyncio.Event()

        async def stall() -> None:
            paused.set()
            await resume.wait()

        stalled.before_write = stall
        stalled_tick = asyncio.create_task(stalled.tick())
        await paused.wait()
        admin = await asyncpg.connect(PG_URL)
        try:
            pid = stalled._leader_lock.conn.get_server_pid()  # type: ignore[union-attr]
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        takeover.start()
        while not takeover.is_leader:
            await asyncio.sleep(0.05)
        while await head_size() <= killed_at:
            await asyncio.sleep(0.05)
        resume.set()
        with pytest.raises(Fenced):
            await stalled_tick
        assert stalled.fenced == 1

        for writer in writers:
            assert await asyncio.to_thread(writer.wait, 120) == 0
        deadline = time.monotonic() + 60
        while await head_size() < 10_000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await takeover.close()
        await stalled.step_down()
        await check_log(store, 10_000)
        writers_seen = await rows(store, "SELECT count(*) AS n FROM audit_events")
        assert writers_seen[0]["n"] == 10_000
    finally:
        for process in [first, *locals().get("writers", [])]:
            if process.poll() is None:
                process.kill()
        await store.close()

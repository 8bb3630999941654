"""The writer in one process: a store that fails on demand, a spool that fills, a torn spool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from custos.audit.records.record import SealedRecord, rfc3339_ms, seal
from custos.audit.storage import writer as writer_module
from custos.audit.storage.spool import Spool, SpoolError
from custos.audit.storage.writer import AuditWriter
from custos.state.backends import open_store
from custos.state.store import Store
from custos.telemetry import metrics
from tests.audit_helpers import FlakyStore


def record(n: int) -> SealedRecord:
    at = 1_782_907_200_000 + n
    fields = {"event_type": "admin.change", "time_start": rfc3339_ms(at), "n": n}
    return seal(fields, at_ms=at)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'custos.db'}")
    yield opened
    await opened.close()


async def stored_ns(store: Store) -> list[int]:
    import orjson

    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT record FROM audit_events ORDER BY ingest_id")
    return [orjson.loads(bytes(r["record"]))["n"] for r in rows]


async def settle(condition: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def make_writer(
    store: FlakyStore, path: Path, *, block: bool = False, max_bytes: int = 1 << 30
) -> AuditWriter:
    return AuditWriter(
        store, Spool(path, max_bytes=max_bytes), flush_interval_s=0.005, block=lambda: block
    )


async def test_an_outage_longer_than_memory_is_replayed_from_disk(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "MAX_PENDING", 50)
    flaky = FlakyStore(store)
    writer = make_writer(flaky, tmp_path / "spool")
    await writer.start()
    for n in range(30):
        writer.submit(record(n))
    await settle(lambda: flaky.inserted == 30)
    flaky.down = True
    for n in range(30, 300):  # more than MAX_PENDING while the store is down
        writer.submit(record(n))
        if n % 20 == 0:
            await asyncio.sleep(0.02)
    await settle(lambda: not writer.store_ok and writer._overflowed)
    assert writer.admit() is None  # spool mode keeps serving
    flaky.down = False
    for n in range(300, 320):
        writer.submit(record(n))
    await settle(
        lambda: (
            writer.store_ok
            and not writer._pending
            and writer._replay_up_to is None
            and not writer._overflowed
        )
    )
    await writer.close()
    assert sorted(await stored_ns(store)) == list(range(320))  # all there, none twice
    assert list((tmp_path / "spool").glob("*.spool")) == []  # and the spool is empty


async def test_block_mode_refuses_while_the_store_is_down(store: Store, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    writer = make_writer(flaky, tmp_path / "spool", block=True)
    await writer.start()
    flaky.down = True
    writer.submit(record(1))
    await settle(lambda: writer.admit() is not None)
    assert "store" in (writer.admit() or "")
    flaky.down = False
    await settle(lambda: writer.admit() is None)
    await writer.close()
    assert await stored_ns(store) == [1]


async def test_a_full_spool_refuses_rather_than_drops(store: Store, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    flaky.down = True
    writer = make_writer(flaky, tmp_path / "spool", max_bytes=1 << 20)
    await writer.start()
    big = [record(n) for n in range(20)]
    per_record = len(big[0].body) + 1
    count = (1 << 20) // per_record + 10  # more than the spool holds
    for n in range(count):
        writer.submit(record(n))
    await settle(lambda: writer.admit() is not None)
    assert writer.admit() == "the audit spool is full"
    assert writer.dropped == 0
    # What the shipped alert rules compare (deploy/prometheus/custos-rules.yml).
    sample = metrics.REGISTRY.get_sample_value
    assert sample("custos_audit_spool_max_bytes") == 1 << 20
    assert 0.9 < sample("custos_audit_spool_bytes") / sample("custos_audit_spool_max_bytes") <= 1
    flaky.down = False  # the store returns: the spool drains, the queue is spooled, all shipped
    await settle(
        lambda: writer.admit() is None and not writer._queue and not writer._pending, timeout=30
    )
    await writer.close()
    assert sorted(await stored_ns(store)) == list(range(count))


async def test_start_replays_a_crashed_spool_and_skips_a_torn_line(
    store: Store, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    sealed = [record(n) for n in range(6)]
    lines = b"".join(r.body + b"\n" for r in sealed[:5])
    torn = sealed[5].body[:40]  # the crash interrupted this write
    (spool_dir / "000000000007.spool").write_bytes(lines + torn)
    flaky = FlakyStore(store)
    await flaky.insert([sealed[0]])  # shipped just before the crash: must not be duplicated
    writer = make_writer(flaky, spool_dir)
    assert await writer.start() == 5
    await writer.close()
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT event_id FROM audit_events ORDER BY ingest_id")
    assert [r["event_id"] for r in rows] == [r.event_id for r in sealed[:5]]
    assert not (spool_dir / "000000000007.spool").exists()


async def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", max_bytes=1 << 20)
    first.open()
    with pytest.raises(SpoolError):
        Spool(tmp_path / "spool", max_bytes=1 << 20).open()
    first.close()


async def test_records_waiting_to_be_built_count_in_the_queue_depth(
    store: Store, tmp_path: Path
) -> None:
    """Records built at the next flush (the trail's settled requests) are in memory, not yet
    in the spool: the queue depth gauge counts them until the flush spools them."""
    from custos.telemetry.metrics import REGISTRY

    flaky = FlakyStore(store)
    held = [record(n) for n in range(3)]

    def prepare() -> None:
        while held:
            writer.submit(held.pop(0))

    writer = AuditWriter(
        flaky,
        Spool(tmp_path / "spool", max_bytes=1 << 30),
        flush_interval_s=0.005,
        block=lambda: False,
        prepare=prepare,
        waiting=lambda: len(held),
    )
    assert REGISTRY.get_sample_value("custos_audit_queue_depth") == 3
    await writer.start()
    try:
        await settle(lambda: flaky.inserted == 3)
        assert REGISTRY.get_sample_value("custos_audit_queue_depth") == 0
    finally:
        await writer.close()
    assert await stored_ns(store) == [0, 1, 2]


async def test_a_strict_record_dropped_is_not_released(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_QUEUE records are dropped (the spool cannot keep up); a strict request whose
    record is dropped gets a waiter that fails, so its response is a 503, never released."""
    monkeypatch.setattr(writer_module, "MAX_QUEUE", 3)
    writer = make_writer(FlakyStore(store), tmp_path / "spool")  # not started: nothing flushes
    for n in range(3):
        writer.submit(record(n))
    dropped = metrics.AUDIT_DROPPED._value.get()
    assert writer.submit(record(3)) is None  # batched: counted, nothing to wait for
    waiter = writer.submit(record(4), "spool")
    assert waiter is not None
    with pytest.raises(writer_module.AuditUnavailable, match="spool cannot be written"):
        await writer.wait(waiter)
    assert metrics.AUDIT_DROPPED._value.get() == dropped + 2


async def test_an_idle_writer_runs_no_timer_and_a_record_still_becomes_durable_in_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing queued neither task wakes (a fixed tick made every quiet second cost a
    hundred flushes); the first record wakes them and is spooled within the interval."""
    writer = AuditWriter(
        FlakyStore(store), Spool(tmp_path / "spool", max_bytes=1 << 30),
        flush_interval_s=0.05, block=lambda: False,
    )  # fmt: skip
    flushes = ships = 0
    flush, ship = writer._flush, writer._ship_batch

    async def counted_flush() -> bool:
        nonlocal flushes
        flushes += 1
        return await flush()

    async def counted_ship() -> None:
        nonlocal ships
        ships += 1
        await ship()

    monkeypatch.setattr(writer, "_flush", counted_flush)
    monkeypatch.setattr(writer, "_ship_batch", counted_ship)
    await writer.start()
    await asyncio.sleep(0.3)  # six intervals with nothing to do
    assert (flushes, ships) == (0, 0)
    assert writer._flush_idle
    started = asyncio.get_running_loop().time()
    writer.submit(record(1))
    await settle(lambda: writer.spool.total_bytes > 0, timeout=2)
    took = asyncio.get_running_loop().time() - started
    assert 0.04 <= took < 0.5  # the batch had its interval to fill, and no more than that
    await settle(lambda: ships == 1)
    assert flushes == 1
    await asyncio.sleep(0.3)  # idle again: no further wake-ups
    assert (flushes, ships) == (1, 1)
    await writer.close()
    assert await stored_ns(store) == [1]


async def test_a_strict_record_is_flushed_without_waiting_for_the_interval(
    store: Store, tmp_path: Path
) -> None:
    writer = AuditWriter(
        FlakyStore(store), Spool(tmp_path / "spool", max_bytes=1 << 30),
        flush_interval_s=5.0, block=lambda: False,
    )  # fmt: skip
    await writer.start()
    writer.submit(record(1))  # batched: waits for the (long) interval
    waiter = writer.submit(record(2), "store")
    assert waiter is not None
    await asyncio.wait_for(AuditWriter.wait(waiter), 2.0)  # well before 5 s
    assert sorted(await stored_ns(store)) == [1, 2]  # the batched one went with it
    await writer.close()


async def test_an_alarm_wakes_on_ring_or_timeout_and_remembers_a_ring_before_the_wait() -> None:
    alarm = writer_module.Alarm()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await alarm.wait(0.05)
    assert loop.time() - started >= 0.04  # nobody rang: the timeout ended it
    alarm.ring()
    started = loop.time()
    await alarm.wait(5.0)  # rung before: returns at once
    assert loop.time() - started < 1.0
    waiting = asyncio.ensure_future(alarm.wait())
    await asyncio.sleep(0.02)
    assert not waiting.done()  # no timeout, no ring: still waiting
    alarm.ring()
    await asyncio.wait_for(waiting, 1.0)


def test_the_spool_writes_only_in_sync_so_a_held_up_write_never_stalls_the_event_loop(
    tmp_path: Path,
) -> None:
    """``append`` (on the event loop) only queues; ``sync`` (on a worker thread) writes and
    syncs; a rotation or a close writes whatever was queued first."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    spool.open()

    def ns(path: Path) -> list[int]:
        return [r.fields["n"] for r in Spool.read_segment(path)[0]]

    first = spool.append(record(1).body + b"\n", 1)
    segment = tmp_path / "spool" / f"{first:012d}.spool"
    assert segment.read_bytes() == b""  # queued, not written
    assert spool.total_bytes == len(record(1).body) + 1  # but counted against the bound
    spool.sync()
    assert ns(segment) == [1]
    spool.append(record(2).body + b"\n", 1)
    sealed = spool.rotate()
    assert sealed == first
    assert ns(segment) == [1, 2]  # written before sealing
    spool.append(record(3).body + b"\n", 1)
    current = tmp_path / "spool" / f"{spool.current_id:012d}.spool"
    spool.close()
    assert ns(current) == [3]

"""A record the store refuses for what it holds must not hold up the trail behind it.

The writer ships batches; before, one record the store would never accept (a broken
constraint) failed its batch forever: nothing behind it reached the store, and with
``on_failure: block`` every request got 503. Now the writer splits a refused batch until the
refused record is alone, stores the others, and keeps that one in the spool's ``refused/``
directory. A store that is down (not refusing) is still waited for, never split.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from custos.audit.records.record import SealedRecord
from custos.audit.storage.spool import REFUSED_DIR, Spool
from custos.audit.storage.writer import AuditUnavailable, AuditWriter
from custos.state.errors import Invalid
from custos.state.store import Store
from custos.telemetry.metrics import REGISTRY
from tests.audit_helpers import FlakyStore
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_writer import record, stored_ns
from tests.test_audit_writer import settle as eventually


def unacceptable(n: int) -> SealedRecord:
    """A record every store refuses: its leaf hash breaks ``CHECK (length(leaf_hash) = 32)``."""
    return dataclasses.replace(record(n), leaf_hash=b"\x00" * 31)


def refused_files(spool: Path) -> list[Path]:
    return sorted((spool / REFUSED_DIR).glob("*.spool"))


def refused_count() -> float:
    return REGISTRY.get_sample_value("custos_audit_refused_total") or 0.0


async def test_a_refused_record_is_set_aside_and_the_rest_is_stored(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    audit = FlakyStore(store)
    spool_dir = tmp_path / "spool"
    writer = AuditWriter(
        audit, Spool(spool_dir, max_bytes=1 << 30), flush_interval_s=0.005, block=lambda: True
    )
    before = refused_count()
    await writer.start()
    try:
        # While the store is down nothing is refused: the batch waits, whole.
        audit.down = True
        for n in range(3):
            writer.submit(record(n))
        bad = unacceptable(3)
        waiter = writer.submit(bad, wait_for="store")
        for n in range(4, 9):
            writer.submit(record(n))
        await eventually(lambda: not writer.store_ok)
        assert refused_files(spool_dir) == []
        audit.down = False
        assert waiter is not None
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(AuditWriter.wait(waiter), 10)
        await eventually(lambda: writer.store_ok and not writer._pending)
        writer.submit(record(9))  # the trail goes on behind it
        await eventually(lambda: not writer._pending and not writer._queue)
        await eventually(lambda: len(refused_files(spool_dir)) == 1)
        assert writer.admit() is None  # block mode serves again
    finally:
        await writer.close()
    assert await stored_ns(store) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert refused_count() == before + 1
    (kept,) = refused_files(spool_dir)
    assert kept.read_bytes() == bad.body + b"\n"
    # Everything else was shipped: no segment is left to replay.
    assert list(spool_dir.glob("*.spool")) == []


class RefusingStore(FlakyStore):
    """Refuses, as a constraint would, every batch holding one of ``refuse`` (event ids)."""

    def __init__(self, db: Store, refuse: set[str]) -> None:
        super().__init__(db)
        self.refuse = refuse

    async def insert(
        self, records: Sequence[SealedRecord], attachments: Sequence[bytes] = ()
    ) -> None:
        if any(r.event_id in self.refuse for r in records):
            self.inserts += 1
            raise Invalid("the change breaks a rule of the schema (test)")
        await super().insert(records, attachments)


async def test_replaying_a_spool_sets_refused_records_aside_and_starts(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A crashed gateway's spool holding a record the store refuses: the gateway still starts,
    with every other record stored, and the refused ones kept, in their order, apart."""
    records = [record(n) for n in range(40)]
    refuse = {records[7].event_id, records[8].event_id, records[31].event_id}
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "000000000001.spool").write_bytes(b"".join(r.body + b"\n" for r in records))
    audit = RefusingStore(store, refuse)
    writer = AuditWriter(
        audit, Spool(spool_dir, max_bytes=1 << 30), flush_interval_s=0.005, block=lambda: True
    )
    assert await writer.start() == 40
    await writer.close()
    assert await stored_ns(store) == [n for n in range(40) if n not in (7, 8, 31)]
    (kept,) = refused_files(spool_dir)
    assert kept.read_bytes() == b"".join(records[n].body + b"\n" for n in (7, 8, 31))
    # Split in halves, not one insert per record: far fewer inserts than records.
    assert audit.inserts < 25
    # The refused file has a segment's name: once the cause is fixed, moved back, it is
    # replayed like any segment.
    audit.refuse = set()
    kept.rename(spool_dir / kept.name)
    again = AuditWriter(
        audit, Spool(spool_dir, max_bytes=1 << 30), flush_interval_s=0.005, block=lambda: True
    )
    assert await again.start() == 3
    await again.close()
    assert refused_files(spool_dir) == []
    assert sorted(await stored_ns(store)) == list(range(40))


async def test_a_damaged_attachment_in_a_replayed_spool_is_set_aside(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An attachment line (a record's encrypted content) that cannot be read is kept apart
    like a refused record; the records around it are stored and the gateway starts."""
    records = [record(n) for n in range(3)]
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    damaged = b"+not an attachment\n"
    lines = [records[0].body + b"\n", records[1].body + b"\n" + damaged, records[2].body + b"\n"]
    (spool_dir / "000000000001.spool").write_bytes(b"".join(lines))
    before = refused_count()
    writer = AuditWriter(
        FlakyStore(store),
        Spool(spool_dir, max_bytes=1 << 30),
        flush_interval_s=0.005,
        block=lambda: True,
    )
    assert await writer.start() == 3
    await writer.close()
    assert await stored_ns(store) == [0, 1, 2]
    (kept,) = refused_files(spool_dir)
    assert kept.read_bytes() == damaged
    assert refused_count() == before + 1


async def test_a_store_that_refuses_every_record_is_waited_for_not_emptied_into_refused(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Every record of a batch refused: the store cannot write (a schema out of step, say), so
    nothing is set aside; the batch waits and block mode refuses requests. Once a record the
    store takes is in the batch, the refused ones are set aside and the trail moves on."""
    audit = FlakyStore(store)
    spool_dir = tmp_path / "spool"
    writer = AuditWriter(
        audit, Spool(spool_dir, max_bytes=1 << 30), flush_interval_s=0.005, block=lambda: True
    )
    await writer.start()
    try:
        audit.down = True  # so that both land in one batch
        bad = [unacceptable(0), unacceptable(1)]
        for one in bad:
            writer.submit(one)
        await eventually(lambda: len(writer._pending) == 2)
        audit.down = False
        await eventually(lambda: audit.inserts >= 8)  # refused in halves, more than once
        assert not writer.store_ok
        assert writer.admit() == "the audit store is unavailable"
        assert refused_files(spool_dir) == []
        writer.submit(record(2))
        await eventually(lambda: writer.store_ok and not writer._pending, timeout=15)
    finally:
        await writer.close()
    assert await stored_ns(store) == [2]
    (kept,) = refused_files(spool_dir)
    assert kept.read_bytes() == b"".join(one.body + b"\n" for one in bad)

"""Helper processes for the audit log tests: ``write URL COUNT TAG`` inserts COUNT records in
small transactions; ``sequence URL`` runs a sequencer until killed."""

from __future__ import annotations

import asyncio
import sys
import time

from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import rfc3339_ms, seal
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store


def record(tag: str, n: int) -> object:
    at_ms = time.time_ns() // 1_000_000
    return seal(
        {"event_type": "auth.failure", "time_start": rfc3339_ms(at_ms), "writer": tag, "n": n},
        at_ms=at_ms,
    )


async def write(url: str, count: int, tag: str) -> None:
    store = await open_store(url, migrate=False)
    audit = AuditStore(store)
    try:
        for start in range(0, count, 25):
            await audit.insert([record(tag, n) for n in range(start, min(count, start + 25))])
    finally:
        await store.close()


async def sequence(url: str) -> None:
    store = await open_store(url, migrate=False)
    sequencer = Sequencer(store, batch=200, interval_s=0.02, name="worker")
    print("ready", flush=True)
    await sequencer.run()


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    if mode == "write":
        asyncio.run(write(url, int(rest[0]), rest[1]))
    else:
        asyncio.run(sequence(url))

"""A SIEM sink following the audit log by sequence number, from a durable cursor.

Contracts:

- **Order.** Records are read from ``audit_leaves`` joined with ``audit_events`` in ``seq``
  order, from the cursor on, so a sink sees the log's order, gap-free, whatever replica wrote
  what (only sequenced records are sent: a record is sent once the sequencer placed it).
- **Durable cursor.** The cursor is the next sequence number to send, kept in the store's
  ``audit_cursors`` table as ``siem:NAME``. It is moved, in a transaction of its own, only
  after the receiver acknowledged the batch (syslog: the receiver closed the connection after
  reading it; HEC: 200 with code 0), and only forward (a compare-and-swap on its old value).
  A restart resumes from it, so a record acknowledged is not sent again and a record not
  acknowledged is sent again. The one window left is a crash between the acknowledgement and
  the cursor's commit: that batch is sent again, and every message carries its sequence
  number and event id so a receiver can drop the repeat.
- **One sender per sink.** Each sink runs where it holds a session lock of its own
  (``Store.session_lock``: a PostgreSQL advisory lock keyed by the sink's name), so replicas
  never send the same batch side by side; when the holder dies another replica takes over
  from the cursor.
- **Retries.** A failed batch is sent again after ``retry.initial_s``, doubling up to
  ``retry.max_s``, for as long as it takes: the cursor never skips a record. Failures are
  logged without the token or the records.
- **Purged records** (their body emptied by the retention purge before the sink reached them)
  are skipped: their ``audit.purge`` record, which is in the log, says which they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from custos.audit.siem.hec import HECSender, batch_body, hec_event
from custos.audit.siem.syslog import SyslogSender, frame, message
from custos.config.siem import SplunkHECSettings, SyslogSettings
from custos.state.store import SessionLock, Store
from custos.telemetry import metrics

log = logging.getLogger("custos.audit.siem")

#: First key of a sink's advisory lock: "sim" and the name's CRC-32 folded into 8 bits would
#: collide too often, so the whole CRC-32 (as a signed 32-bit int) is the key.
_INT32 = 1 << 31


@dataclass(frozen=True, slots=True)
class Leaf:
    seq: int
    body: bytes
    leaf_hash: str


class Sink(Protocol):
    """What a follower hands batches to."""

    async def deliver(self, leaves: Sequence[Leaf]) -> int:
        """Send a prefix of ``leaves`` (at least one) and return how many once the receiver
        acknowledged them; raise when it did not."""

    async def close(self) -> None: ...


def cursor_name(name: str) -> str:
    return f"siem:{name}"


def lock_key(name: str) -> int:
    crc = zlib.crc32(cursor_name(name).encode())
    return crc - (1 << 32) if crc >= _INT32 else crc


async def read_cursor(store: Store, name: str) -> int | None:
    async with store.transaction(readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT position FROM audit_cursors WHERE name = $1", cursor_name(name)
        )
    return None if row is None else int(row["position"])


async def _create_cursor(store: Store, name: str, start: str) -> int:
    async with store.transaction() as tx:
        position = 0
        if start == "newest":
            row = await tx.fetchrow("SELECT size FROM audit_tree_head WHERE id = 1")
            position = int(row["size"]) if row else 0
        await tx.execute(
            "INSERT INTO audit_cursors (name, position) VALUES ($1, $2)"
            " ON CONFLICT (name) DO NOTHING",
            cursor_name(name),
            position,
        )
        row = await tx.fetchrow(
            "SELECT position FROM audit_cursors WHERE name = $1", cursor_name(name)
        )
    assert row is not None
    return int(row["position"])


async def _advance(store: Store, name: str, old: int, new: int) -> bool:
    async with store.transaction() as tx:
        row = await tx.fetchrow(
            "UPDATE audit_cursors SET position = $1 WHERE name = $2 AND position = $3"
            " RETURNING position",
            new,
            cursor_name(name),
            old,
        )
    return row is not None


async def _log_size(store: Store) -> int:
    async with store.transaction(readonly=True) as tx:
        row = await tx.fetchrow("SELECT size FROM audit_tree_head WHERE id = 1")
    return int(row["size"]) if row else 0


async def read_leaves(store: Store, after: int, limit: int) -> list[Leaf]:
    """Sequenced records from ``seq = after`` on, in order (at most ``limit``)."""
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT l.seq, e.record, e.leaf_hash FROM audit_leaves l"
            " JOIN audit_events e ON e.event_id = l.event_id"
            " WHERE l.seq >= $1 ORDER BY l.seq LIMIT $2",
            after,
            limit,
        )
    return [Leaf(int(r["seq"]), bytes(r["record"]), bytes(r["leaf_hash"]).hex()) for r in rows]


class SyslogSink:
    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self._sender = SyslogSender(settings)

    async def deliver(self, leaves: Sequence[Leaf]) -> int:
        data = b"".join(
            frame(
                message(self.settings, leaf.seq, leaf.body, orjson.loads(leaf.body), leaf.leaf_hash)
            )
            for leaf in leaves
        )
        await asyncio.to_thread(self._sender.send, data)
        return len(leaves)

    async def close(self) -> None:
        return None


class HECSink:
    def __init__(self, settings: SplunkHECSettings) -> None:
        self.settings = settings
        self._sender = HECSender(settings)

    async def deliver(self, leaves: Sequence[Leaf]) -> int:
        from custos.audit.records.record import parse_rfc3339, unix_ms

        # One request holds at most max_batch_bytes (collectors refuse larger bodies with
        # 413), and at least one event.
        parts: list[bytes] = []
        size = 0
        for leaf in leaves:
            fields = orjson.loads(leaf.body)
            at_ms = unix_ms(parse_rfc3339(fields["time_start"]))
            part = batch_body([hec_event(self.settings, leaf.seq, fields, at_ms, leaf.leaf_hash)])
            if parts and size + len(part) > self.settings.max_batch_bytes:
                break
            parts.append(part)
            size += len(part)
        await self._sender.send(b"".join(parts))
        return len(parts)

    async def close(self) -> None:
        await self._sender.close()


def make_sink(settings: SyslogSettings | SplunkHECSettings) -> Sink:
    if isinstance(settings, SyslogSettings):
        return SyslogSink(settings)
    return HECSink(settings)


class Follower:
    """One sink's loop: hold its lock, read from its cursor, deliver, move the cursor."""

    def __init__(self, store: Store, settings: SyslogSettings | SplunkHECSettings,
                 sink: Sink | None = None) -> None:  # fmt: skip
        self.store = store
        self.settings = settings
        self.sink = sink if sink is not None else make_sink(settings)
        self.name = settings.name
        self.failures = 0
        self.sent = 0
        self._lock: SessionLock | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Deliver until ``stop``; a batch in flight is finished (or failed) first."""
        while not self._stopping.is_set():
            try:
                if not await self._hold_lock():
                    await self._pause(max(self.settings.poll_interval_s, 1.0))
                    continue
                if not await self.step():
                    await self._pause(self.settings.poll_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._back_off(exc)

    def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _hold_lock(self) -> bool:
        if self._lock is not None and await self._lock.alive():
            return True
        self._lock = await self.store.session_lock(lock_key(self.name))
        return self._lock is not None

    async def step(self) -> bool:
        """Deliver one batch from the cursor; False when there was nothing to send."""
        position = await read_cursor(self.store, self.name)
        if position is None:
            position = await _create_cursor(self.store, self.name, self.settings.start)
        leaves = await read_leaves(self.store, position, self.settings.batch_size)
        leaves_head = await _log_size(self.store)
        metrics.child(metrics.SIEM_LAG, self.name).set(max(0, leaves_head - position))
        if not leaves:
            return False
        # A gap would be a leaf not yet visible; send only the contiguous run.
        run = [leaf for i, leaf in enumerate(leaves) if leaf.seq == position + i]
        if not run:
            return False
        present = [leaf for leaf in run if leaf.body]  # purged bodies are skipped
        after = position + len(run)
        delivered = 0
        if present:
            delivered = await self.sink.deliver(present)
            if delivered < len(present):  # the sink took a prefix: resume after it
                after = present[delivered - 1].seq + 1
        if not await _advance(self.store, self.name, position, after):
            raise RuntimeError(f"the cursor of SIEM sink {self.name!r} moved under it")
        self.sent += delivered
        metrics.child(metrics.SIEM_RECORDS, self.name).inc(delivered)
        metrics.child(metrics.SIEM_LAG, self.name).set(max(0, leaves_head - after))
        if self.failures:
            log.info(
                "SIEM sink %s delivers again (after %d failed attempts)", self.name, self.failures
            )
        self.failures = 0
        return True

    async def _back_off(self, exc: Exception) -> None:
        self.failures += 1
        metrics.child(metrics.SIEM_FAILURES, self.name).inc()
        retry = self.settings.retry
        delay = min(retry.max_s, retry.initial_s * 2 ** min(self.failures - 1, 30))
        log.warning(
            "SIEM sink %s: delivery failed (%s: %s); attempt %d, next in %.1fs",
            self.name,
            type(exc).__name__,
            str(exc)[:200],
            self.failures,
            delay,
        )
        await self._pause(delay)

    async def close(self) -> None:
        await self.sink.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            await lock.release()


class SIEMExports:
    """Every SIEM sink of ``audit.export``, each a task following the log."""

    def __init__(self, store: Store, sinks: Sequence[SyslogSettings | SplunkHECSettings]) -> None:
        self.followers = [Follower(store, s) for s in sinks]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for follower in self.followers:
            self._tasks.append(
                asyncio.create_task(follower.run(), name=f"custos-siem-{follower.name}")
            )

    async def close(self) -> None:
        """Stop every sink: a batch in flight gets its timeout to be acknowledged (and its
        cursor moved) before the task is cancelled."""
        for follower in self.followers:
            follower.stop()
        for follower, task in zip(self.followers, self._tasks, strict=True):
            grace = follower.settings.timeout_s + 1.0
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), grace)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for follower in self.followers:
            with contextlib.suppress(Exception):
                await follower.close()


def describe(settings: Any) -> str:
    """Where a sink sends (for logs: never the token)."""
    if isinstance(settings, SyslogSettings):
        transport = "tls" if settings.tls is not None else "tcp"
        return f"syslog+{transport}://{settings.host}:{settings.port} ({settings.format})"
    return f"{settings.url} (Splunk HEC, {settings.format})"

"""The audit writer: in-memory queue → spool file (batched fsync) → store (batched transactions).

The request path only appends to a list (``submit``); two background tasks do the rest:

- the **flush task** sleeps until a record is queued, gives the batch ``flush_interval_s`` to
  fill (no wait when a strict request waits), then hands every queued record to the spool,
  which writes them in one ``write`` and ``fdatasync``s the file in a worker thread (no file
  I/O on the event loop). A record is then durable: it survives ``kill -9`` and a power cut.
- the **ship task** inserts spooled records into the store in transactions of up to
  ``SHIP_BATCH`` records, at most one per ``SHIP_INTERVAL_S`` unless a batch is full or a
  record waits for the store (``ON CONFLICT DO NOTHING``, so a retried batch or a replayed
  spool never duplicates a record), then marks them shipped so their spool segments can be
  deleted.

Neither task has a timer running while there is nothing to do: an idle gateway does not wake
for its audit trail, and at a moderate rate each task wakes once per batch (a wake-up costs
the same whether it finds one record or a hundred, so waking on a fixed tick made a quiet
gateway's requests dearer than a busy one's).

Guarantees (``docs/audit.md`` states them for operators):

- ``durability: batched``: a response is released at once; its record is durable within
  ``flush_interval_s`` (plus the time of one ``fsync``). A ``kill -9`` loses at most the records
  of responses sent in the last ``flush_interval_s``; a clean stop loses nothing.
- ``durability: strict``: the response (a stream's last chunk) is released only once its record
  is durable: fsynced to the spool with ``on_failure: spool``, committed to the store with
  ``on_failure: block``. If that does not happen within ``STRICT_WAIT_S`` the caller gets 503
  ``audit_unavailable`` instead.
- ``on_failure: block``: while the store refuses writes (the last attempt failed) or the spool
  cannot be written, ``admit`` refuses new requests (503 ``audit_unavailable``). Records of
  requests already under way stay in the spool and reach the store when it returns.
- ``on_failure: spool``: the gateway keeps serving while the store is down; records wait in the
  spool, ``custos_audit_store_up`` is 0 and ``custos_audit_spool_bytes`` grows. When the spool
  reaches ``max_bytes`` (or the disk fails) ``admit`` refuses new requests: no record is dropped
  to keep serving. When the store returns everything is shipped.
- After a crash, ``start`` replays the spool's segments into the store before serving.
- A batch the store *refuses* for what it holds (a constraint, a value a column cannot hold:
  ``refuses_records``), as opposed to being unavailable, is inserted again in halves until
  each record it refuses is alone; the others are stored, and each refused record is kept in
  the spool's ``refused/`` directory (synced), logged with its event id, counted in
  ``custos_audit_refused_total`` and, with ``durability: strict`` and ``on_failure: block``,
  answered with 503. One such record never holds up the trail behind it. A batch of which the
  store refuses *every* record (more than one) is taken for a store that cannot write, not for
  bad records: it waits, as for a store that is down.

The one loss this module allows: when the spool cannot be written *and* more than
``MAX_QUEUE`` records wait in memory, further records are dropped and counted in
``custos_audit_dropped`` (the gateway is refusing requests by then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from custos.audit.records.record import SealedRecord
from custos.audit.storage.spool import Spool, SpoolError, SpoolFull
from custos.audit.storage.store import AuditStore, refuses_records
from custos.telemetry import metrics

log = logging.getLogger("custos.audit")

#: Records per store transaction.
SHIP_BATCH = 2000
#: In batched mode, the store gets a transaction at most this often (unless a batch is full
#: or a record waits for the store). The spool already holds every record durably, so this is
#: only how fresh the store is; each transaction has a fixed cost (a commit with its fsync, on
#: PostgreSQL a round trip and the server's work), which at a moderate rate was paid for a
#: handful of records: 50 ms cost 20 transactions a second at 350 requests/s.
SHIP_INTERVAL_S = 0.2
#: A store transaction that takes longer than this counts as failed.
SHIP_TIMEOUT_S = 10.0
#: Past this many shipped-but-not-stored records in memory, the writer forgets them and
#: replays the spool from disk when the store returns (memory stays bounded in long outages).
MAX_PENDING = 100_000
#: Past this many records that could not be spooled, new records are dropped (and counted).
MAX_QUEUE = 200_000
#: How long a strict response waits for its record to become durable before a 503.
STRICT_WAIT_S = 10.0
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)

WaitFor = Literal["spool", "store"] | None
_Item = TypeVar("_Item")


class Alarm:
    """Wakes one waiting task: ``wait(timeout)`` returns once ``ring()`` was called (since the
    last ``wait`` returned) or ``timeout`` seconds have passed; without a timeout, no timer runs.

    Unlike ``asyncio.timeout`` around ``Event.wait``, a timeout here raises nothing: the
    timeout form cancels the task and turns the cancellation into ``TimeoutError``, which cost
    more than the rest of an idle flush."""

    __slots__ = ("_rung", "_waiter")

    def __init__(self) -> None:
        self._rung = False
        self._waiter: asyncio.Future[None] | None = None

    def ring(self) -> None:
        self._rung = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None = None) -> None:
        if not self._rung:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        self._rung = False


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AuditUnavailable(Exception):
    """A record could not be made durable in time."""


def failed(reason: str) -> asyncio.Future[None]:
    """A waiter that has already failed: ``wait`` raises ``AuditUnavailable(reason)``."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter.set_exception(AuditUnavailable(reason))
    waiter.exception()  # retrieved: a caller that went away leaves no warning behind
    return waiter


@dataclass(slots=True)
class _Entry:
    record: SealedRecord
    waiter: asyncio.Future[None] | None
    wait_for: WaitFor
    segment: int = 0
    #: Stored with the record, in its transaction (its encrypted content, if captured).
    attachment: bytes | None = None


class AuditWriter:
    """See the module docstring. ``block`` returns whether ``on_failure: block`` is in force
    (read per decision, so a reload changes it); ``export`` receives every durable batch;
    ``prepare`` is called at the start of every flush, to ``submit`` what its caller has
    waiting (it must not block), and ``waiting`` says how many records that is (they count
    in ``custos_audit_queue_depth``)."""

    def __init__(
        self,
        store: AuditStore,
        spool: Spool,
        *,
        flush_interval_s: float,
        block: Callable[[], bool],
        export: Callable[[Sequence[SealedRecord]], None] | None = None,
        prepare: Callable[[], None] | None = None,
        waiting: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.flush_interval_s = flush_interval_s
        self._block = block
        self._export = export
        self._prepare = prepare
        self._queue: list[_Entry] = []
        self._pending: list[_Entry] = []
        self._waiting = waiting
        #: ``_work`` wakes an idle flush task (a record was queued); ``_flush_now`` cuts its
        #: wait for the batch to fill short (a strict record, a full batch, a stop, a retry).
        self._work = Alarm()
        self._flush_now = Alarm()
        self._flush_idle = False
        #: The same pair for the ship task: records to ship, and ship without waiting.
        self._ship_work = Alarm()
        self._ship_now = Alarm()
        self._rotation: asyncio.Future[int] | None = None
        self._overflowed = False
        #: Sealed segments up to this id must be replayed from disk (after an overflow).
        self._replay_up_to: int | None = None
        #: A record waits for the store: ship without waiting for the interval.
        self._urgent = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.store_ok = True
        self.spool_ok = True
        self.spool_full = False
        self.dropped = 0
        self._counted: dict[str, Any] = {}
        metrics.AUDIT_QUEUE_DEPTH.set_function(
            lambda: len(self._queue) + (waiting() if waiting is not None else 0)
        )
        metrics.AUDIT_UNSHIPPED.set_function(lambda: len(self._pending))
        metrics.AUDIT_SPOOL_BYTES.set_function(lambda: self.spool.total_bytes)
        metrics.AUDIT_SPOOL_MAX_BYTES.set_function(lambda: self.spool.max_bytes)
        metrics.AUDIT_STORE_UP.set_function(lambda: 1 if self.store_ok else 0)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Open the spool, replay what an earlier process left in it, start the tasks.

        Returns how many records were replayed. Raises if the store refuses them (the gateway
        does not start with records it cannot account for)."""
        leftovers = self.spool.open()
        replayed = 0
        for path in leftovers:
            replayed += await self._replay(path)
        if leftovers:
            log.warning("replayed %d audit record(s) from the spool", replayed)
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="custos-audit-flush"),
            asyncio.create_task(self._ship_loop(), name="custos-audit-ship"),
        ]
        return replayed

    async def close(self, timeout_s: float = 15.0) -> None:
        """Flush and ship everything (within ``timeout_s``), then close the spool. What could
        not be shipped stays in the spool for the next start."""
        self._stopping = True
        self._wake_flush(now=True)
        self._wake_ship(now=True)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.error("audit writer: records still unshipped at stop; the spool keeps them")
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.spool.close()

    # -- the request path ----------------------------------------------------------------------

    def submit(
        self, record: SealedRecord, wait_for: WaitFor = None, attachment: bytes | None = None
    ) -> asyncio.Future[None] | None:
        """Queue ``record`` (and its ``attachment``, spooled and stored with it); with
        ``wait_for``, return a future done once it is durable there."""
        if len(self._queue) >= MAX_QUEUE:
            self.dropped += 1
            metrics.AUDIT_DROPPED.inc()
            log.error("audit record %s dropped: the spool cannot be written", record.event_id)
            # A strict request whose record is dropped is not released either (503).
            return failed("the audit spool cannot be written") if wait_for else None
        waiter = asyncio.get_running_loop().create_future() if wait_for else None
        self._queue.append(_Entry(record, waiter, wait_for, 0, attachment))
        if wait_for or len(self._queue) >= SHIP_BATCH:
            self._wake_flush(now=True)
        elif self._flush_idle:
            self._wake_flush()
        return waiter

    def notify(self) -> None:
        """A record waits to be built (``prepare`` will submit it): wake an idle flush task.
        Costs one attribute test when the task is already awake."""
        if self._flush_idle:
            self._wake_flush()

    def _wake_flush(self, *, now: bool = False) -> None:
        self._flush_idle = False
        self._work.ring()
        if now:
            self._flush_now.ring()

    def _wake_ship(self, *, now: bool = False) -> None:
        self._ship_work.ring()
        if now:
            self._ship_now.ring()

    def admit(self) -> str | None:
        """``None`` when new requests may be served, else why not."""
        if not self.spool_ok:
            return "the audit spool cannot be written"
        if self.spool_full:
            return "the audit spool is full"
        if not self.store_ok and self._block():
            return "the audit store is unavailable"
        return None

    @staticmethod
    async def wait(waiter: asyncio.Future[None]) -> None:
        """Wait for a ``submit`` future; raises ``AuditUnavailable`` after ``STRICT_WAIT_S``."""
        try:
            async with asyncio.timeout(STRICT_WAIT_S):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise AuditUnavailable("the audit record was not durable in time") from None

    # -- flush: queue → spool ------------------------------------------------------------------

    def _queued(self) -> bool:
        return bool(self._queue) or (self._waiting is not None and self._waiting() > 0)

    async def _flush_loop(self) -> None:
        while True:
            if not self._stopping:
                if not self._queued() and not (self._rotation and not self._rotation.done()):
                    self._flush_idle = True
                    await self._work.wait()  # idle: no timer until a record comes
                if not self._stopping:
                    await self._flush_now.wait(self.flush_interval_s)  # let the batch fill
            if self._rotation is not None and not self._rotation.done():
                self._rotation.set_result(self.spool.rotate())
                self._overflowed = False
            flushed = await self._flush()
            if self._stopping and (not self._queue or not flushed):
                return

    async def _flush(self) -> bool:
        """Spool the queue; False when the spool refused it (the records stay queued)."""
        if self._prepare is not None:
            try:
                self._prepare()  # records built late are submitted now (AuditTrail)
            except Exception:  # never stop the writer; the records' owner logs their loss
                log.exception("audit: preparing records for the spool failed")
        batch, self._queue = self._queue, []
        if not batch:
            return True
        lines = [_spool_lines(e) for e in batch]
        fits = self._fitting(lines)
        if fits < len(batch):  # spool what the bound allows; the rest waits in the queue
            self._queue[:0] = batch[max(fits, 1) :]
            batch, lines = batch[: max(fits, 1)], lines[: max(fits, 1)]
        data = b"".join(lines)
        try:
            segment = self.spool.append(data, len(batch))
            await asyncio.get_running_loop().run_in_executor(None, self.spool.sync)
            self.spool.rotate_if_full()
        except (SpoolError, OSError) as exc:
            self._queue[:0] = batch
            self.spool_full = isinstance(exc, SpoolFull)
            self.spool_ok = self.spool_full  # full is a bound, not a broken disk
            log.error("audit spool: %s; %d record(s) wait in memory", exc, len(self._queue))
            if self.spool_full and self.spool.current_size > 0:
                # Seal what is written, so that once it is shipped its segment can go.
                self.spool.rotate()
            if not self._stopping:
                await asyncio.sleep(_BACKOFF_S[1] if self.spool_full else _BACKOFF_S[-1])
                self._wake_flush(now=True)
            return False
        self.spool_ok, self.spool_full = True, False
        self._count(batch)
        for entry in batch:
            entry.segment = segment
            if entry.wait_for == "spool" and entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_result(None)
            elif entry.wait_for == "store":
                self._urgent = True
        if self._overflowed:
            self._fail_waiters(batch)
        else:
            self._pending.extend(batch)
            if len(self._pending) > MAX_PENDING:
                self._overflow()
        if self._export is not None:
            try:
                self._export([e.record for e in batch])
            except Exception:  # an exporter's bug must not stop the audit trail
                log.exception("audit export failed")
        self._wake_ship(now=self._urgent or len(self._pending) >= SHIP_BATCH)
        return True

    def _count(self, batch: list[_Entry]) -> None:
        """``custos_audit_records_total`` per event type, counted once a batch is spooled (the
        metric's lock is then taken per batch instead of per request)."""
        counts: dict[str, int] = {}
        for entry in batch:
            kind = entry.record.event_type
            counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            counter = self._counted.get(kind)
            if counter is None:
                counter = self._counted[kind] = metrics.AUDIT_RECORDS.labels(kind)
            counter.inc(count)

    def _fitting(self, lines: list[bytes]) -> int:
        """How many of ``lines`` fit in the spool's bound."""
        free = self.spool.max_bytes - self.spool.total_bytes
        total = sum(len(line) for line in lines)
        if total <= free:
            return len(lines)
        count = 0
        for line in lines:
            free -= len(line)
            if free < 0:
                break
            count += 1
        return count

    def _overflow(self) -> None:
        log.error(
            "audit store: %d records wait; keeping them in the spool only until it returns",
            len(self._pending),
        )
        self._overflowed = True
        self._fail_waiters(self._pending)
        self._pending = []

    @staticmethod
    def _fail_waiters(entries: Sequence[_Entry]) -> None:
        for entry in entries:
            if entry.wait_for == "store" and entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(AuditUnavailable("the audit store is unavailable"))

    # -- ship: spool → store -------------------------------------------------------------------

    def _ship_due(self) -> bool:
        """Whether the ship task has anything to do (or to retry)."""
        return bool(
            self._pending
            or self._urgent
            or self._overflowed
            or self._replay_up_to is not None
            or not self.store_ok
        )

    async def _ship_loop(self) -> None:
        failures = 0
        last_ship = 0.0
        while True:
            if self._stopping:
                await asyncio.sleep(0.005)  # let the flush task finish its last batches
            else:
                if not self._ship_due():
                    await self._ship_work.wait()  # idle: no timer until a batch is spooled
                wait = last_ship + SHIP_INTERVAL_S - time.monotonic()
                if wait > 0 and not (self._urgent or len(self._pending) >= SHIP_BATCH):
                    await self._ship_now.wait(wait)  # one transaction per interval at most
            self._urgent = False
            try:
                if self._overflowed or self._replay_up_to is not None:
                    await self._recover()
                elif self._pending:
                    await self._ship_batch()
                elif not self.store_ok:
                    await self.store.ping()
                else:
                    if self._stopping and self._flush_done():
                        return
                    continue
            except Exception as exc:
                if self.store_ok:
                    log.error("audit store: cannot write records (%s); retrying", exc)
                self.store_ok = False
                metrics.AUDIT_SHIP_FAILURES.inc()
                if self._stopping and self._flush_done():
                    return  # the spool keeps them for the next start
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1
                continue
            if not self.store_ok:
                log.warning("audit store: writable again")
            self.store_ok = True
            failures = 0
            last_ship = time.monotonic()

    def _flush_done(self) -> bool:
        return all(t.done() for t in self._tasks if t.get_name() == "custos-audit-flush")

    async def _ship_batch(self) -> None:
        batch = self._pending[:SHIP_BATCH]
        refused = await self._store(
            batch, self._insert_entries, lambda e: (f"record {e.record.event_id}", _spool_lines(e))
        )
        del self._pending[: len(batch)]
        failed = {id(e) for e in refused}
        counts: dict[int, int] = {}
        for entry in batch:
            counts[entry.segment] = counts.get(entry.segment, 0) + 1
            if entry.wait_for == "store" and entry.waiter is not None and not entry.waiter.done():
                if id(entry) in failed:
                    entry.waiter.set_exception(AuditUnavailable("the audit store refused it"))
                else:
                    entry.waiter.set_result(None)
        for segment, count in counts.items():
            self.spool.mark_shipped(segment, count)

    async def _insert(
        self, records: Sequence[SealedRecord], attachments: Sequence[bytes] = ()
    ) -> None:
        async with asyncio.timeout(SHIP_TIMEOUT_S):
            await self.store.insert(records, attachments)

    async def _insert_entries(self, entries: Sequence[_Entry]) -> None:
        attachments = [e.attachment for e in entries if e.attachment is not None]
        await self._insert([e.record for e in entries], attachments)

    async def _store(
        self,
        items: Sequence[_Item],
        insert: Callable[[Sequence[_Item]], Awaitable[None]],
        described: Callable[[_Item], tuple[str, bytes]],
    ) -> list[_Item]:
        """Insert ``items`` (``_refused_alone``); those the store refused on their own are
        kept in the spool's ``refused/`` (durably, as ``described`` gives their spool lines),
        logged (as ``described`` names them) and counted. Returns them."""
        refused = await _refused_alone(items, insert)
        if not refused:
            return []
        kept = [(described(item), exc) for item, exc in refused]
        data = b"".join(lines for (_, lines), _ in kept)
        path = await asyncio.get_running_loop().run_in_executor(None, self.spool.keep_refused, data)
        metrics.AUDIT_REFUSED.inc(len(kept))
        for (what, _), exc in kept:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            name = type(exc).__name__
            log.error("audit store refused %s (%s: %s); kept in %s", what, name, reason, path)
        return [item for item, _ in refused]

    async def _recover(self) -> None:
        """After an overflow: once the store answers, seal the current segment (from then on
        records are kept in memory again) and replay every sealed segment from disk."""
        if self._replay_up_to is None:
            await self.store.ping()
            if self._flush_done():  # stopping: nothing else touches the spool now
                self._replay_up_to = self.spool.rotate()
                self._overflowed = False
            else:
                if self._rotation is None or self._rotation.done():
                    self._rotation = asyncio.get_running_loop().create_future()
                    self._wake_flush(now=True)
                self._replay_up_to = await self._rotation
        for path in self.spool.sealed_segments(up_to=self._replay_up_to):
            await self._replay(path)
        self._replay_up_to = None

    async def _replay(self, path: Path) -> int:
        records, attachments, skipped = self.spool.read_segment(path)
        if skipped:
            log.error("audit spool %s: %d torn or corrupt line(s) skipped", path.name, skipped)
        for start in range(0, len(records), SHIP_BATCH):
            await self._store(
                records[start : start + SHIP_BATCH],
                self._insert,
                lambda r: (f"record {r.event_id}", r.body + b"\n"),
            )
        # Attachments after their records (a batch of them at most: content is rare).
        for start in range(0, len(attachments), SHIP_BATCH):
            await self._store(
                attachments[start : start + SHIP_BATCH],
                lambda chunk: self._insert((), chunk),
                lambda a: ("an attachment", b"+%s\n" % a),
            )
        self.spool.delete(path)
        return len(records)


def _spool_lines(entry: _Entry) -> bytes:
    """An entry as the spool holds it: the record's line, then its attachment's, if any."""
    if entry.attachment is None:
        return entry.record.body + b"\n"
    return b"%s\n+%s\n" % (entry.record.body, entry.attachment)


async def _refused_alone(
    items: Sequence[_Item], insert: Callable[[Sequence[_Item]], Awaitable[None]]
) -> list[tuple[_Item, Exception]]:
    """``_refused_of``, but a store that refuses every one of several items is taken to be
    unable to write (a schema out of step with the code, say), not to be refusing what they
    hold: its error is raised and the batch waits, rather than everything being set aside."""
    refused = await _refused_of(items, insert)
    if len(items) > 1 and len(refused) == len(items):
        raise refused[0][1]
    return refused


async def _refused_of(
    items: Sequence[_Item], insert: Callable[[Sequence[_Item]], Awaitable[None]]
) -> list[tuple[_Item, Exception]]:
    """Insert ``items``; if the store refuses them (``refuses_records``), insert each half the
    same way, down to single items. Returns the items refused on their own, with the store's
    error. Any other error propagates: the store is unavailable, and what was inserted so far
    is inserted again by the retry without harm (inserting is idempotent)."""
    try:
        await insert(items)
        return []
    except Exception as exc:
        if not refuses_records(exc):
            raise
        if len(items) == 1:
            return [(items[0], exc)]
    middle = len(items) // 2
    return await _refused_of(items[:middle], insert) + await _refused_of(items[middle:], insert)

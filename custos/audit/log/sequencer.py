"""The sequencer: the one task that orders audit records and extends the Merkle log.

Any replica inserts records (``audit_events``; a trigger queues each in ``audit_pending``).
Exactly one sequencer at a time takes queued records in batches and, in one transaction per
batch, assigns them the next sequence numbers ``size .. size+k-1`` (``audit_leaves``), stores
the complete-subtree nodes they complete (``audit_merkle_nodes``), dequeues them, and moves the
tree head with a compare-and-swap::

    UPDATE audit_tree_head SET size = new, root = … WHERE size = old AND epoch = my_epoch

Contracts:

- **Gap-free order.** ``seq`` is contiguous from 0: a batch either commits whole (leaves, nodes,
  head) or not at all. ``ingest_id``/``pending_id`` (database sequences, which commit out of
  order) only choose which records go next; the audit order is ``seq``.
- **One leader.** On PostgreSQL the leader holds a session advisory lock on a connection of its
  own (keyed by the schema, so separate schemas have separate logs); when that session dies
  (process killed, connection cut) PostgreSQL releases the lock and a standby takes over. On
  SQLite the sequencer is a single task in the process.
- **Fencing.** Taking leadership increments ``epoch``; every head update compares ``size`` and
  ``epoch``, so a former leader that stalled past losing its lock has its batch refused
  (``Fenced``) and rolled back: it cannot write a leaf, a node or a head.
- The sequencer never reads record bodies: it trusts the leaf hash stored beside them;
  ``custos audit verify`` recomputes every leaf hash from the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from custos.audit.log.merkle import Frontier
from custos.state.models import utcnow
from custos.state.store import SessionLock, Store, Tx

if TYPE_CHECKING:
    from custos.audit.log.checkpoint import Checkpoint, Signer
    from custos.audit.siem.follower import SIEMExports


class CheckpointExport(Protocol):
    """Where each new signed checkpoint is also sent (called from the checkpointer)."""

    def __call__(self, checkpoint: Checkpoint) -> None: ...

    def close(self) -> None: ...


log = logging.getLogger("custos.audit.sequencer")

#: First key of the two-key advisory lock (the second is the schema's ``hashtext``).
LOCK_CLASS: Final = 0x61756431  # "aud1"
BATCH: Final = 2000
INTERVAL_S: Final = 0.2
#: On SQLite the inserting transactions extend the log themselves (``insert_in``): a tick
#: only tells the checkpointer how far the log grew, so it need not come five times a second.
SERIAL_INTERVAL_S: Final = 1.0
_RETRY_S: Final = 1.0


class Fenced(Exception):
    """The tree head moved under us or another leader took over: this batch was refused."""


async def read_nodes(tx: Tx, ids: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored complete-subtree nodes ``ids`` (missing ones are absent from the result)."""
    if not ids:
        return {}
    out: dict[tuple[int, int], bytes] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        where = " OR ".join(
            f"(level = ${2 * i + 1} AND idx = ${2 * i + 2})" for i in range(len(chunk))
        )
        args = [v for pair in chunk for v in pair]
        for row in await tx.fetch(f"SELECT level, idx, hash FROM audit_merkle_nodes WHERE {where}",
                                  *args):  # fmt: skip
            out[(int(row["level"]), int(row["idx"]))] = bytes(row["hash"])
    return out


async def read_head(tx: Tx) -> dict[str, Any]:
    row = await tx.fetchrow("SELECT size, root, epoch FROM audit_tree_head WHERE id = 1")
    if row is None:
        raise RuntimeError("audit_tree_head is missing (migration 0004 not applied?)")
    return {"size": int(row["size"]), "root": bytes(row["root"]), "epoch": int(row["epoch"])}


class Sequencer:
    """See the module docstring. ``on_committed(size, root)`` is awaited after each batch that
    grew the tree has committed (the checkpointer hooks in there). ``before_write`` is a test
    hook: awaited after a batch is computed and before anything of it is written."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int = BATCH,
        interval_s: float = INTERVAL_S,
        name: str | None = None,
        on_committed: Callable[[int, bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.batch = batch
        self.interval_s = interval_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.on_committed = on_committed
        self.before_write: Callable[[], Awaitable[None]] | None = None
        self.epoch: int | None = None
        self.frontier: Frontier | None = None
        self.fenced = 0
        self._leader_lock: SessionLock | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="custos-audit-sequencer")

    def wake(self) -> None:
        """Sequence now rather than at the next interval."""
        self._wake.set()

    async def close(self) -> None:
        """Stop after the batch in progress; sequences what is queued first (best effort)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.step_down()

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    async def run(self) -> None:
        """Lead when possible, sequence until stopped."""
        while True:
            try:
                if await self.lead():
                    count = await self.tick()
                    if self._stopping and count < self.batch:
                        return
                    if count >= self.batch:
                        continue
                elif self._stopping:
                    return
            except Fenced:
                log.warning("audit sequencer %s was fenced; stepping down", self.name)
                await self.step_down()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit sequencer %s failed; retrying", self.name)
                await self.step_down()
                await asyncio.sleep(_RETRY_S)
                continue
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s if self.is_leader else _RETRY_S):
                    await self._wake.wait()
            self._wake.clear()

    # -- leadership ----------------------------------------------------------------------------

    async def lead(self) -> bool:
        """Be the leader (take the lock if free); False when another process leads."""
        if self.is_leader:
            if self._leader_lock is not None and await self._leader_lock.alive():
                return True
            log.warning("audit sequencer %s lost its lock session", self.name)
            await self.step_down()
        self._leader_lock = await self.store.session_lock(LOCK_CLASS)
        if self._leader_lock is None:
            return False
        try:
            async with self.store.transaction() as tx:
                await tx.execute(
                    "UPDATE audit_tree_head SET epoch = epoch + 1, leader = $1 WHERE id = 1",
                    self.name,
                )
                epoch = (await read_head(tx))["epoch"]
                self.frontier = await load_frontier(tx)
        except BaseException:
            await self.step_down()
            raise
        self.epoch = epoch
        log.info("audit sequencer %s leads (epoch %d, size %d)", self.name, self.epoch,
                 self.frontier.size)  # fmt: skip
        return True

    async def step_down(self) -> None:
        """Forget leadership and release the lock session."""
        self.epoch = None
        self.frontier = None
        lock, self._leader_lock = self._leader_lock, None
        if lock is not None:
            await lock.release()

    # -- one batch -----------------------------------------------------------------------------

    async def tick(self) -> int:
        """Sequence up to ``batch`` queued records; returns how many were taken off the queue.

        On SQLite the inserting transactions extend the log themselves (``insert_in``) and the
        queue only holds records stored before they did: a tick there also picks up the tree
        they grew, so ``frontier`` and ``on_committed`` follow the log either way.

        Raises ``Fenced`` (nothing written) when this leader was superseded."""
        if self.epoch is None or self.frontier is None:
            raise Fenced("not the leader")
        epoch, known = self.epoch, self.frontier.size
        async with self.store.transaction() as tx:
            frontier = await load_frontier(tx) if tx.serial_writes else self.frontier
            rows = await tx.fetch(
                "SELECT p.pending_id, p.event_id, e.leaf_hash, l.seq FROM audit_pending p"
                " JOIN audit_events e ON e.event_id = p.event_id"
                " LEFT JOIN audit_leaves l ON l.event_id = p.event_id"
                " ORDER BY p.pending_id LIMIT $1",
                self.batch,
            )
            fresh = [(r["event_id"], bytes(r["leaf_hash"])) for r in rows if r["seq"] is None]
            if fresh:
                try:
                    frontier = await append_leaves(
                        tx, fresh, frontier=frontier, epoch=epoch, before_write=self.before_write
                    )
                except Fenced:
                    self.fenced += 1
                    raise
            if rows:
                await _delete_pending(tx, [int(r["pending_id"]) for r in rows])
        self.frontier = frontier
        if frontier.size > known and self.on_committed is not None:
            await self.on_committed(frontier.size, frontier.root())
        return len(rows)


async def load_frontier(tx: Tx) -> Frontier:
    """The tree at the stored head, from its stored nodes (O(log n) reads), checked against the
    head's root."""
    head = await read_head(tx)
    nodes = await read_nodes(tx, Frontier.node_ids(head["size"]))
    frontier = Frontier.load(head["size"], lambda lvl, idx: nodes[(lvl, idx)])
    if frontier.root() != head["root"]:
        raise RuntimeError("the stored tree head does not match the stored nodes")
    return frontier


async def append_leaves(
    tx: Tx,
    leaves: Sequence[tuple[str, bytes]],
    *,
    frontier: Frontier | None = None,
    epoch: int | None = None,
    before_write: Callable[[], Awaitable[None]] | None = None,
) -> Frontier:
    """Give ``leaves`` (event id, leaf hash) the next sequence numbers, inside ``tx``: their
    ``audit_leaves`` rows, the complete-subtree nodes they complete, and the tree head moved by
    compare-and-swap on its size (and on ``epoch`` when given). Returns the grown tree.

    ``frontier`` is the caller's copy of the tree at the head (a leader's); without it the tree
    is loaded from the store. Raises ``Fenced`` when the head moved or the epoch changed: the
    caller must roll ``tx`` back (raising out of it does)."""
    grown = frontier.copy() if frontier is not None else await load_frontier(tx)
    old_size = grown.size
    nodes = grown.extend(leaf for _, leaf in leaves)
    if before_write is not None:
        await before_write()
    now = utcnow()
    sql = (
        "UPDATE audit_tree_head SET size = $1, root = $2, updated_at = $3"
        " WHERE id = 1 AND size = $4"
    )
    args: list[Any] = [grown.size, grown.root(), now, old_size]
    if epoch is not None:
        sql += " AND epoch = $5"
        args.append(epoch)
    if await tx.execute(sql, *args) != 1:
        raise Fenced(f"tree head is no longer size {old_size} at epoch {epoch}")
    if tx.serial_writes:  # SQLite, in process: a statement per row costs no round trip
        await tx.executemany(
            "INSERT INTO audit_leaves (seq, event_id, leaf_hash, sequenced_at)"
            " VALUES ($1, $2, $3, $4)",
            [(old_size + i, event_id, leaf, now) for i, (event_id, leaf) in enumerate(leaves)],
        )
        await tx.executemany(
            "INSERT INTO audit_merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)", nodes
        )
        return grown
    # PostgreSQL: one statement per table with the rows as arrays; executing a statement per
    # row cost the database server a bind and an execution each, on the core it may share.
    await tx.execute(
        "INSERT INTO audit_leaves (seq, event_id, leaf_hash, sequenced_at)"
        " SELECT seq, event_id, leaf_hash, $4"
        " FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS t(seq, event_id, leaf_hash)",
        list(range(old_size, old_size + len(leaves))),
        [event_id for event_id, _ in leaves],
        [leaf for _, leaf in leaves],
        now,
    )
    if nodes:
        await tx.execute(
            "INSERT INTO audit_merkle_nodes (level, idx, hash)"
            " SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])",
            [level for level, _, _ in nodes],
            [idx for _, idx, _ in nodes],
            [node for _, _, node in nodes],
        )
    return grown


async def _delete_pending(tx: Tx, pending_ids: list[int]) -> None:
    if tx.serial_writes:
        await tx.executemany(
            "DELETE FROM audit_pending WHERE pending_id = $1", [(i,) for i in pending_ids]
        )
    else:
        await tx.execute(
            "DELETE FROM audit_pending WHERE pending_id = ANY($1::bigint[])", pending_ids
        )


class AuditLog:
    """The sequencer, (with a signing key) the checkpointer and the SIEM sinks (which follow
    the log by sequence number, ``custos.audit.siem``) of one gateway process.

    ``start``/``close`` are what the gateway calls. The signing keys (the current one and,
    during a rotation, the retiring one) are loaded here, once, and live only inside the
    checkpointer's signers. ``checkpoint_export`` makes, when the log is signed, what each new
    checkpoint is also handed to (the gateway's OTLP export); it is closed with the log. The
    log knows records only as bytes and leaf hashes, whatever their event type."""

    def __init__(
        self,
        store: Store,
        settings: Any,
        *,
        checkpoint_export: Callable[[], CheckpointExport] | None = None,
    ) -> None:
        from custos.audit.log.checkpoint import Checkpointer

        self.store = store
        self.checkpointer: Checkpointer | None = None
        self.otlp: CheckpointExport | None = None
        settings = _with_key_beside_store(settings, store)
        if settings.signing_key is not None or os.environ.get("CUSTOS_AUDIT_SIGNING_KEY"):
            signers = load_signers(settings)
            if checkpoint_export is not None:
                self.otlp = checkpoint_export()
            self.checkpointer = Checkpointer(
                store,
                signers,
                origin=settings.log_origin,
                interval_s=settings.checkpoint_interval_s,
                every_n=settings.checkpoint_every,
                export_path=settings.checkpoint_export,
                on_checkpoint=self.otlp,
            )
        else:
            log.warning("audit.signing_key is not set: the log is sequenced but not signed, "
                        "and custos audit verify fails (custos audit keys generate makes "
                        "a key)")  # fmt: skip
        hook = None if self.checkpointer is None else self.checkpointer.on_sequenced
        interval_s = SERIAL_INTERVAL_S if store.serial_writes else INTERVAL_S
        self.sequencer = Sequencer(store, interval_s=interval_s, on_committed=hook)
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.siem: SIEMExports | None = None
        sinks = getattr(settings, "siem_sinks", [])
        if sinks:
            from custos.audit.siem.follower import SIEMExports

            self.siem = SIEMExports(store, sinks)

    async def head(self) -> tuple[int, bytes] | None:
        """The tree to checkpoint: ``None`` unless this process leads. On SQLite every
        inserting transaction extends the log, so the head is read from the store."""
        frontier = self.sequencer.frontier
        if not self.sequencer.is_leader or frontier is None:
            return None
        if self.store.serial_writes:
            async with self.store.transaction(readonly=True) as tx:
                head = await read_head(tx)
            return head["size"], head["root"]
        return frontier.size, frontier.root()

    async def start(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.register_keys()
            self._checkpoint_task = asyncio.create_task(
                self.checkpointer.run(self.head), name="custos-audit-checkpoints"
            )
        self.sequencer.start()
        if self.siem is not None:
            self.siem.start()

    async def close(self) -> None:
        """Stop the SIEM sinks, sequence what is queued, sign a last checkpoint, stop."""
        if self.siem is not None:
            await self.siem.close()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(BaseException):
                await self._checkpoint_task
        head = await self.head()
        if self.sequencer.is_leader:
            self.sequencer._stopping = True
            with contextlib.suppress(Exception):
                while await self.sequencer.tick():
                    pass
            head = await self.head()
        if head is not None and self.checkpointer is not None:
            with contextlib.suppress(Exception):
                await self.checkpointer.checkpoint(*head)
        await self.sequencer.close()
        if self.otlp is not None:
            await asyncio.to_thread(self.otlp.close)  # sends what is queued


def _with_key_beside_store(settings: Any, store: Store) -> Any:
    """``settings`` with the key ``custos init`` made beside a SQLite store as ``signing_key``,
    when none is configured (a file, or the PEM in the environment) and that file exists."""
    from custos.audit.log.checkpoint import KEY_ENV, key_beside_store

    database = store.database_file
    if settings.signing_key is not None or os.environ.get(KEY_ENV) or database is None:
        return settings
    beside = key_beside_store(database)
    if beside is None or not beside.is_file():
        return settings
    log.info("audit checkpoints are signed with %s (beside the store)", beside)
    return settings.model_copy(update={"signing_key": str(beside)})


def load_signers(settings: Any) -> list[Signer]:
    """The current signing key and, during a rotation, the retiring one after it (both sign
    every checkpoint). Each passphrase variable is removed from the environment, used or not."""
    from custos.audit.log.checkpoint import RETIRING_PASSPHRASE_ENV, load_signer

    signers = [load_signer(settings.signing_key_name, settings.signing_key)]
    retiring = getattr(settings, "retiring_signing_key", None)
    if retiring is None:
        os.environ.pop(RETIRING_PASSPHRASE_ENV, None)
        return signers
    signers.append(load_signer(settings.retiring_signing_key_name, retiring,
                               passphrase_env=RETIRING_PASSPHRASE_ENV))  # fmt: skip
    log.info("audit checkpoints are signed by %s and, until it is retired, by %s",
             signers[0].name, signers[1].name)  # fmt: skip
    return signers

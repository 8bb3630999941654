"""Retention: the purge of old record bodies that keeps the log verifiable, and legal holds.

**The purge** (``purge``) takes records whose ``time_start`` is older than
``audit.retention_days`` and that are already sequenced, and in one transaction per batch:

- empties their bodies (``audit_events.record`` becomes zero bytes) and deletes their query rows
  (``audit_llm_calls``, ``audit_llm_call_data_classes``, ``audit_tool_calls``,
  ``audit_tool_call_data_classes``), taking them out
  of the daily rollups (``custos.audit.storage.rollup``, ``custos.audit.storage.tool_rollup``)
  first;
- keeps everything the tree is made of: the ``audit_events`` row with its leaf hash,
  ``audit_leaves`` and ``audit_merkle_nodes``, so every root and every checkpoint, stored or
  exported, still verifies;
- writes an ``audit.purge`` record saying exactly which sequence numbers it emptied, with the
  cut-off. It goes in through the store's insert path in the same transaction, so it is queued
  and sequenced like any record, and there is never an emptied body without the record that
  accounts for it. ``custos audit verify`` counts an emptied body as purged only when such a
  record covers its ``seq``; any other missing body is a failure.

``audit.purge`` records themselves are never purged (they are what makes the purge checkable).
The change is made inside a *purge window* (``Tx.purge_window``): the one exception the guard
triggers of migration 0005 allow. Each batch takes the purge's lock first (``Tx.lock``: an
advisory lock on PostgreSQL), so replicas running the job at once take turns and never purge a
record twice.

On SQLite the emptied bytes leave the database files: the purge runs with ``secure_delete``
(``Tx.erasing``: freed space is overwritten with zeros) and then checkpoints and truncates the
WAL. On PostgreSQL the old row versions stay in the table's files until (auto)vacuum reclaims
them, and in WAL archives and backups until those age out.

**Legal holds** (``set_hold``/``release_hold``): a hold suspends the purge, for every record
(global, ``team`` null) or for the LLM and MCP tool calls attributed to one team (the records'
``team``).
Holds are set and released by admins with a reason; each change is an admin event (and so an
``admin.change`` record) in the same transaction. A released hold is kept, with who released it
and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from custos.audit.gateway_info import GatewayInfo
from custos.audit.records import events
from custos.audit.records.record import AUDIT_PURGE, SealedRecord, seal, unix_ms
from custos.audit.storage import rollup, tool_rollup
from custos.audit.storage.store import insert_in
from custos.config.audit import AuditSettings
from custos.state.errors import Conflict, Invalid, NotFound
from custos.state.models import Actor, utcnow
from custos.state.store import Store, Tx, _dt

log = logging.getLogger("custos.audit.retention")

#: Records emptied per transaction (and so at most this many per ``audit.purge`` record).
PURGE_BATCH: Final = 1000
#: How often the gateway runs the purge, and how long after start the first run is.
PURGE_INTERVAL_S: Final = 3600.0
FIRST_PURGE_DELAY_S: Final = 60.0
#: The purge's lock (``Tx.lock``): one purge at a time.
PURGE_LOCK_CLASS: Final = 0x61756432  # "aud2"
MAX_REASON: Final = 1000


# -- legal holds -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    #: ``None``: every record is held.
    team: str | None
    reason: str
    set_by: str
    set_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None
    release_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Hold:
        set_at = _dt(row["set_at"])
        assert set_at is not None
        return cls(row["id"], row["team"], row["reason"], row["set_by"], set_at,
                   row["released_by"], _dt(row["released_at"]),
                   row["release_reason"])  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "reason": self.reason,
            "set_by": self.set_by,
            "set_at": self.set_at.isoformat(),
            "released_by": self.released_by,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "release_reason": self.release_reason,
        }


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise Invalid("a hold needs a reason")
    if len(reason) > MAX_REASON:
        raise Invalid(f"the reason must be at most {MAX_REASON} characters")
    return reason.strip()


async def list_holds(store: Store, *, active_only: bool = False) -> list[Hold]:
    sql = "SELECT * FROM audit_holds"
    if active_only:
        sql += " WHERE released_at IS NULL"
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch(sql + " ORDER BY set_at, id")
    return [Hold.of(r) for r in rows]


async def set_hold(store: Store, actor: Actor, *, team: str | None, reason: str) -> Hold:
    """Hold every record (``team`` None) or one team's; recorded as an admin event."""
    if team is not None and (not team.strip() or len(team) > 200):
        raise Invalid("team must be a team name of at most 200 characters")
    hold = Hold(f"hold_{secrets.token_hex(10)}", team.strip() if team else None,
                _reason(reason), actor.id, utcnow())  # fmt: skip
    async with store._write(actor) as w:
        await w.tx.execute(
            "INSERT INTO audit_holds (id, team, reason, set_by, set_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            hold.id, hold.team, hold.reason, hold.set_by, hold.set_at,
        )  # fmt: skip
        await w.event("audit_hold.set", "audit_hold", hold.id, None, hold.to_dict())
    return hold


async def release_hold(store: Store, actor: Actor, hold_id: str, *, reason: str) -> Hold:
    """Release an active hold; recorded as an admin event with the hold before and after."""
    why = _reason(reason)
    async with store._write(actor) as w:
        row = await w.tx.fetchrow(f"SELECT * FROM audit_holds WHERE id = $1{w.tx.for_update}",
                                  hold_id)  # fmt: skip
        if row is None:
            raise NotFound(f"no legal hold {hold_id!r}")
        before = Hold.of(row)
        if not before.active:
            raise Conflict(f"legal hold {hold_id} was already released")
        after = Hold(before.id, before.team, before.reason, before.set_by, before.set_at,
                     actor.id, w.now, why)  # fmt: skip
        await w.tx.execute(
            "UPDATE audit_holds SET released_by = $2, released_at = $3, release_reason = $4"
            " WHERE id = $1",
            hold_id, after.released_by, after.released_at, after.release_reason,
        )  # fmt: skip
        await w.event("audit_hold.release", "audit_hold", hold_id, before.to_dict(),
                      after.to_dict())  # fmt: skip
    return after


# -- the purge -------------------------------------------------------------------------------------


@dataclass
class PurgeResult:
    cutoff: datetime
    dry_run: bool = False
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    #: The global hold that stopped the purge, if one did.
    held_by: str | None = None
    team_holds: list[str] = field(default_factory=list)
    #: The ``audit.purge`` records written.
    records: list[SealedRecord] = field(default_factory=list)

    @property
    def summary(self) -> str:
        cutoff = self.cutoff.isoformat()
        if self.held_by is not None:
            return f"nothing purged: legal hold {self.held_by} holds every record"
        verb = "would purge" if self.dry_run else "purged"
        text = f"{verb} {self.count} record(s) older than {cutoff}"
        if self.count:
            text += f" (seq {self.first_seq}..{self.last_seq})"
        if self.team_holds:
            text += f"; kept under legal hold: team {', '.join(self.team_holds)}"
        return text


def seq_ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending sequence numbers as inclusive ``(first, last)`` runs."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


async def _candidates(tx: Tx, cutoff: datetime, teams: list[str], after: int,
                      limit: int | None) -> list[dict[str, Any]]:  # fmt: skip
    """Sequenced, not yet purged records older than ``cutoff``, not held, ``seq > after``."""
    args: list[Any] = [cutoff, AUDIT_PURGE, after]
    held = joined = ""
    if teams:
        marks = ", ".join(f"${len(args) + 1 + i}" for i in range(len(teams)))
        args.extend(teams)
        # A model call's team, or a tool call's: each record has at most one of the two rows.
        joined = (
            " LEFT JOIN audit_llm_calls c ON c.event_id = e.event_id"
            " LEFT JOIN audit_tool_calls t ON t.event_id = e.event_id"
        )
        team = "COALESCE(c.team, t.team)"
        held = f" AND ({team} IS NULL OR {team} NOT IN ({marks}))"
    sql = (
        "SELECT l.seq, e.event_id FROM audit_leaves l"
        f" JOIN audit_events e ON e.event_id = l.event_id{joined}"
        f" WHERE e.at < $1 AND length(e.record) > 0 AND e.event_type <> $2 AND l.seq > $3{held}"
        " ORDER BY l.seq"
    )
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    return await tx.fetch(sql, *args)


async def _holds_in(tx: Tx) -> tuple[Hold | None, list[str]]:
    rows = await tx.fetch("SELECT * FROM audit_holds WHERE released_at IS NULL ORDER BY set_at")
    holds = [Hold.of(r) for r in rows]
    global_hold = next((h for h in holds if h.team is None), None)
    return global_hold, sorted({h.team for h in holds if h.team is not None})


async def purge(
    store: Store,
    *,
    retention_days: int,
    gateway: GatewayInfo,
    now: datetime | None = None,
    dry_run: bool = False,
    trigger: str = "schedule",
    batch: int = PURGE_BATCH,
) -> PurgeResult:
    """Purge what ``retention_days`` lets go (see the module docstring)."""
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    result = PurgeResult(cutoff, dry_run=dry_run)
    after = -1
    while True:
        async with store.transaction(readonly=dry_run) as tx:
            if not dry_run:
                await tx.lock(PURGE_LOCK_CLASS)
            # Read under the lock, in the batch's transaction: a hold set meanwhile counts.
            global_hold, teams = await _holds_in(tx)
            if global_hold is not None:
                result.held_by = global_hold.id
                break
            result.team_holds = teams
            rows = await _candidates(tx, cutoff, teams, after, None if dry_run else batch)
            if not rows:
                break
            seqs = [int(r["seq"]) for r in rows]
            if result.first_seq is None:
                result.first_seq = seqs[0]
            result.last_seq, result.count = seqs[-1], result.count + len(seqs)
            after = seqs[-1]
            if dry_run:
                break
            fields, at_ms = events.audit_purge(
                cutoff_ms=unix_ms(cutoff), retention_days=retention_days,
                seq_ranges=seq_ranges(seqs), count=len(seqs), team_holds=teams,
                trigger=trigger, gateway=gateway,
            )  # fmt: skip
            record = seal(fields, at_ms=at_ms)
            await _empty(tx, [r["event_id"] for r in rows])
            await insert_in(tx, [record])
            result.records.append(record)
        if len(rows) < batch:
            break
    if result.count and not dry_run:
        await store.checkpoint_wal()
        log.info("audit retention: %s", result.summary)
    return result


async def _empty(tx: Tx, event_ids: list[str]) -> None:
    """Empty the bodies of ``event_ids`` and drop their projection rows, in the purge window,
    overwriting the freed bytes where the engine can."""
    ids = [(event_id,) for event_id in event_ids]
    async with tx.erasing(), tx.purge_window():
        await rollup.subtract_calls(tx, event_ids)  # reads the records: before emptying them
        await tx.executemany(
            "UPDATE audit_events SET record = $2 WHERE event_id = $1",
            [(event_id, b"") for (event_id,) in ids],
        )
        await tx.executemany("DELETE FROM audit_llm_calls WHERE event_id = $1", ids)
        await tx.executemany("DELETE FROM audit_llm_call_data_classes WHERE event_id = $1", ids)
        await tool_rollup.subtract_tool_calls(tx, event_ids)
        await tx.executemany("DELETE FROM audit_tool_calls WHERE event_id = $1", ids)
        await tx.executemany("DELETE FROM audit_tool_call_data_classes WHERE event_id = $1", ids)


class RetentionJob:
    """The gateway's periodic purge: every ``interval_s`` with the retention days of the revision
    being served, unless it says ``purge_in_gateway: false``. ``export`` receives the
    ``audit.purge`` records written (the trail's exports)."""

    def __init__(
        self,
        store: Store,
        settings: Callable[[], AuditSettings],
        gateway: GatewayInfo,
        *,
        interval_s: float = PURGE_INTERVAL_S,
        first_delay_s: float = FIRST_PURGE_DELAY_S,
        export: Callable[[Sequence[SealedRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.gateway = gateway
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.export = export
        self.last: PurgeResult | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="custos-audit-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def run_once(self) -> PurgeResult:
        result = await purge(self.store, retention_days=self.settings().retention_days,
                             gateway=self.gateway)  # fmt: skip
        self.last = result
        if result.records and self.export is not None:
            self.export(result.records)
        return result

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                if self.settings().purge_in_gateway:
                    await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit retention purge failed; retrying at the next interval")
            await asyncio.sleep(self.interval_s)

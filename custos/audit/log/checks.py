"""What verifying the log proves, one check a function.

Each check reads the store, reports every failure it finds through ``fail`` (in the order found)
and returns what the report counts; none raises for a bad log. The checks know records only as
stored bytes, leaf hashes and ``audit.purge`` records, so they hold for any record type.
``custos.audit.compliance.verify`` runs them in order and assembles the report.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from custos.audit.log.checkpoint import Checkpoint, NoteError, Verifier, parse_checkpoint
from custos.audit.log.keys import validity_problem
from custos.audit.log.merkle import (
    Frontier,
    consistency_proof,
    leaf_hash,
    needed_for_consistency,
    verify_consistency,
)
from custos.audit.log.sequencer import read_nodes
from custos.audit.records.record import AUDIT_PURGE
from custos.state.models import utcnow
from custos.state.store import Row, Store, _dt

Fail = Callable[[str], None]
#: ``seq`` ranges, first and last inclusive, merged and sorted.
SeqRanges = list[tuple[int, int]]


async def each_event(store: Store, event_type: str, columns: str) -> AsyncIterator[Any]:
    """``columns`` of every stored record of ``event_type`` in insertion order, read 1,000
    rows at a time."""
    after = 0
    while True:
        async with store.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                f"SELECT ingest_id, {columns} FROM audit_events WHERE event_type = $1"
                " AND ingest_id > $2 ORDER BY ingest_id LIMIT 1000",
                event_type,
                after,
            )
        for row in rows:
            yield row
        if len(rows) < 1000:
            return
        after = int(rows[-1]["ingest_id"])


# -- checkpoints ------------------------------------------------------------------------------


async def check_checkpoints(
    store: Store, verifiers: list[Verifier], fail: Fail
) -> tuple[int, list[Checkpoint]]:
    """Proves the stored checkpoints one signed chain: each note signed by a key valid at its
    time, the stored columns equal to the note, ``prev`` the hash of the previous note, ids
    contiguous from 0 and sizes growing. Returns how many are stored and the valid ones."""
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM audit_checkpoints ORDER BY id")
    valid: list[Checkpoint] = []
    prev_hash, prev_size = bytes(32), -1
    for expected_id, row in enumerate(rows):
        try:
            cp = _chained_checkpoint(row, expected_id, verifiers, prev_hash, prev_size)
        except NoteError as exc:
            fail(f"checkpoint #{int(row['id'])}: {exc}")
            prev_hash = hashlib.sha256(str(row["note"]).encode()).digest()
            continue
        valid.append(cp)
        prev_hash, prev_size = cp.note_hash, cp.size
    return len(rows), valid


def _chained_checkpoint(
    row: Row, expected_id: int, verifiers: list[Verifier], prev_hash: bytes, prev_size: int
) -> Checkpoint:
    """The stored checkpoint ``row``, parsed and checked against its predecessor (whose note
    hashes to ``prev_hash``, of size ``prev_size``). Raises ``NoteError`` saying what is wrong."""
    if int(row["id"]) != expected_id:
        raise NoteError(f"checkpoint #{expected_id} is missing")
    cp = signed_checkpoint(row["note"], verifiers)
    if (cp.size, cp.root) != (int(row["size"]), bytes(row["root"])):
        raise NoteError("the stored size or root differs from the signed note")
    if bytes(row["note_hash"]) != cp.note_hash:
        raise NoteError("the stored note hash is wrong")
    if cp.prev != prev_hash:
        raise NoteError("prev does not match the previous checkpoint (chain broken)")
    if cp.size <= prev_size:
        raise NoteError("the tree size did not grow")
    return cp


def signed_checkpoint(note: str, verifiers: list[Verifier]) -> Checkpoint:
    """``note`` parsed, with a signature by one of ``verifiers`` valid at its time. Raises
    ``NoteError``."""
    cp = parse_checkpoint(note, verifiers)
    problem = validity_problem(cp)
    if problem is not None:
        raise NoteError(problem)
    return cp


def parse_exported(notes: Sequence[str], verifiers: list[Verifier], fail: Fail) -> list[Checkpoint]:
    """Proves each exported checkpoint (kept outside the database) validly signed by a key
    valid at its time; returns those that are."""
    parsed: list[Checkpoint] = []
    for index, note in enumerate(notes):
        try:
            parsed.append(signed_checkpoint(note, verifiers))
        except NoteError as exc:
            fail(f"exported checkpoint {index + 1}: {exc}")
    return parsed


# -- the leaves -------------------------------------------------------------------------------


async def purge_cover(store: Store, fail: Fail) -> SeqRanges:
    """The ``seq`` ranges the ``audit.purge`` records say they emptied, merged and sorted. A
    purge record whose bytes do not match its leaf hash accounts for nothing."""
    ranges: list[tuple[int, int]] = []
    async for row in each_event(store, AUDIT_PURGE, "event_id, record, leaf_hash"):
        body = bytes(row["record"])
        try:
            if leaf_hash(body) != bytes(row["leaf_hash"]):
                raise ValueError("its bytes do not match its leaf hash (modified)")
            for first, last in orjson.loads(body)["purge.seq_ranges"]:
                ranges.append((int(first), int(last)))
        except (ValueError, KeyError, TypeError) as exc:
            fail(f"purge record {row['event_id']}: {exc}")
    merged: SeqRanges = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


def _covers(ranges: SeqRanges, seq: int) -> bool:
    index = bisect.bisect_right(ranges, (seq, float("inf"))) - 1
    return index >= 0 and ranges[index][0] <= seq <= ranges[index][1]


def time_window(since: datetime | None, until: datetime | None) -> list[Any]:
    """``[since, until)`` as query arguments, either end open-ended; empty for no range."""
    if since is None and until is None:
        return []
    return [since or datetime(1970, 1, 1, tzinfo=UTC), until or datetime(9999, 12, 31, tzinfo=UTC)]


@dataclass
class LeafScan:
    """What ``check_leaves`` found: the log's size, the roots at the sizes asked for, and the
    records whose bodies it checked."""

    size: int = 0
    roots: dict[int, bytes] = field(default_factory=dict)
    #: Records whose bodies were checked (in the time range, not purged), and the valid ones.
    checked: int = 0
    valid: int = 0
    purged: int = 0


async def check_leaves(
    store: Store,
    fail: Fail,
    *,
    purged: SeqRanges,
    roots_at: Iterable[int],
    window: list[Any],
    page_size: int,
    progress: Callable[[int], None] | None = None,
) -> LeafScan:
    """Proves every sequenced record in ``seq`` order: ``seq`` contiguous from 0, the record
    present, its bytes (when its time is in ``window``) hashing to its leaf, its stored leaf
    hash and the stored tree's level-0 node equal to the leaf. A body emptied counts as purged
    when ``purged`` covers its ``seq``. Recomputes the tree's root at each size in
    ``roots_at``, for the checkpoints. ``progress`` is told the leaves read after each page."""
    wanted = set(roots_at)
    scan = LeafScan(roots={0: Frontier().root()} if 0 in wanted else {})
    frontier = Frontier()
    after = -1
    while True:
        page = await _leaf_page(store, after, page_size, window)
        for row in page:
            seq, stored = int(row["seq"]), bytes(row["leaf_hash"])
            if seq != frontier.size:
                fail(f"record seq {frontier.size} is missing (the next is seq {seq})")
            _tally(scan, row, _leaf_problem(row, purged), fail)
            frontier.append(stored)
            if frontier.size in wanted:
                scan.roots[frontier.size] = frontier.root()
        if progress is not None:
            progress(frontier.size)
        if len(page) < page_size:
            break
        after = int(page[-1]["seq"])
    scan.size = frontier.size
    return scan


async def _leaf_page(store: Store, after: int, page_size: int, window: list[Any]) -> list[Row]:
    """The leaves after ``seq`` ``after`` with their records and level-0 nodes; a record's body
    only when its time is in ``window`` (``in_range`` says which)."""
    if window:
        in_range = "e.at >= $3 AND e.at < $4"
        body = f"CASE WHEN {in_range} THEN e.record END AS record,"
        body += f" CASE WHEN {in_range} THEN 1 ELSE 0 END AS in_range"
    else:
        body = "e.record, 1 AS in_range"
    async with store.transaction(readonly=True) as tx:
        return await tx.fetch(
            "SELECT l.seq, l.event_id, l.leaf_hash, e.event_id AS stored_event,"
            f" e.leaf_hash AS event_hash, n.hash AS node, {body} FROM audit_leaves l"
            " LEFT JOIN audit_events e ON e.event_id = l.event_id"
            " LEFT JOIN audit_merkle_nodes n ON n.level = 0 AND n.idx = l.seq"
            " WHERE l.seq > $1 ORDER BY l.seq LIMIT $2",
            after,
            page_size,
            *window,
        )


def _leaf_problem(row: Row, purged: SeqRanges) -> tuple[str | None, bool]:
    """What is wrong with one leaf (``None`` when nothing), and whether its body was purged."""
    stored = bytes(row["leaf_hash"])
    checked = bool(row["in_range"])
    if row["stored_event"] is None:
        return "its record is missing", False
    is_purged = False
    if checked and not row["record"]:
        if not _covers(purged, int(row["seq"])):
            return "its body is gone and no audit.purge record accounts for it", False
        is_purged = True
    elif checked and leaf_hash(bytes(row["record"])) != stored:
        return "the record's bytes do not match its leaf hash (modified)", False
    if bytes(row["event_hash"]) != stored:
        return "the record's stored leaf hash differs", is_purged
    if row["node"] is None or bytes(row["node"]) != stored:
        return "the leaf differs from the stored tree (moved or inserted)", is_purged
    return None, is_purged


def _tally(scan: LeafScan, row: Row, found: tuple[str | None, bool], fail: Fail) -> None:
    """Count one leaf: purged, or (when its body was checked or it failed) valid or failed."""
    problem, is_purged = found
    if is_purged and problem is None:
        scan.purged += 1
    elif row["in_range"] or problem:
        scan.checked += 1
        if problem:
            fail(f"record seq {int(row['seq'])} ({row['event_id']}): {problem}")
        else:
            scan.valid += 1


# -- the checkpoints against the leaves -------------------------------------------------------


def check_roots(checkpoints: list[Checkpoint], scan: LeafScan, fail: Fail) -> None:
    """Proves each valid checkpoint's root the root of the records at its size, and that none
    covers more records than the log holds (truncation)."""
    for cp in checkpoints:
        if cp.size > scan.size:
            fail(f"checkpoint of size {cp.size}: the log holds only {scan.size} records "
                 "(truncated)")  # fmt: skip
        elif scan.roots.get(cp.size) != cp.root:
            fail(f"checkpoint of size {cp.size}: its root does not match the records")


async def check_consistency(
    store: Store, checkpoints: list[Checkpoint], log_size: int, fail: Fail
) -> None:
    """Proves each valid checkpoint an append-only extension of the one before it: a
    consistency proof built from the stored nodes verifies between them."""
    for old, new in itertools.pairwise(checkpoints):
        if new.size <= log_size and not await _consistent(store, old, new, log_size):
            fail(f"checkpoints of sizes {old.size} and {new.size} are not consistent")


async def _consistent(store: Store, old: Checkpoint, new: Checkpoint, log_size: int) -> bool:
    """Whether the stored nodes prove ``new`` extends ``old``."""
    if new.size > log_size:
        return False
    async with store.transaction(readonly=True) as tx:
        nodes = await read_nodes(tx, needed_for_consistency(old.size, new.size))
    try:
        proof = consistency_proof(old.size, new.size, lambda lv, ix: nodes[(lv, ix)])
    except KeyError:
        return False
    return verify_consistency(old.size, new.size, old.root, new.root, proof)


async def check_exported(
    store: Store,
    exported: list[Checkpoint],
    checkpoints: list[Checkpoint],
    scan: LeafScan,
    fail: Fail,
) -> int:
    """Proves the history the exported checkpoints saw is the history stored: each equal to the
    stored checkpoint of its size if any, its root the recomputed one, and the latest stored
    checkpoint consistent with it. This catches a rewrite re-signed with the real key. Returns
    how many were checked."""
    stored_by_size = {c.size: c for c in checkpoints}
    latest = checkpoints[-1] if checkpoints else None
    for cp in exported:
        twin = stored_by_size.get(cp.size)
        if cp.size > scan.size:
            fail(f"exported checkpoint of size {cp.size}: the log holds only {scan.size} "
                 "records (truncated)")  # fmt: skip
        elif twin is not None and twin.root != cp.root:
            fail(f"exported checkpoint of size {cp.size} differs from the stored one "
                 "(history rewritten)")  # fmt: skip
        elif scan.roots.get(cp.size) != cp.root:
            fail(f"exported checkpoint of size {cp.size} is not consistent with the log "
                 "(history rewritten)")  # fmt: skip
        elif (latest is not None and latest.size >= cp.size
              and not await _consistent(store, cp, latest, scan.size)):  # fmt: skip
            fail(f"exported checkpoint of size {cp.size} is not consistent with the latest "
                 f"checkpoint (size {latest.size})")  # fmt: skip
    return len(exported)


# -- records waiting --------------------------------------------------------------------------


async def check_signed(
    store: Store,
    checkpoints: list[Checkpoint],
    log_size: int,
    *,
    keyed: bool,
    allow_unsigned: bool,
    delay_s: float,
    fail: Fail,
) -> int:
    """Proves a log that should be signed is: records with no signing key ever registered
    (``keyed`` false) fail unless ``allow_unsigned``; with a key registered, records past the
    latest checkpoint fail once the first of them is older than ``delay_s`` (the gateways
    stopped signing). Returns how many records no checkpoint covers yet."""
    signed = checkpoints[-1].size if checkpoints else 0
    unsigned = max(log_size - signed, 0)
    if unsigned:
        problem = await _unsigned_problem(store, signed, unsigned, keyed, allow_unsigned, delay_s)
        if problem is not None:
            fail(problem)
    return unsigned


async def _unsigned_problem(
    store: Store, signed: int, unsigned: int, keyed: bool, allowed: bool, delay_s: float
) -> str | None:
    """Why records past the latest checkpoint (seq ``signed`` on) are a failure, if they are:
    no signing key was ever registered (unless ``allowed``), or the first of them was stored
    more than ``delay_s`` ago although a key was (the gateway stopped signing)."""
    if not keyed:
        if allowed:
            return None
        return (f"the log is not signed: {unsigned} record(s) and no signing key was ever "
                "registered (set audit.signing_key, e.g. from custos audit keys generate; "
                "--allow-unsigned accepts an unsigned log)")  # fmt: skip
    async with store.transaction(readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT e.received_at FROM audit_leaves l JOIN audit_events e"
            " ON e.event_id = l.event_id WHERE l.seq = $1",
            signed,
        )
    if row is None or _dt(row["received_at"]) > utcnow() - timedelta(seconds=delay_s):
        return None
    return (f"{unsigned} record(s) from seq {signed} on are not covered by a signed checkpoint "
            f"after {delay_s:g}s: the gateways no longer sign (is audit.signing_key still "
            "configured?)")  # fmt: skip


async def check_sequenced(store: Store, cutoff: datetime, delay_s: float, fail: Fail) -> int:
    """Proves the sequencer keeps up: no record received before ``cutoff`` (``delay_s`` ago)
    is still waiting for its leaf. Returns how many are."""
    async with store.transaction(readonly=True) as tx:
        late = await tx.fetch(
            "SELECT e.event_id FROM audit_events e WHERE e.received_at < $1 AND NOT EXISTS"
            " (SELECT 1 FROM audit_leaves l WHERE l.event_id = e.event_id)"
            " ORDER BY e.ingest_id",
            cutoff,
        )
    if late:
        fail(f"{len(late)} record(s) not sequenced after {delay_s:g}s "
             f"(first: {late[0]['event_id']})")  # fmt: skip
    return len(late)

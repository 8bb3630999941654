"""``custos audit verify``: prove the audit log intact, or name the first thing that is not.

Checks, in order (``verify_log``):

1. every stored checkpoint: its note's signature by a known key valid at its time, the stored
   columns equal to the note, ``prev`` equal to the SHA-256 of the previous note, ids contiguous
   and sizes growing;
2. every sequenced record in ``seq`` order: ``seq`` contiguous from 0, the record present, its
   leaf hash recomputed from the stored bytes equal to the leaf's and to the stored tree's
   level-0 node; the tree recomputed from the leaves has each checkpoint's root at its size.
   A record whose body was emptied counts as *purged* when an ``audit.purge`` record (itself
   intact) names its ``seq``; an emptied body no purge record accounts for is a failure;
3. no checkpoint covers more records than the log holds (truncation);
4. a consistency proof from the stored nodes between successive checkpoints;
5. every exported checkpoint (``--checkpoints FILE``): validly signed, equal to the stored one
   of its size if any, its root equal to the recomputed one, and a consistency proof to the
   latest stored checkpoint. This is what catches a rewrite re-signed with the real key;
6. no record waits to be sequenced for longer than ``pending_delay_s``;
7. a log that should be signed is: records with no signing key ever registered fail (unless
   ``allow_unsigned``: an operator's choice to run unsigned), and with a key registered, records
   past the latest checkpoint fail once the first of them is older than ``unsigned_delay_s``
   (the gateways stopped signing);
8. the tables derived from records, which reports and the config history read:
   ``custos.audit.derived`` checks the query projections and the stored config texts against
   the records they came from.

With a time range (``--from``/``--to``: ``since``/``until``) only the bodies of records whose
``time_start`` falls in ``[since, until)`` are re-hashed and counted; every other check runs in
full, since the roots need every leaf hash: checkpoints (1, 3-5), sequence contiguity, each
leaf against the record's stored leaf hash and the stored tree, the roots, and records waiting
to be sequenced (6).

Verifier keys come from ``--public-key`` (vkeys, obtained out of band) or else from the
database's key table (weaker: whoever rewrote the database could have added a key; the
report says so). A checkpoint (stored or exported) counts as signed when at least one of its
verified signatures is by a key valid at the checkpoint's time. A vkey given out of band
carries no validity period of its own: it takes the one the key table records for the same key
(same name and public key), so a key closed by ``custos audit keys retire`` no longer vouches
for checkpoints dated at or after its ``not_after``, whichever way the verifier got it. The
trust stays with the vkey: the table can only narrow it (someone who rewrote the database
could at worst make checkpoints fail, or reopen a retired key, which leaves the vkey as
trusted as it was before the retirement); a vkey the table does not know is valid at any time.
The result's ``summary`` reads
``N/N checkpoints valid; M/M records valid; P purged``; ``failures`` are in order found, the
first being the one the CLI names.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from custos import private
from custos.audit.checkpoint import (
    Checkpoint,
    NoteError,
    Verifier,
    generate_signing_key,
    load_verifiers,
    now_ms,
    parse_checkpoint,
    read_export,
)
from custos.audit.derived import check_config_texts, check_projections, each_event
from custos.audit.merkle import (
    Frontier,
    consistency_proof,
    leaf_hash,
    needed_for_consistency,
    verify_consistency,
)
from custos.audit.record import AUDIT_PURGE
from custos.audit.sequencer import read_nodes
from custos.config.audit import AuditSettings
from custos.state.models import utcnow
from custos.state.store import Store, _dt

#: How long records may wait past the latest checkpoint, when a signing key is registered,
#: before verify takes it that the gateways stopped signing (checkpoints come every
#: ``checkpoint_interval_s``, 10 s by default, at most an hour).
UNSIGNED_DELAY_S = 3900.0
#: Leaves read per query. Each page is then hashed on the event loop (~5 µs a record), so the
#: admin API passes a smaller one (``API_PAGE``) to keep each stretch short.
PAGE = 5000
API_PAGE = 1000


@dataclass
class Report:
    checkpoints_total: int = 0
    checkpoints_valid: int = 0
    #: Records whose bodies were checked (in the time range, not purged).
    records_total: int = 0
    records_valid: int = 0
    purged: int = 0
    #: The number of leaves in the log (all of them are read for the roots).
    log_size: int = 0
    since: datetime | None = None
    until: datetime | None = None
    unsigned: int = 0
    pending_late: int = 0
    exported_checked: int = 0
    #: llm.call records whose projection rows were compared; config texts checked.
    projections_checked: int = 0
    config_texts_checked: int = 0
    keys_from_database: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        text = (
            f"{self.checkpoints_valid}/{self.checkpoints_total} checkpoints valid; "
            f"{self.records_valid}/{self.records_total} records valid; {self.purged} purged"
        )
        if self.unsigned:
            text += f"; {self.unsigned} not yet checkpointed"
        if self.exported_checked:
            text += f"; {self.exported_checked} exported checkpoint(s) checked"
        text += (f"; {self.projections_checked} projection(s) and {self.config_texts_checked} "
                 "config text(s) checked")  # fmt: skip
        if self.pending_late:
            text += f"; {self.pending_late} pending past the delay"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary,
            "checkpoints": {"total": self.checkpoints_total, "valid": self.checkpoints_valid},
            "records": {
                "total": self.records_total,
                "valid": self.records_valid,
                "purged": self.purged,
                "unsigned": self.unsigned,
                "log_size": self.log_size,
            },
            "range": {
                "from": self.since.isoformat() if self.since else None,
                "to": self.until.isoformat() if self.until else None,
            },
            "pending_late": self.pending_late,
            "exported_checked": self.exported_checked,
            "keys_from_database": self.keys_from_database,
            "failures": self.failures,
        }


async def _db_verifiers(store: Store) -> list[Verifier]:
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM audit_signing_keys ORDER BY not_before")
    return [
        Verifier(r["key_name"], bytes(r["public_key"]), _dt(r["not_before"]), _dt(r["not_after"]))
        for r in rows
    ]


def with_recorded_validity(given: list[Verifier], recorded: list[Verifier]) -> list[Verifier]:
    """The out-of-band verifiers ``given``, each narrowed to the validity period ``recorded``
    (the key table) holds for the same name and public key; unknown keys are left as given.
    Matching is on the whole public key, not the 4-byte key ID, which can be made to collide."""
    table = {(v.name, v.public_key): v for v in recorded}
    narrowed: list[Verifier] = []
    for key in given:
        row = table.get((key.name, key.public_key))
        if row is None:
            narrowed.append(key)
            continue
        starts = [t for t in (key.not_before, row.not_before) if t is not None]
        ends = [t for t in (key.not_after, row.not_after) if t is not None]
        narrowed.append(Verifier(key.name, key.public_key, max(starts, default=None),
                                 min(ends, default=None)))  # fmt: skip
    return narrowed


def _validity_problem(checkpoint: Checkpoint) -> str | None:
    """Why no verified signature of ``checkpoint`` counts (``None`` when one does): each signing
    key must be valid at the checkpoint's time, and one that is suffices."""
    at = checkpoint.at
    if any(v.valid_at(at) for v in checkpoint.keys):
        return None
    reasons = [
        f"{v.name} ({v.id.hex()}) retired at {v.not_after.isoformat()}"
        if v.not_after is not None and at >= v.not_after
        else f"{v.name} ({v.id.hex()}) valid only from "
        f"{v.not_before.isoformat() if v.not_before else '?'}"
        for v in checkpoint.keys
    ]
    return f"signed at {checkpoint.time} only by keys outside their validity: {'; '.join(reasons)}"


class RetireError(Exception):
    """``retire_key`` refused: the message says why."""


async def retire_key(store: Store, name: str, key_id: str | None = None) -> Verifier:
    """Close the validity of the key ``name`` (and ``key_id``, hex, when several share the
    name): ``not_after`` = now, the one change the table's guard allows. From then on verify
    counts a checkpoint dated later only through another key's signature. Refuses (with
    ``RetireError``) an unknown key, a key already retired, and the last key still valid: a
    log with no valid key could not be signed at all. Returns the key as retired."""
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""
    async with store.transaction() as tx:
        rows = await tx.fetch(f"SELECT * FROM audit_signing_keys ORDER BY not_before{lock}")
        keys = [
            (str(r["key_id"]), Verifier(r["key_name"], bytes(r["public_key"]),
                                        _dt(r["not_before"]), _dt(r["not_after"])))
            for r in rows
        ]  # fmt: skip
        key = _choose_key(keys, name, key_id)
        if key.not_after is not None:
            raise RetireError(f"key {name} ({key.id.hex()}) was already retired at "
                              f"{key.not_after.isoformat()}")  # fmt: skip
        if not any(v.not_after is None and v != key for _, v in keys):
            raise RetireError(
                f"key {name} ({key.id.hex()}) is the last key still valid: configure the new "
                "signing key and start the gateway with it (which registers it) first"
            )
        now = now_ms()
        updated = await tx.execute(
            "UPDATE audit_signing_keys SET not_after = $1"
            " WHERE key_name = $2 AND key_id = $3 AND not_after IS NULL",
            now,
            name,
            key.id.hex(),
        )
        if updated != 1:
            raise RetireError(f"key {name} ({key.id.hex()}) changed meanwhile; try again")
    return Verifier(key.name, key.public_key, key.not_before, now)


def _choose_key(keys: list[tuple[str, Verifier]], name: str, key_id: str | None) -> Verifier:
    """The one key named ``name`` (with ``key_id`` when given); when several share the name
    and no ID is given, the one still valid if exactly one is."""
    named = [v for stored_id, v in keys
             if v.name == name and (key_id is None or stored_id == key_id.lower())]  # fmt: skip
    if not named:
        known = ", ".join(f"{v.name} ({i})" for i, v in keys) or "none"
        which = f"{name} ({key_id})" if key_id else name
        raise RetireError(f"no audit signing key {which}; the keys are: {known}")
    if len(named) > 1:
        still_valid = [v for v in named if v.not_after is None]
        if len(still_valid) != 1:
            ids = ", ".join(v.id.hex() for v in named)
            raise RetireError(f"several keys are named {name}: pass --key-id (one of {ids})")
        return still_valid[0]
    return named[0]


async def verify_log(
    store: Store,
    *,
    verifiers: list[Verifier] | None = None,
    exported: list[str] = (),  # type: ignore[assignment]
    pending_delay_s: float = 60.0,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = PAGE,
    allow_unsigned: bool = False,
    unsigned_delay_s: float = UNSIGNED_DELAY_S,
) -> Report:
    """Run every check of the module docstring; never raises for a bad log. ``since``/``until``
    narrow the bodies checked to records whose time is in ``[since, until)``."""
    report = Report(since=since, until=until)
    fail = report.failures.append
    registered = await _db_verifiers(store)
    if verifiers is None:
        verifiers = registered
        report.keys_from_database = True
    else:
        verifiers = with_recorded_validity(verifiers, registered)

    # 1. checkpoints
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM audit_checkpoints ORDER BY id")
    report.checkpoints_total = len(rows)
    checkpoints: list[Checkpoint] = []
    prev_hash, prev_size = bytes(32), -1
    for expected_id, row in enumerate(rows):
        cid = int(row["id"])
        try:
            if cid != expected_id:
                raise NoteError(f"checkpoint #{expected_id} is missing")
            cp = parse_checkpoint(row["note"], verifiers)
            problem = _validity_problem(cp)
            if problem is not None:
                raise NoteError(problem)
            if (cp.size, cp.root) != (int(row["size"]), bytes(row["root"])):
                raise NoteError("the stored size or root differs from the signed note")
            if bytes(row["note_hash"]) != cp.note_hash:
                raise NoteError("the stored note hash is wrong")
            if cp.prev != prev_hash:
                raise NoteError("prev does not match the previous checkpoint (chain broken)")
            if cp.size <= prev_size:
                raise NoteError("the tree size did not grow")
        except NoteError as exc:
            fail(f"checkpoint #{cid}: {exc}")
            prev_hash = hashlib.sha256(str(row["note"]).encode()).digest()
            continue
        checkpoints.append(cp)
        report.checkpoints_valid += 1
        prev_hash, prev_size = cp.note_hash, cp.size

    exported_cps: list[Checkpoint] = []
    for index, note in enumerate(exported):
        try:
            cp = parse_checkpoint(note, verifiers)
            problem = _validity_problem(cp)
            if problem is not None:
                raise NoteError(problem)
            exported_cps.append(cp)
        except NoteError as exc:
            fail(f"exported checkpoint {index + 1}: {exc}")
    wanted = {c.size for c in checkpoints} | {c.size for c in exported_cps}
    roots: dict[int, bytes] = {0: Frontier().root()} if 0 in wanted else {}

    # 2. records
    purged_ranges = await _purge_cover(store, fail)
    ranged = since is not None or until is not None
    window: list[Any] = []
    if ranged:
        window = [since or datetime(1970, 1, 1, tzinfo=UTC),
                  until or datetime(9999, 12, 31, tzinfo=UTC)]  # fmt: skip
        in_range = "e.at >= $3 AND e.at < $4"
        body = f"CASE WHEN {in_range} THEN e.record END AS record,"
        body += f" CASE WHEN {in_range} THEN 1 ELSE 0 END AS in_range"
    else:
        body = "e.record, 1 AS in_range"
    frontier = Frontier()
    after = -1
    while True:
        async with store.transaction(readonly=True) as tx:
            page = await tx.fetch(
                "SELECT l.seq, l.event_id, l.leaf_hash, e.event_id AS stored_event,"
                f" e.leaf_hash AS event_hash, n.hash AS node, {body} FROM audit_leaves l"
                " LEFT JOIN audit_events e ON e.event_id = l.event_id"
                " LEFT JOIN audit_merkle_nodes n ON n.level = 0 AND n.idx = l.seq"
                " WHERE l.seq > $1 ORDER BY l.seq LIMIT $2",
                after,
                page_size,
                *window,
            )
        for row in page:
            seq, stored = int(row["seq"]), bytes(row["leaf_hash"])
            if seq != frontier.size:
                fail(f"record seq {frontier.size} is missing (the next is seq {seq})")
            checked = bool(row["in_range"])
            problem = None
            purged = False
            if row["stored_event"] is None:
                problem = "its record is missing"
            elif checked and not row["record"]:
                if _covers(purged_ranges, seq):
                    purged = True
                else:
                    problem = "its body is gone and no audit.purge record accounts for it"
            elif checked and leaf_hash(bytes(row["record"])) != stored:
                problem = "the record's bytes do not match its leaf hash (modified)"
            if problem is None:
                if bytes(row["event_hash"]) != stored:
                    problem = "the record's stored leaf hash differs"
                elif row["node"] is None or bytes(row["node"]) != stored:
                    problem = "the leaf differs from the stored tree (moved or inserted)"
            if purged and problem is None:
                report.purged += 1
            elif checked or problem:
                report.records_total += 1
                if problem:
                    fail(f"record seq {seq} ({row['event_id']}): {problem}")
                else:
                    report.records_valid += 1
            frontier.append(stored)
            if frontier.size in wanted:
                roots[frontier.size] = frontier.root()
        if len(page) < page_size:
            break
        after = int(page[-1]["seq"])
    report.log_size = frontier.size

    # 2b/3. checkpoint roots against the recomputed tree; truncation
    for cp in checkpoints:
        if cp.size > frontier.size:
            fail(f"checkpoint of size {cp.size}: the log holds only {frontier.size} records "
                 "(truncated)")  # fmt: skip
        elif roots.get(cp.size) != cp.root:
            fail(f"checkpoint of size {cp.size}: its root does not match the records")
    latest = checkpoints[-1] if checkpoints else None
    report.unsigned = max(frontier.size - (latest.size if latest else 0), 0)
    if report.unsigned:
        signed = latest.size if latest else 0
        problem = await _unsigned_problem(store, signed, report.unsigned, bool(registered),
                                          allow_unsigned, unsigned_delay_s)  # fmt: skip
        if problem is not None:
            fail(problem)

    # 4. consistency between successive checkpoints, from the stored nodes
    async def consistent(old: Checkpoint, new: Checkpoint) -> bool:
        if new.size > frontier.size:
            return False
        async with store.transaction(readonly=True) as tx:
            nodes = await read_nodes(tx, needed_for_consistency(old.size, new.size))
        try:
            proof = consistency_proof(old.size, new.size, lambda lv, ix: nodes[(lv, ix)])
        except KeyError:
            return False
        return verify_consistency(old.size, new.size, old.root, new.root, proof)

    for old, new in itertools.pairwise(checkpoints):
        if new.size <= frontier.size and not await consistent(old, new):
            fail(f"checkpoints of sizes {old.size} and {new.size} are not consistent")

    # 5. exported checkpoints
    stored_by_size = {c.size: c for c in checkpoints}
    for cp in exported_cps:
        report.exported_checked += 1
        twin = stored_by_size.get(cp.size)
        if cp.size > frontier.size:
            fail(f"exported checkpoint of size {cp.size}: the log holds only {frontier.size} "
                 "records (truncated)")  # fmt: skip
        elif twin is not None and twin.root != cp.root:
            fail(f"exported checkpoint of size {cp.size} differs from the stored one "
                 "(history rewritten)")  # fmt: skip
        elif roots.get(cp.size) != cp.root:
            fail(f"exported checkpoint of size {cp.size} is not consistent with the log "
                 "(history rewritten)")  # fmt: skip
        elif latest is not None and latest.size >= cp.size and not await consistent(cp, latest):
            fail(f"exported checkpoint of size {cp.size} is not consistent with the latest "
                 f"checkpoint (size {latest.size})")  # fmt: skip

    # 6. records not sequenced in time
    cutoff = utcnow() - timedelta(seconds=pending_delay_s)
    async with store.transaction(readonly=True) as tx:
        late = await tx.fetch(
            "SELECT e.event_id FROM audit_events e WHERE e.received_at < $1 AND NOT EXISTS"
            " (SELECT 1 FROM audit_leaves l WHERE l.event_id = e.event_id)"
            " ORDER BY e.ingest_id",
            cutoff,
        )
    report.pending_late = len(late)
    if late:
        fail(f"{len(late)} record(s) not sequenced after {pending_delay_s:g}s "
             f"(first: {late[0]['event_id']})")  # fmt: skip

    # 8. the tables derived from the records: query projections and config texts
    page = min(page_size, API_PAGE)
    report.projections_checked = await check_projections(store, fail, window=window,
                                                         page_size=page)  # fmt: skip
    report.config_texts_checked = await check_config_texts(store, fail, cutoff=cutoff)
    return report


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


async def _purge_cover(store: Store, fail: Any) -> list[tuple[int, int]]:
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
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


def _covers(ranges: list[tuple[int, int]], seq: int) -> bool:
    index = bisect.bisect_right(ranges, (seq, float("inf"))) - 1
    return index >= 0 and ranges[index][0] <= seq <= ranges[index][1]


def verify_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """``--from``/``--to`` (either may be left out) as ``[since, until)``: dates are whole UTC
    days, ``to`` inclusive; RFC 3339 times are exact, ``to`` exclusive. Raises ``ValueError``."""
    from custos.audit.report import ReportError, parse_range

    if since is None and until is None:
        return None, None
    try:
        start, end = parse_range(since or "1970-01-01", until or "9999-12-30")
    except ReportError as exc:
        raise ValueError(str(exc)) from None
    return (start if since is not None else None), (end if until is not None else None)


# -- the CLI ---------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Any:
    from custos.admin_cli import _store_only
    from custos.state.backends import open_store

    return open_store(_store_only(args), migrate=False)


async def _verify_main(args: argparse.Namespace) -> int:
    verifiers = None
    if args.public_key:
        verifiers = [v for spec in args.public_key for v in load_verifiers(spec)]
    exported = read_export(args.checkpoints) if args.checkpoints else []
    try:
        since, until = verify_range(args.from_, args.to)
    except ValueError as exc:
        print(f"custos: {exc}", file=sys.stderr)
        return 2
    store = await _open(args)
    try:
        report = await verify_log(store, verifiers=verifiers, exported=exported,
                                  pending_delay_s=args.pending_delay, since=since,
                                  until=until, allow_unsigned=args.allow_unsigned,
                                  unsigned_delay_s=args.unsigned_delay)  # fmt: skip
    finally:
        await store.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.summary)
        if report.keys_from_database:
            print("note: keys read from the database; pass --public-key to trust your own copy",
                  file=sys.stderr)  # fmt: skip
    if not report.ok:
        print(f"custos: FAILED: {report.failures[0]}", file=sys.stderr)
        for more in report.failures[1:20]:
            print(f"  also: {more}", file=sys.stderr)
        return 1
    return 0


async def _retire_main(args: argparse.Namespace) -> int:
    store = await _open(args)
    try:
        key = await retire_key(store, args.name, args.key_id)
    except RetireError as exc:
        print(f"custos: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    assert key.not_after is not None
    print(f"retired {key.vkey}  valid {key.not_before.isoformat() if key.not_before else '?'} "
          f".. {key.not_after.isoformat()}")  # fmt: skip
    print("checkpoints signed only by it and dated from now on fail verify")
    return 0


def _generate_main(args: argparse.Namespace) -> int:
    try:
        signer = generate_signing_key(Path(args.file), args.name, force=args.force)
    except FileExistsError:
        print(f"custos: refusing: {args.file} exists (--force replaces it; checkpoints it "
              "signed then verify only with its old public key)", file=sys.stderr)  # fmt: skip
        return 1
    except OSError as exc:
        print(f"custos: {exc}", file=sys.stderr)
        return 1
    print(signer.verifier.vkey)
    print(f"wrote {args.file}; set audit.signing_key: {args.file} and signing_key_name: "
          f"{args.name}, and give auditors the public key above", file=sys.stderr)  # fmt: skip
    return 0


async def _keys_main(args: argparse.Namespace) -> int:
    store = await _open(args)
    try:
        keys = await _db_verifiers(store)
    finally:
        await store.close()
    for key in keys:
        until = key.not_after.isoformat() if key.not_after else "(current)"
        since = key.not_before.isoformat() if key.not_before else "?"
        print(f"{key.vkey}  valid {since} .. {until}")
    return 0


async def _prove_main(args: argparse.Namespace) -> int:
    from custos.audit.proof import ProofError, prove_event

    store = await _open(args)
    try:
        document = await prove_event(store, args.event)
    except ProofError as exc:
        print(f"custos: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.output:
        with private.open_binary(args.output, "wb") as out:
            out.write(text.encode())
    else:
        sys.stdout.write(text)
    return 0


def _check_proof_main(args: argparse.Namespace) -> int:
    from custos.audit.proof import ProofError, check_proof

    try:
        with open(args.file, encoding="utf-8") as source:
            document = json.load(source)
        verifiers = [v for spec in args.public_key for v in load_verifiers(spec)]
        cp = check_proof(document, verifiers)
    except (OSError, ValueError, ProofError) as exc:
        print(f"custos: proof REJECTED: {exc}", file=sys.stderr)
        return 1
    root = base64.b64encode(cp.root).decode()
    print(f"proof OK: record seq {document['seq']} is in the log of size {cp.size} "
          f"(root {root}), signed by {', '.join(cp.signers)}")  # fmt: skip
    return 0


def register(commands: Any) -> None:
    """Add ``verify``, ``keys``, ``prove`` and ``check-proof`` to the ``audit`` commands."""
    from custos.admin_cli import _store_args

    verify = commands.add_parser(
        "verify", help="prove the audit log intact (reads the store directly)",
        description="Check checkpoint signatures and chain, recompute every leaf and root, "
        "check consistency between checkpoints and against exported ones, sequence contiguity "
        "and records waiting to be sequenced. A record body emptied by the retention purge "
        "counts as purged when an audit.purge record names it; any other missing body fails. "
        "With --from/--to only the bodies of records whose time falls in the range are "
        "re-hashed and counted; every other check still covers the whole log (the roots need "
        "every leaf hash). The query projections (what reports read) and the stored config "
        "texts are checked against the records they came from. A log no key ever signed "
        "fails unless --allow-unsigned. Exit 1 naming the first failure.",
    )  # fmt: skip
    _store_args(verify)
    verify.add_argument("--from", dest="from_", metavar="DATE|TIME",
                        help="first day (2026-07-01) or RFC 3339 time")  # fmt: skip
    verify.add_argument("--to", metavar="DATE|TIME",
                        help="last day, inclusive, or RFC 3339 time, exclusive")  # fmt: skip
    verify.add_argument("--public-key", action="append", metavar="VKEY|FILE",
                        help="a trusted verifier key (vkey text or a file of them)")  # fmt: skip
    verify.add_argument("--checkpoints", metavar="FILE", help="exported checkpoints to check")
    verify.add_argument("--pending-delay", type=float, default=60.0, metavar="SECONDS")
    verify.add_argument("--unsigned-delay", type=float, default=UNSIGNED_DELAY_S,
                        metavar="SECONDS", help="how long records may wait for a checkpoint "
                        f"once a key is registered (default {UNSIGNED_DELAY_S:g})")  # fmt: skip
    verify.add_argument("--allow-unsigned", action="store_true",
                        help="accept a log that no key ever signed")  # fmt: skip
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=lambda a: asyncio.run(_verify_main(a)))

    keys = commands.add_parser(
        "keys", help="the checkpoint public keys and their validity",
        description="List the checkpoint public keys (vkeys) with their validity periods, or "
        "retire one.",
    )  # fmt: skip
    _store_args(keys)
    keys.set_defaults(run=lambda a: asyncio.run(_keys_main(a)))
    key_commands = keys.add_subparsers(title="keys commands", metavar="COMMAND")
    retire = key_commands.add_parser(
        "retire", help="close a key's validity (after a rotation)",
        description="Close a signing key's validity now (after a rotation: once the gateways "
        "no longer sign with it). Checkpoints signed only by it and dated later fail verify, "
        "whether the key comes from the database or from --public-key. Refuses an unknown key, "
        "a key already retired and the last key still valid.",
    )  # fmt: skip
    # As _store_args, but without defaults: `keys --store URL retire …` keeps the URL.
    where = retire.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS,
                       help="read state.store from this config")  # fmt: skip
    where.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                       help="the store URL (sqlite:///PATH or postgresql://…)")  # fmt: skip
    retire.add_argument("--name", required=True, help="the key name (signing_key_name)")
    retire.add_argument("--key-id", metavar="HEX", help="its key ID, when several share the name")
    retire.set_defaults(run=lambda a: asyncio.run(_retire_main(a)))
    generate = key_commands.add_parser(
        "generate", help="write a new Ed25519 signing key (PEM file, mode 0600)",
        description="Write a new Ed25519 checkpoint signing key to FILE (PKCS#8 PEM, mode "
        "0600) and print its public key (vkey) for auditors. Refuses an existing FILE unless "
        "--force. Configure it as audit.signing_key (with --name as audit.signing_key_name); "
        "custos init already makes one beside a SQLite store (<db>.signing-key.pem), which the "
        "gateway uses when audit.signing_key is unset.",
    )  # fmt: skip
    generate.add_argument("file", metavar="FILE")
    generate.add_argument("--name", default=AuditSettings().signing_key_name,
                          help="the name the vkey carries (audit.signing_key_name)")  # fmt: skip
    generate.add_argument("--force", action="store_true", help="replace an existing FILE")
    generate.set_defaults(run=_generate_main)

    prove = commands.add_parser("prove", help="one record with its inclusion proof, for auditors")
    _store_args(prove)
    prove.add_argument("--event", required=True, metavar="EVENT_ID")
    prove.add_argument("--output", "-o", metavar="FILE")
    prove.set_defaults(run=lambda a: asyncio.run(_prove_main(a)))

    check = commands.add_parser("check-proof", help="check a proof file (no database needed)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--public-key", action="append", required=True, metavar="VKEY|FILE")
    check.set_defaults(run=_check_proof_main)

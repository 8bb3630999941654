"""``custos audit verify``: prove the audit log intact, or name the first thing that is not.

Checks, in order (``verify_log``; each is a function of ``custos.audit.log.checks``, except 8):

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
   ``custos.audit.compliance.derived`` checks the query projections and the stored config texts
   against the records they came from.

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
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from custos import private
from custos.audit.compliance.derived import check_config_texts, check_projections
from custos.audit.log.checkpoint import Verifier, generate_signing_key, load_verifiers, read_export
from custos.audit.log.checks import (
    check_checkpoints,
    check_consistency,
    check_exported,
    check_leaves,
    check_roots,
    check_sequenced,
    check_signed,
    parse_exported,
    purge_cover,
    time_window,
)
from custos.audit.log.keys import RetireError, retire_key, with_recorded_validity
from custos.audit.log.keys import registered_verifiers as _db_verifiers
from custos.audit.settings import AuditSettings
from custos.state.models import utcnow
from custos.state.store import Store

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
    """Run every check of the module docstring, in its order; never raises for a bad log.
    ``since``/``until`` narrow the bodies checked to records whose time is in ``[since, until)``."""
    report = Report(since=since, until=until)
    fail = report.failures.append
    registered = await _db_verifiers(store)
    report.keys_from_database = verifiers is None
    trusted = registered if verifiers is None else with_recorded_validity(verifiers, registered)

    report.checkpoints_total, checkpoints = await check_checkpoints(store, trusted, fail)
    report.checkpoints_valid = len(checkpoints)
    exported_cps = parse_exported(exported, trusted, fail)
    window = time_window(since, until)
    leaves = await check_leaves(
        store, fail, purged=await purge_cover(store, fail), window=window, page_size=page_size,
        roots_at=[c.size for c in checkpoints] + [c.size for c in exported_cps],
    )  # fmt: skip
    report.log_size, report.purged = leaves.size, leaves.purged
    report.records_total, report.records_valid = leaves.checked, leaves.valid
    check_roots(checkpoints, leaves, fail)
    report.unsigned = await check_signed(
        store, checkpoints, leaves.size, keyed=bool(registered), allow_unsigned=allow_unsigned,
        delay_s=unsigned_delay_s, fail=fail,
    )  # fmt: skip
    await check_consistency(store, checkpoints, leaves.size, fail)
    report.exported_checked = await check_exported(store, exported_cps, checkpoints, leaves, fail)
    cutoff = utcnow() - timedelta(seconds=pending_delay_s)
    report.pending_late = await check_sequenced(store, cutoff, pending_delay_s, fail)

    page = min(page_size, API_PAGE)
    report.projections_checked = await check_projections(store, fail, window=window,
                                                         page_size=page)  # fmt: skip
    report.config_texts_checked = await check_config_texts(store, fail, cutoff=cutoff)
    return report


def verify_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """``--from``/``--to`` (either may be left out) as ``[since, until)``: dates are whole UTC
    days, ``to`` inclusive; RFC 3339 times are exact, ``to`` exclusive. Raises ``ValueError``."""
    from custos.audit.compliance.report import ReportError, parse_range

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
    from custos.state.store import open_store

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
    from custos.audit.log.proof import ProofError, prove_event

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
    from custos.audit.log.proof import ProofError, check_proof

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

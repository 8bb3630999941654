"""``custos audit verify|keys|prove|check-proof|purge``: the audit commands that work on the
store (or on a file) directly rather than over the admin API, so that an auditor can check the
log without trusting a running gateway.

- ``verify``: ``custos.audit.compliance.verify.verify_log`` over the whole log (or a time
  range of bodies);
- ``keys`` (list, ``retire``, ``generate``): the checkpoint signing keys;
- ``prove`` / ``check-proof``: one record with its inclusion proof, and checking such a file;
- ``purge``: the retention purge (``custos.audit.compliance.retention``), as the gateway runs
  it hourly.

Exit status: 0 done, 1 refused or failed (verify: the first failure is named), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
from pathlib import Path
from typing import Any

from custos import private
from custos.audit.compliance.retention import purge
from custos.audit.compliance.verify import UNSIGNED_DELAY_S, verify_log, verify_range
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import generate_signing_key, load_verifiers, read_export
from custos.audit.log.keys import RetireError, registered_verifiers, retire_key
from custos.cli.common import store_args, store_only
from custos.config.audit import AuditSettings


def _open(args: argparse.Namespace) -> Any:
    from custos.state.backends import open_store

    return open_store(store_only(args), migrate=False)


async def _verify_main(args: argparse.Namespace) -> int:
    verifiers = None
    try:  # what the auditor hands in: a file that cannot be read or a bad vkey is a usage error
        if args.public_key:
            verifiers = [v for spec in args.public_key for v in load_verifiers(spec)]
        exported = read_export(args.checkpoints) if args.checkpoints else []
        since, until = verify_range(args.from_, args.to)
    except (OSError, ValueError) as exc:
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
        keys = await registered_verifiers(store)
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


async def _purge_main(args: argparse.Namespace) -> int:
    from custos.state.backends import open_store

    days = args.retention_days
    if days is None and args.config:
        from custos.config.loader import STORE_SECTIONS, ConfigError, load_config

        try:  # no provider secret is needed to purge
            loaded = load_config(args.config, only={*STORE_SECTIONS, "audit"})
        except ConfigError as exc:
            print(f"custos: {exc}", file=sys.stderr)
            return 1
        days = loaded.config.audit.retention_days
    if days is None:
        days = AuditSettings().retention_days
    store = await open_store(store_only(args), migrate=False)
    try:
        result = await purge(store, retention_days=days, dry_run=args.dry_run, trigger="command",
                             gateway=GatewayInfo(socket.gethostname()))  # fmt: skip
    finally:
        await store.close()
    print(result.summary)
    if result.records:
        print("the audit.purge record(s) are sequenced by the next gateway that leads the log",
              file=sys.stderr)  # fmt: skip
    return 0


def register(commands: Any) -> None:
    """Add ``verify``, ``keys``, ``prove``, ``check-proof`` and ``purge`` to the ``audit``
    commands."""
    _register_verify(commands)
    _register_keys(commands)
    _register_proofs(commands)
    _register_purge(commands)


def _register_verify(commands: Any) -> None:
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
    store_args(verify)
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


def _register_keys(commands: Any) -> None:
    keys = commands.add_parser(
        "keys", help="the checkpoint public keys and their validity",
        description="List the checkpoint public keys (vkeys) with their validity periods, or "
        "retire one.",
    )  # fmt: skip
    store_args(keys)
    keys.set_defaults(run=lambda a: asyncio.run(_keys_main(a)))
    key_commands = keys.add_subparsers(title="keys commands", metavar="COMMAND")
    retire = key_commands.add_parser(
        "retire", help="close a key's validity (after a rotation)",
        description="Close a signing key's validity now (after a rotation: once the gateways "
        "no longer sign with it). Checkpoints signed only by it and dated later fail verify, "
        "whether the key comes from the database or from --public-key. Refuses an unknown key, "
        "a key already retired and the last key still valid.",
    )  # fmt: skip
    # As store_args, but without defaults: `keys --store URL retire …` keeps the URL.
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


def _register_proofs(commands: Any) -> None:
    prove = commands.add_parser("prove", help="one record with its inclusion proof, for auditors")
    store_args(prove)
    prove.add_argument("--event", required=True, metavar="EVENT_ID")
    prove.add_argument("--output", "-o", metavar="FILE")
    prove.set_defaults(run=lambda a: asyncio.run(_prove_main(a)))

    check = commands.add_parser("check-proof", help="check a proof file (no database needed)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--public-key", action="append", required=True, metavar="VKEY|FILE")
    check.set_defaults(run=_check_proof_main)


def _register_purge(commands: Any) -> None:
    command = commands.add_parser(
        "purge", help="purge record bodies past the retention (reads the store directly)",
        description="Empty the bodies and drop the query rows of sequenced records older than "
        "audit.retention_days, keeping their leaf hashes so the log still verifies; write an "
        "audit.purge record naming what was purged. Legal holds suspend it (a global hold "
        "entirely, a team hold for that team's LLM calls).",
    )  # fmt: skip
    store_args(command)
    command.add_argument("--retention-days", type=int, metavar="DAYS",
                         help="default: audit.retention_days of --config, else 400")  # fmt: skip
    command.add_argument("--dry-run", action="store_true", help="count, change nothing")
    command.set_defaults(run=lambda a: asyncio.run(_purge_main(a)))

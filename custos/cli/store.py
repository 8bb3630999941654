"""``custos init`` and ``custos db migrate``: set up the store, before a gateway can answer.

They work on the store directly (``--config FILE`` to read ``state.store`` from the config, or
``--store URL``). ``init`` prints the first admin's token once, alone on stdout (so ``$(…)``
captures just the secret), with the warning on stderr.

Exit status: 0 done, 1 refused or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from custos.cli.common import SHOWN_ONCE, TOKEN_ENV, fail, store_args, store_only, usage
from custos.cli.output import dump_json

HASH_KEY_ENV = "CUSTOS_TOKEN_HASH_KEY"


def register(commands: Any) -> None:
    """Add ``init`` and ``db`` to the ``custos`` commands."""
    init = commands.add_parser(
        "init",
        help="create the first admin and print its token once",
        description="Create the first admin user in the store and print its personal access "
        "token, once. Refuses when an admin exists already (with --if-needed that is not an "
        "error). With --recover, issues a new token for an existing admin instead. The token "
        f"hash key comes from the config or ${HASH_KEY_ENV}. A SQLite store gets its audit "
        "signing key beside it (<db>.signing-key.pem) unless it has one.",
    )
    store_args(init)
    init.add_argument("--email", default="admin@localhost", help="the admin's email")
    init.add_argument(
        "--if-needed", action="store_true", help="exit 0 without change when an admin exists"
    )
    init.add_argument(
        "--recover",
        action="store_true",
        help="instead: issue a new token for the existing enabled admin --email (when every "
        "admin token is revoked, expired or lost; needs the store and its token hash key)",
    )
    init.add_argument("--json", action="store_true", help="print the user and token as JSON")
    init.set_defaults(run=_init)

    db = commands.add_parser("db", help="manage the store", description="Manage the store.")
    db.set_defaults(run=lambda _args: usage(db))
    db_commands = db.add_subparsers(title="db commands", metavar="COMMAND")
    migrate = db_commands.add_parser(
        "migrate",
        help="bring the store's schema up to date",
        description="Apply every pending schema migration. Idempotent; the gateway also "
        "migrates on start.",
    )
    store_args(migrate)
    migrate.set_defaults(run=_migrate)


def _store_url(args: argparse.Namespace) -> tuple[str, bytes, str | None]:
    """The store URL, the token hash key and where changes are announced to running gateways,
    found as the gateway finds them: the key from the config's ``identity.token_hash_key``, else
    ``$CUSTOS_TOKEN_HASH_KEY``, else (SQLite) the key file beside the database; the
    announcements from the config's ``identity.invalidation``, or with ``--store`` a PostgreSQL
    store's own LISTEN/NOTIFY (``None``: running gateways see the change on their next refresh).

    Raises ``SystemExit`` with a message when neither ``--config`` nor ``--store`` is given or
    the config cannot be loaded.
    """
    from custos.identity.setup import invalidation_url, token_hash_key_for

    configured = os.environ.get(HASH_KEY_ENV) or None
    if args.store:
        url = args.store
        announce = url if url.startswith(("postgresql://", "postgres://")) else None
    elif not args.config:
        raise SystemExit(fail("give --config FILE or --store URL", 2))
    else:
        from custos.config.loader import STORE_SECTIONS, ConfigError, load_config

        try:  # the store's sections only: no provider secret is needed to work on the store
            config = load_config(args.config, only=STORE_SECTIONS).config
        except ConfigError as exc:
            raise SystemExit(fail(str(exc))) from None
        url = config.state.store
        configured = config.identity.token_hash_key or configured
        announce = invalidation_url(config)
    try:
        return url, token_hash_key_for(url, configured), announce
    except ValueError as exc:
        raise SystemExit(fail(f"no token hash key: {exc} (or set ${HASH_KEY_ENV})")) from None


def _init(args: argparse.Namespace) -> int:
    from custos.admin.bootstrap import bootstrap, recover_admin
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store
    from custos.state.errors import Conflict, NotFound, StoreError
    from custos.state.invalidation import open_invalidation

    if args.recover and args.if_needed:
        return fail("--recover and --if-needed do not go together", 2)
    url, key, announce = _store_url(args)
    _signing_key_beside(url)
    make = recover_admin if args.recover else bootstrap

    async def run() -> Any:
        # Announced like the admin API's changes, so running gateways take a recovered token
        # at once rather than on their next directory refresh.
        invalidation = open_invalidation(announce)
        try:
            await invalidation.start()
        except OSError as exc:
            print(f"custos: not announcing the change ({exc}): running gateways see it on "
                  "their next directory refresh", file=sys.stderr)  # fmt: skip
            invalidation = open_invalidation(None)
        store = await open_store(url, publisher=invalidation)
        try:
            return await make(store, TokenService(store, key), args.email)
        finally:
            await store.close()
            await invalidation.close()

    try:
        done = asyncio.run(run())
    except Conflict as exc:
        if args.if_needed:
            print("custos: an admin exists already; nothing to do", file=sys.stderr)
            return 0
        return fail(f"refusing: {exc.message}")
    except NotFound as exc:
        return fail(f"refusing: {exc.message}")
    except (StoreError, OSError) as exc:
        return fail(f"init failed: {exc}")
    if args.json:
        dump_json({"user": done.user.to_dict(), "token_id": done.token_id, "token": done.secret})
        return 0
    if args.recover:
        print(
            f"Issued a new token for the admin {done.user.email} ({done.user.id}).", file=sys.stderr
        )
    else:
        print(f"Created the first admin: {done.user.email} ({done.user.id}).", file=sys.stderr)
    print(f"Its personal access token follows. {SHOWN_ONCE}", file=sys.stderr)
    print(done.secret)
    print(f"Use it with the CLI as ${TOKEN_ENV}, or as 'Authorization: Bearer …'.", file=sys.stderr)
    return 0


def _signing_key_beside(store_url: str) -> None:
    """A SQLite store gets its audit signing key beside it, as it gets its token hash key."""
    from custos.audit.log.checkpoint import create_key_beside_store
    from custos.config.audit import AuditSettings

    made = create_key_beside_store(store_url, AuditSettings().signing_key_name)
    if made is not None:
        print(f"custos: created the audit signing key {made[0]} (back it up apart from the "
              f"store); its public key: {made[1].verifier.vkey}", file=sys.stderr)  # fmt: skip


def _migrate(args: argparse.Namespace) -> int:
    from custos.state.backends import migrate
    from custos.state.errors import StoreError

    url = store_only(args)
    try:
        applied = asyncio.run(migrate(url))
    except (StoreError, OSError) as exc:
        return fail(f"migration failed: {exc}")
    if applied:
        print("applied migration(s) " + ", ".join(f"{v:04d}" for v in applied))
    else:
        print("the schema is up to date")
    return 0

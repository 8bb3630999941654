"""The admin commands of the ``custos`` CLI: ``init``, ``db migrate``, and
``users|teams|accounts|tokens|events …``.

``init`` and ``db migrate`` work on the store directly (``--config FILE`` to read
``state.store`` from the config, or ``--store URL``): they run before a gateway can answer.
Everything else calls the admin API over HTTP (``--url``, default ``$CUSTOS_URL`` or
http://127.0.0.1:8787; ``--token`` or ``$CUSTOS_TOKEN``) and prints a table, or the API's JSON
with ``--json``. Token secrets are printed once, alone on stdout (so ``$(…)`` captures just
the secret), with the warning on stderr.

Exit status: 0 done, 1 refused or failed (the API's message is printed), 2 usage error.
``register(subparsers)`` adds the commands to the main parser; ``main(argv)`` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from custos.admin.client import DEFAULT_URL, AdminClient, ApiError, path
from custos.admin.output import block, dump_json, table

TOKEN_ENV = "CUSTOS_TOKEN"
URL_ENV = "CUSTOS_URL"
HASH_KEY_ENV = "CUSTOS_TOKEN_HASH_KEY"
ROLES = ("admin", "team_manager", "member", "auditor")
SHOWN_ONCE = "This token is shown once and cannot be recovered: store it now."

Run = Callable[[argparse.Namespace], int]

USER_COLUMNS = [
    ("id", "ID"),
    ("email", "EMAIL"),
    ("roles", "ROLES"),
    ("disabled", "DISABLED"),
    ("created_at", "CREATED"),
]
TEAM_COLUMNS = [("id", "ID"), ("name", "NAME"), ("source", "SOURCE"), ("created_at", "CREATED")]
MEMBER_COLUMNS = [("team", "TEAM"), ("email", "USER"), ("role", "ROLE"), ("created_at", "SINCE")]
ACCOUNT_COLUMNS = [
    ("id", "ID"),
    ("name", "NAME"),
    ("team", "TEAM"),
    ("allowed_models", "MODELS"),
    ("disabled", "DISABLED"),
]
#: A token stops working at its expiry, or (rotated) at the end of its grace period.
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("kind", "KIND"),
    ("owner", "OWNER"),
    ("name", "NAME"),
    ("prefix", "PREFIX"),
    ("state", "STATE"),
    ("works_until", "WORKS UNTIL"),
    ("last_used_at", "LAST USED"),
]
EVENT_COLUMNS = [
    ("id", "ID"),
    ("at", "AT"),
    ("actor", "ACTOR"),
    ("actor_role", "AS"),
    ("action", "ACTION"),
    ("target_id", "TARGET"),
]


def fail(message: str, status: int = 1) -> int:
    print(f"custos: {message}", file=sys.stderr)
    return status


# -- commands on the store ------------------------------------------------------------------------


def _store_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="read the store from this config (its state and identity sections only)",
    )
    where.add_argument(
        "--store", metavar="URL", help="the store URL (sqlite:///PATH or postgresql://…)"
    )


def _store_only(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    if not args.config:
        raise SystemExit(fail("give --config FILE or --store URL", 2))
    from custos.config.loader import STORE_SECTIONS, ConfigError, load_config

    try:
        return load_config(args.config, only=STORE_SECTIONS).config.state.store
    except ConfigError as exc:
        raise SystemExit(fail(str(exc))) from None


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


def _migrate(args: argparse.Namespace) -> int:
    from custos.state.backends import migrate
    from custos.state.errors import StoreError

    url = _store_only(args)
    try:
        applied = asyncio.run(migrate(url))
    except (StoreError, OSError) as exc:
        return fail(f"migration failed: {exc}")
    if applied:
        print("applied migration(s) " + ", ".join(f"{v:04d}" for v in applied))
    else:
        print("the schema is up to date")
    return 0


# -- commands over the admin API ------------------------------------------------------------------


def _api_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("admin API")
    group.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the gateway (default ${URL_ENV} or {DEFAULT_URL})",
    )
    group.add_argument("--token", help=f"your personal access token (default ${TOKEN_ENV})")
    group.add_argument("--json", action="store_true", help="print the API's JSON reply")
    return parent


Action = Callable[[AdminClient, argparse.Namespace], int]


def _api(action: Action) -> Run:
    def run(args: argparse.Namespace) -> int:
        token = args.token or os.environ.get(TOKEN_ENV)
        if not token:
            return fail(f"no token: pass --token or set ${TOKEN_ENV}", 2)
        try:
            return action(AdminClient(args.url, token), args)
        except ApiError as exc:
            if exc.status == 0:  # say where the URL came from and how to give another
                hint = (f"the gateway's URL comes from --url or ${URL_ENV}, default {DEFAULT_URL}"
                        "; make run serves on $CUSTOS_PORT, default 8787")  # fmt: skip
                return fail(f"{exc} ({hint})")
            return fail(str(exc))

    return run


def _show_list(reply: Any, args: argparse.Namespace, columns: list[tuple[str, str]]) -> int:
    if args.json:
        dump_json(reply)
    else:
        table(reply["data"], columns)
    return 0


def _show_one(reply: Any, args: argparse.Namespace) -> int:
    if args.json:
        dump_json(reply)
    else:
        block(reply)
    return 0


def _show_secret(reply: Any, args: argparse.Namespace) -> int:
    if args.json:
        dump_json(reply)
        return 0
    record = reply["record"]
    what = "Rotated into" if reply.get("replaced") else "Created"
    print(
        f"{what} token {record['id']} ({record['kind']}, {record['name']!r}) for "
        f"{record['owner']}; expires {record['expires_at'] or 'never'}.",
        file=sys.stderr,
    )
    if reply.get("replaced"):
        print(f"The old token works until {reply['replaced']['grace_until']}.", file=sys.stderr)
    print(SHOWN_ONCE, file=sys.stderr)
    print(reply["token"])
    return 0


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _flag(enable: bool, disable: bool) -> bool | None:
    return True if disable else (False if enable else None)


# users


def _users_list(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_list(c.call("GET", path("users")), a, USER_COLUMNS)


def _users_show(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("GET", path("users", a.user)), a)


def _users_create(c: AdminClient, a: argparse.Namespace) -> int:
    body = _without_none(email=a.email, display_name=a.name, roles=a.role or None)
    return _show_one(c.call("POST", path("users"), body), a)


def _users_update(c: AdminClient, a: argparse.Namespace) -> int:
    roles = [] if a.no_roles else (a.role or None)
    body = _without_none(
        email=a.email, display_name=a.name, roles=roles, disabled=_flag(a.enable, a.disable)
    )
    if not body:
        return fail(
            "nothing to change: give --email, --name, --role, --no-roles, --disable or --enable", 2
        )
    return _show_one(c.call("PATCH", path("users", a.user), body), a)


def _users_delete(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("DELETE", path("users", a.user)), a)


# teams


def _teams_list(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_list(c.call("GET", path("teams")), a, TEAM_COLUMNS)


def _teams_show(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("GET", path("teams", a.team)), a)


def _teams_create(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("POST", path("teams"), {"name": a.name}), a)


def _teams_delete(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("DELETE", path("teams", a.team)), a)


def _members_list(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_list(c.call("GET", path("teams", a.team, "members")), a, MEMBER_COLUMNS)


def _members_add(c: AdminClient, a: argparse.Namespace) -> int:
    body = {"user": a.user, "role": a.role}
    return _show_one(c.call("POST", path("teams", a.team, "members"), body), a)


def _members_set_role(c: AdminClient, a: argparse.Namespace) -> int:
    route = path("teams", a.team, "members", a.user)
    return _show_one(c.call("PATCH", route, {"role": a.role}), a)


def _members_remove(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("DELETE", path("teams", a.team, "members", a.user)), a)


# accounts


def _accounts_list(c: AdminClient, a: argparse.Namespace) -> int:
    reply = c.call("GET", path("accounts"), query={"team": a.team})
    return _show_list(reply, a, ACCOUNT_COLUMNS)


def _accounts_show(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("GET", path("accounts", a.account)), a)


def _accounts_create(c: AdminClient, a: argparse.Namespace) -> int:
    body = {"name": a.name, "team": a.team, "allowed_models": a.model or []}
    return _show_one(c.call("POST", path("accounts"), body), a)


def _accounts_update(c: AdminClient, a: argparse.Namespace) -> int:
    models = [] if a.no_models else (a.model or None)
    body = _without_none(allowed_models=models, disabled=_flag(a.enable, a.disable), team=a.team)
    if not body:
        return fail(
            "nothing to change: give --model, --no-models, --team, --disable or --enable", 2
        )
    return _show_one(c.call("PATCH", path("accounts", a.account), body), a)


def _accounts_delete(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("DELETE", path("accounts", a.account)), a)


# tokens


def _tokens_list(c: AdminClient, a: argparse.Namespace) -> int:
    reply = c.call("GET", path("tokens"), query={"user": a.user, "account": a.account})
    if not a.json:
        for token in reply["data"]:
            ends = [t for t in (token["expires_at"], token["grace_until"]) if t]
            token["works_until"] = min(ends) if ends else "never"  # RFC 3339 UTC sorts as text
    return _show_list(reply, a, TOKEN_COLUMNS)


def _tokens_show(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("GET", path("tokens", a.token_id)), a)


def _tokens_create(c: AdminClient, a: argparse.Namespace) -> int:
    body = _without_none(
        name=a.name,
        user=a.user,
        account=a.account,
        expires_in_days=a.expires_in_days,
        expires_at=a.expires_at,
        models=a.model or None,
    )
    return _show_secret(c.call("POST", path("tokens"), body), a)


def _tokens_revoke(c: AdminClient, a: argparse.Namespace) -> int:
    return _show_one(c.call("POST", path("tokens", a.token_id, "revoke")), a)


def _tokens_rotate(c: AdminClient, a: argparse.Namespace) -> int:
    body = _without_none(
        grace_seconds=a.grace_seconds, expires_in_days=a.expires_in_days, expires_at=a.expires_at
    )
    return _show_secret(c.call("POST", path("tokens", a.token_id, "rotate"), body), a)


# events


def _events_list(c: AdminClient, a: argparse.Namespace) -> int:
    query = {
        "after": a.after,
        "limit": a.limit,
        "target_type": a.target_type,
        "target_id": a.target_id,
    }
    return _show_list(c.call("GET", path("events"), query=query), a, EVENT_COLUMNS)


# -- the parser -----------------------------------------------------------------------------------


class _Tree:
    """Adds leaf commands that all take the admin API options."""

    def __init__(self, parent: argparse.ArgumentParser) -> None:
        self.parent = parent

    def group(self, subparsers: Any, name: str, help: str, description: str) -> Any:
        parser = subparsers.add_parser(name, help=help, description=description)
        parser.set_defaults(run=lambda _args: _usage(parser))
        return parser.add_subparsers(title=f"{name} commands", metavar="COMMAND")

    def leaf(
        self, subparsers: Any, name: str, action: Action, help: str, description: str = ""
    ) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, help=help, description=description or help, parents=[self.parent]
        )
        parser.set_defaults(run=_api(action))
        return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _signing_key_beside(store_url: str) -> None:
    """A SQLite store gets its audit signing key beside it, as it gets its token hash key."""
    from custos.audit.checkpoint import create_key_beside_store
    from custos.config.audit import AuditSettings

    made = create_key_beside_store(store_url, AuditSettings().signing_key_name)
    if made is not None:
        print(f"custos: created the audit signing key {made[0]} (back it up apart from the "
              f"store); its public key: {made[1].verifier.vkey}", file=sys.stderr)  # fmt: skip


def _expiry_args(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--expires-in-days", type=int, metavar="N", help="expire N days from now")
    when.add_argument("--expires-at", metavar="TIME", help="expire at an RFC 3339 time with zone")


def register(subparsers: Any) -> None:
    """Add ``init``, ``db``, ``users``, ``teams``, ``accounts``, ``tokens`` and ``events``."""
    init = subparsers.add_parser(
        "init",
        help="create the first admin and print its token once",
        description="Create the first admin user in the store and print its personal access "
        "token, once. Refuses when an admin exists already (with --if-needed that is not an "
        "error). With --recover, issues a new token for an existing admin instead. The token "
        f"hash key comes from the config or ${HASH_KEY_ENV}. A SQLite store gets its audit "
        "signing key beside it (<db>.signing-key.pem) unless it has one.",
    )
    _store_args(init)
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

    db = subparsers.add_parser("db", help="manage the store", description="Manage the store.")
    db.set_defaults(run=lambda _args: _usage(db))
    db_commands = db.add_subparsers(title="db commands", metavar="COMMAND")
    migrate = db_commands.add_parser(
        "migrate",
        help="bring the store's schema up to date",
        description="Apply every pending schema migration. Idempotent; the gateway also "
        "migrates on start.",
    )
    _store_args(migrate)
    migrate.set_defaults(run=_migrate)

    tree = _Tree(_api_parent())
    _register_users(tree, subparsers)
    _register_teams(tree, subparsers)
    _register_accounts(tree, subparsers)
    _register_tokens(tree, subparsers)
    events = tree.group(
        subparsers,
        "events",
        "read admin events",
        "Admin events: who changed what (admins and auditors).",
    )
    p = tree.leaf(events, "list", _events_list, "list admin events, oldest first")
    p.add_argument("--after", type=int, help="only events with a larger id (a cursor)")
    p.add_argument("--limit", type=int, help="at most this many (default 100, max 1000)")
    p.add_argument("--target-type", help="user, team, team_member, virtual_account or token")
    p.add_argument("--target-id", help="only events about this object id")


def _register_users(tree: _Tree, subparsers: Any) -> None:
    users = tree.group(
        subparsers,
        "users",
        "manage users",
        "Users, by id (usr_…) or email. Changing users needs the admin role.",
    )
    tree.leaf(users, "list", _users_list, "list users")
    p = tree.leaf(users, "show", _users_show, "show a user and their memberships")
    p.add_argument("user", help="id or email")
    p = tree.leaf(users, "create", _users_create, "create a user (admin)")
    p.add_argument("email")
    p.add_argument("--name", help="display name")
    p.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        help="an admin role (repeat for several; default member)",
    )
    p = tree.leaf(users, "update", _users_update, "change a user (admin)")
    p.add_argument("user", help="id or email")
    p.add_argument("--email", help="new email")
    p.add_argument("--name", help="new display name")
    roles = p.add_mutually_exclusive_group()
    roles.add_argument(
        "--role", action="append", choices=ROLES, help="set the roles to these (repeat for several)"
    )
    roles.add_argument("--no-roles", action="store_true", help="remove every role")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="disable: their tokens stop working")
    state.add_argument("--enable", action="store_true", help="enable again")
    p = tree.leaf(users, "delete", _users_delete, "delete a user and revoke their tokens (admin)")
    p.add_argument("user", help="id or email")


def _register_teams(tree: _Tree, subparsers: Any) -> None:
    teams = tree.group(
        subparsers,
        "teams",
        "manage teams and members",
        "Teams, by id (team_…) or name, and their members.",
    )
    tree.leaf(teams, "list", _teams_list, "list teams")
    p = tree.leaf(teams, "show", _teams_show, "show a team and its members")
    p.add_argument("team", help="id or name")
    p = tree.leaf(teams, "create", _teams_create, "create a team (admin)")
    p.add_argument("name")
    p = tree.leaf(teams, "delete", _teams_delete, "delete a team (admin)")
    p.add_argument("team", help="id or name")
    members = teams.add_parser(
        "members", help="manage a team's members", description="A team's members and managers."
    )
    members.set_defaults(run=lambda _args: _usage(members))
    member_commands = members.add_subparsers(title="members commands", metavar="COMMAND")
    p = tree.leaf(member_commands, "list", _members_list, "list a team's members")
    p.add_argument("team", help="id or name")
    p = tree.leaf(member_commands, "add", _members_add, "add a user to a team")
    p.add_argument("team", help="id or name")
    p.add_argument("user", help="id or email")
    p.add_argument(
        "--role",
        choices=["member", "manager"],
        default="member",
        help="membership role (default member)",
    )
    p = tree.leaf(member_commands, "set-role", _members_set_role, "change a member's role")
    p.add_argument("team", help="id or name")
    p.add_argument("user", help="id or email")
    p.add_argument("role", choices=["member", "manager"])
    p = tree.leaf(member_commands, "remove", _members_remove, "remove a user from a team")
    p.add_argument("team", help="id or name")
    p.add_argument("user", help="id or email")


def _register_accounts(tree: _Tree, subparsers: Any) -> None:
    accounts = tree.group(
        subparsers,
        "accounts",
        "manage virtual accounts",
        "Virtual accounts (services), by id (va_…) or name; each is owned by a team.",
    )
    p = tree.leaf(accounts, "list", _accounts_list, "list virtual accounts")
    p.add_argument("--team", help="only this team's (id or name)")
    p = tree.leaf(accounts, "show", _accounts_show, "show a virtual account")
    p.add_argument("account", help="id or name")
    p = tree.leaf(accounts, "create", _accounts_create, "create a virtual account")
    p.add_argument("name")
    p.add_argument("--team", required=True, help="the owner team (id or name)")
    p.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="a model or 'provider/*' glob it may call (repeat)",
    )
    p = tree.leaf(accounts, "update", _accounts_update, "change a virtual account")
    p.add_argument("account", help="id or name")
    models = p.add_mutually_exclusive_group()
    models.add_argument(
        "--model", action="append", metavar="MODEL", help="set its models to these (repeat)"
    )
    models.add_argument("--no-models", action="store_true", help="allow no model at all")
    p.add_argument("--team", help="move it to this team")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="disable: its tokens stop working")
    state.add_argument("--enable", action="store_true", help="enable again")
    p = tree.leaf(accounts, "delete", _accounts_delete, "delete a virtual account and its tokens")
    p.add_argument("account", help="id or name")


def _register_tokens(tree: _Tree, subparsers: Any) -> None:
    tokens = tree.group(
        subparsers,
        "tokens",
        "manage tokens",
        "Personal access tokens (cst_pat_…) and virtual account tokens "
        "(cst_vat_…). Secrets are shown once, when created or rotated.",
    )
    p = tree.leaf(tokens, "list", _tokens_list, "list tokens (never their secrets)")
    whose = p.add_mutually_exclusive_group()
    whose.add_argument("--user", help="only this user's (id or email)")
    whose.add_argument("--account", help="only this virtual account's (id or name)")
    p = tree.leaf(tokens, "show", _tokens_show, "show a token")
    p.add_argument("token_id", metavar="TOKEN_ID")
    p = tree.leaf(
        tokens,
        "create",
        _tokens_create,
        "create a token and print it once",
        "Create a personal access token for yourself (default), for another user (--user, "
        "admins only) or a virtual account token (--account). The secret is printed once.",
    )
    p.add_argument("--name", default="cli", help="a label to tell it apart (default cli)")
    whose = p.add_mutually_exclusive_group()
    whose.add_argument("--user", help="for this user (id or email; admins only)")
    whose.add_argument("--account", help="for this virtual account (id or name)")
    _expiry_args(p)
    p.add_argument(
        "--model", action="append", metavar="MODEL", help="narrow it to this model or glob (repeat)"
    )
    p = tree.leaf(tokens, "revoke", _tokens_revoke, "revoke a token now")
    p.add_argument("token_id", metavar="TOKEN_ID")
    p = tree.leaf(
        tokens,
        "rotate",
        _tokens_rotate,
        "replace a token and print the new one once",
        "Issue a replacement with the same name and models; the old token keeps working for "
        "--grace-seconds (default 3600), then stops.",
    )
    p.add_argument("token_id", metavar="TOKEN_ID")
    p.add_argument("--grace-seconds", type=int, help="how long the old token keeps working")
    _expiry_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="custos", description="Custos admin commands.")
    register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command (what ``custos …`` does once ``register`` is wired in)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

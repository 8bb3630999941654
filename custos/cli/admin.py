"""``custos users|teams|accounts|tokens|events …``: identity administration over the admin API.

Each command calls the gateway over HTTP (``--url``, default ``$CUSTOS_URL`` or
http://127.0.0.1:8787; ``--token`` or ``$CUSTOS_TOKEN``) and prints a table, or the API's JSON
with ``--json``. Token secrets are printed once, alone on stdout (so ``$(…)`` captures just
the secret), with the warning on stderr. ``custos init`` and ``db migrate``, which work on the
store before a gateway can answer, are in ``custos.cli.store``.

Exit status: 0 done, 1 refused or failed (the API's message is printed), 2 usage error.
``register(commands)`` adds the commands to the ``custos`` parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from custos.cli.client import DEFAULT_URL, AdminClient, ApiError, path
from custos.cli.common import (
    SHOWN_ONCE,
    TOKEN_ENV,
    URL_ENV,
    Run,
    api_options,
    fail,
    token_of,
    usage,
)
from custos.cli.output import block, dump_json, table

ROLES = ("admin", "team_manager", "member", "auditor")

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


Action = Callable[[AdminClient, argparse.Namespace], int]


def _api(action: Action) -> Run:
    def run(args: argparse.Namespace) -> int:
        token = token_of(args)
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
        parser.set_defaults(run=lambda _args: usage(parser))
        return parser.add_subparsers(title=f"{name} commands", metavar="COMMAND")

    def leaf(
        self, subparsers: Any, name: str, action: Action, help: str, description: str = ""
    ) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, help=help, description=description or help, parents=[self.parent]
        )
        parser.set_defaults(run=_api(action))
        return parser


def _expiry_args(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--expires-in-days", type=int, metavar="N", help="expire N days from now")
    when.add_argument("--expires-at", metavar="TIME", help="expire at an RFC 3339 time with zone")


def register(subparsers: Any) -> None:
    """Add ``users``, ``teams``, ``accounts``, ``tokens`` and ``events``."""
    tree = _Tree(api_options("your personal access token", json=True))
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
    members.set_defaults(run=lambda _args: usage(members))
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

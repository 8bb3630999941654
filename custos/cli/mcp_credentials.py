"""``custos mcp credential``: your own credentials for ``auth: per_user`` MCP servers, over the
admin API (docs/mcp.md).

- ``set SERVER``: reads the credential from stdin (one line; never from an argument, which
  would stay in the shell's history and the process list) and stores it encrypted;
- ``list [--user U]``: which servers hold a credential (never a value);
- ``delete SERVER [--user U]``: delete yours (admins: anyone's).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from custos.cli.common import TOKEN_ENV, api_options, fail, token_of, usage


def register(sub: Any) -> None:
    credential = sub.add_parser(
        "credential", help="your own credentials for MCP servers with auth per_user"
    )
    credential.set_defaults(run=lambda _a: usage(credential))
    commands = credential.add_subparsers(title="credential commands", metavar="COMMAND")
    options = api_options("your personal access token", json=True)
    put = commands.add_parser(
        "set",
        parents=[options],
        help="set or replace yours (stdin)",
        description="Reads the credential from stdin (a prompt on a terminal) and stores it "
        "encrypted; it is never shown again.",
    )
    put.add_argument("server")
    put.set_defaults(run=_set)
    listed = commands.add_parser("list", parents=[options], help="servers you hold one for")
    listed.add_argument("--user", help="another user's (admins, auditors)")
    listed.set_defaults(run=_list)
    delete = commands.add_parser("delete", parents=[options], help="delete yours")
    delete.add_argument("server")
    delete.add_argument("--user", help="another user's (admins)")
    delete.set_defaults(run=_delete)


def _call(args: argparse.Namespace, method: str, route: list[str], **kw: Any) -> int:
    from custos.cli.client import AdminClient, ApiError, path
    from custos.cli.output import dump_json, table

    token = token_of(args)
    if not token:
        return fail(f"no token: pass --token or set ${TOKEN_ENV}", 2)
    try:
        reply = AdminClient(args.url, token).call(method, path(*route), **kw)
    except ApiError as exc:
        return fail(str(exc))
    if args.json:
        dump_json(reply)
    else:
        rows = reply.get("data", [reply])
        table(rows, [("server", "SERVER"), ("user", "USER"), ("updated_at", "UPDATED")])
    return 0


def _set(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        secret = getpass.getpass(f"credential for {args.server}: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        return fail("no credential on stdin", 2)
    return _call(args, "PUT", ["mcp", "credentials", args.server], body={"secret": secret})


def _list(args: argparse.Namespace) -> int:
    return _call(args, "GET", ["mcp", "credentials"], query={"user": args.user})


def _delete(args: argparse.Namespace) -> int:
    return _call(args, "DELETE", ["mcp", "credentials", args.server], query={"user": args.user})

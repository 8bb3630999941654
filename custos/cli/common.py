"""What the command modules share: how a command fails, how it finds the store, how it reaches
the admin API.

Commands that work on the store directly (``init``, ``db migrate``, ``audit verify`` …) take
``--config FILE`` or ``--store URL`` (``store_args``, ``store_only``); commands that call the
admin API take ``--url`` and ``--token`` (``api_options``). Exit status everywhere: 0 done, 1
refused or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from custos.cli.client import DEFAULT_URL

TOKEN_ENV = "CUSTOS_TOKEN"
URL_ENV = "CUSTOS_URL"
SHOWN_ONCE = "This token is shown once and cannot be recovered: store it now."

#: What a command's ``run`` default is: the parsed arguments in, the exit status out.
Run = Callable[[argparse.Namespace], int]


def fail(message: str, status: int = 1) -> int:
    """Say why on stderr, as ``custos: …``, and return the exit status."""
    print(f"custos: {message}", file=sys.stderr)
    return status


def usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without a command: its help on stderr, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def store_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` or ``--store URL``: where a command that bypasses the gateway finds the
    store."""
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


def store_only(args: argparse.Namespace) -> str:
    """The store URL from ``--store``, or from the ``state`` section of ``--config`` (no provider
    secret is needed for that). Raises ``SystemExit`` with a message when neither is given or
    the config cannot be loaded."""
    if args.store:
        return str(args.store)
    if not args.config:
        raise SystemExit(fail("give --config FILE or --store URL", 2))
    from custos.config.loader import STORE_SECTIONS, ConfigError, load_config

    try:
        return load_config(args.config, only=STORE_SECTIONS).config.state.store
    except ConfigError as exc:
        raise SystemExit(fail(str(exc))) from None


def api_options(token_help: str, *, json: bool = False) -> argparse.ArgumentParser:
    """A parent parser with the "admin API" options: ``--url``, ``--token`` (described by
    ``token_help``) and, with ``json``, ``--json``."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("admin API")
    group.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the gateway (default ${URL_ENV} or {DEFAULT_URL})",
    )
    group.add_argument("--token", help=f"{token_help} (default ${TOKEN_ENV})")
    if json:
        group.add_argument("--json", action="store_true", help="print the API's JSON reply")
    return parent


def token_of(args: argparse.Namespace) -> str | None:
    """The caller's token: ``--token``, else ``$CUSTOS_TOKEN``."""
    return args.token or os.environ.get(TOKEN_ENV)

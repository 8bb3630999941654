"""``custos config check``: validate a config file as the gateway would, without serving it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(commands: Any) -> None:
    """Add ``config`` and its commands to the ``custos`` commands."""
    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = config_commands.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config file as the gateway would, report every problem with its "
        "path and line, and print its revision. Exit status 0 when it can be served, 1 when not.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    from custos.config.loader import ConfigError, load_config

    try:
        loaded = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    config = loaded.config
    models = sum(len(p.models) for p in config.providers.values())
    print(f"{args.file}: OK")
    print(f"  revision {loaded.revision}")
    print(
        f"  {len(config.providers)} provider account(s), {models} model(s), "
        f"{len(config.virtual_models)} virtual model(s)"
    )
    for guardrail in config.guardrails:
        sources = guardrail.policy_sources
        if sources is not None:
            checked = f", validated against {sources.schema.name}" if sources.schema else ""
            print(f"  guardrail {guardrail.id}: {len(sources.files)} {sources.language} file(s)"
                  f"{checked}, policy revision {sources.digest[:12]}")  # fmt: skip
    if config.mcp_servers:
        print(f"  {len(config.mcp_servers)} MCP server(s), "
              f"{len(config.virtual_mcp_servers)} virtual MCP server(s)")  # fmt: skip
    return 0

"""The ``custos`` command: ``main`` builds the parser from one module per command group and runs
the command given.

- ``serve``: the gateway (``custos.cli.serve``);
- ``config check``: validate a config file (``custos.cli.config``);
- ``mock-provider``: the mock LLM provider for demos, tests and the benchmark
  (``custos.cli.mock``);
- ``init``, ``db migrate``: set up the store, before a gateway can answer (``custos.cli.store``);
- ``users``, ``teams``, ``accounts``, ``tokens``, ``events``: identity administration over the
  admin API (``custos.cli.admin``);
- ``audit …``: the audit trail, over the admin API or on the store directly
  (``custos.cli.audit``, ``custos.cli.audit_store``);
- ``import litellm``: convert a LiteLLM proxy config (``custos.cli.importer``);
- ``mcp servers|tools|explain``: MCP endpoints of a config, the tools a caller would see, and
  what a tool call would meet, without making it (``custos.cli.mcp``);
- ``guardrails eval``: precision and recall of the built-in detectors on a labelled corpus
  (``custos.cli.guardrails``).

What they share (failing, finding the store, the admin API options) is in ``custos.cli.common``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from custos import __version__
from custos.cli import admin, audit, config, guardrails, importer, mcp, mock, serve, store


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custos",
        description="Custos: an AI gateway with a governance control plane.",
    )
    parser.add_argument("--version", action="version", version=f"custos {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in (serve, config, mock, store, admin, audit, importer, mcp, guardrails):
        group.register(commands)
    return parser

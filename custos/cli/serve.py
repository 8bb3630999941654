"""``custos serve``: the gateway, in the foreground, on one config file."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(commands: Any) -> None:
    """Add ``serve`` to the ``custos`` commands."""
    serve = commands.add_parser(
        "serve",
        help="serve the gateway",
        description="Serve the OpenAI- and Anthropic-compatible gateway with a config file. "
        "The file is reloaded when it (or a file it references with ${file:…}) changes and on "
        "SIGHUP; a file that fails validation is refused and the running revision keeps serving.",
    )
    serve.add_argument(
        "--config", "-c", required=True, metavar="FILE", help="the config file (YAML)"
    )
    serve.add_argument("--host", help="override gateway.listen's host")
    serve.add_argument("--port", type=int, help="override gateway.listen's port")
    serve.add_argument(
        "--no-watch", action="store_true", help="reload on SIGHUP only, not on change"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from custos.config.loader import ConfigError
    from custos.server import serve

    try:
        return serve(args.config, host=args.host, port=args.port, watch=not args.no_watch)
    except ConfigError as exc:
        print(f"custos: refusing to start: {exc}", file=sys.stderr)
        return 1

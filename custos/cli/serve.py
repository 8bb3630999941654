"""``custos serve``: the gateway, in the foreground, on one config file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: More processes than this on one machine is a mistake (a typo), not a plan.
MAX_WORKERS = 256


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
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="serve with N processes sharing the port, each a full replica (default 1). N > 1 "
        "needs state shared as between machines: a PostgreSQL store and Redis counters; "
        "SIGHUP is passed to every worker, a worker that dies is replaced",
    )
    serve.set_defaults(run=_serve)


def _worker_count(text: str) -> int:
    count = int(text) if text.isdigit() else 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}")
    return count


def _serve(args: argparse.Namespace) -> int:
    from custos.config.loader import ConfigError
    from custos.server import serve
    from custos.server.workers import SharedStateRequired, serve_workers

    try:
        if args.workers > 1:
            return serve_workers(args.config, workers=args.workers, host=args.host,
                                 port=args.port, watch=not args.no_watch,
                                 log_level=args.log_level)  # fmt: skip
        return serve(args.config, host=args.host, port=args.port, watch=not args.no_watch)
    except (ConfigError, SharedStateRequired) as exc:
        print(f"custos: refusing to start: {exc}", file=sys.stderr)
        return 1

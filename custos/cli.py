"""The ``custos`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from custos import __version__


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

    mock = commands.add_parser(
        "mock-provider",
        help="run the mock LLM provider",
        description="Run a local mock of the OpenAI, Azure OpenAI, Anthropic, Gemini (AI "
        "Studio, Vertex AI with its token endpoint) and Bedrock (Converse, SigV4-signed with the "
        "API key as the secret) APIs for demos, "
        "tests and benchmarks. Deterministic output; errors, latency and dropped streams on "
        "request through model-name directives (e.g. gpt-4o+status=429) or x-mock-* headers.",
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument(
        "--port",
        type=int,
        default=9999,
        help="default 9999 (what examples/quickstart.yaml names)",
    )
    mock.add_argument("--api-key", default="mock-key", help="the key clients must present")
    mock.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    mock.set_defaults(run=_mock_provider)

    from custos.admin_cli import register as register_admin

    register_admin(commands)
    from custos.audit.cli import register as register_audit

    register_audit(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from custos.config.loader import ConfigError
    from custos.server import serve

    try:
        return serve(args.config, host=args.host, port=args.port, watch=not args.no_watch)
    except ConfigError as exc:
        print(f"custos: refusing to start: {exc}", file=sys.stderr)
        return 1


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
    return 0


def _mock_provider(args: argparse.Namespace) -> int:
    from custos.mock import run

    run(host=args.host, port=args.port, api_key=args.api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

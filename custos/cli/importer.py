"""``custos import litellm CONFIG [-o FILE]``: convert a LiteLLM proxy config into a Custos
config (``custos.config.litellm_import``), check it as ``custos config check`` would, and print
the report of what was mapped, approximated and left out."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HEADER = (
    "# Converted from the LiteLLM config {source} by `custos import litellm`.\n"
    "# Read the conversion report before serving it: prices, limits and access need review.\n"
)


def register(commands: Any) -> None:
    """Add ``import`` and its commands to the ``custos`` commands."""
    parser = commands.add_parser(
        "import",
        help="convert another gateway's config",
        description="Convert another gateway's config into a Custos config, with a report.",
    )
    kinds = parser.add_subparsers(title="import commands", metavar="COMMAND")
    litellm = kinds.add_parser(
        "litellm",
        help="convert a LiteLLM proxy config",
        description="Convert a LiteLLM proxy config (model_list, router and litellm settings, "
        "teams, budgets, guardrails) into a Custos config, check it, and print a report of what "
        "was mapped, what was approximated and what has no equivalent. Secrets are never "
        "copied: os.environ/NAME becomes ${env:NAME}, a literal key an ${env:…} the report "
        "names. Without -o the config goes to standard output and the report to standard error.",
    )
    litellm.add_argument("file", metavar="CONFIG", help="the LiteLLM config.yaml")
    litellm.add_argument("-o", "--output", metavar="FILE", help="write the Custos config here")
    litellm.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    litellm.set_defaults(run=_import_litellm)


def _import_litellm(args: argparse.Namespace) -> int:
    from custos.config.litellm_import import NotLiteLLMConfig, convert

    try:
        source = yaml.safe_load(Path(args.file).read_text(encoding="utf-8"))
        config, report = convert(source)
    except (OSError, yaml.YAMLError, NotLiteLLMConfig) as exc:
        print(f"custos import litellm: {args.file}: {exc}", file=sys.stderr)
        return 1
    text = HEADER.format(source=Path(args.file).name) + yaml.safe_dump(
        config, sort_keys=False, allow_unicode=True, width=100
    )
    problems = check(text, Path(args.output or ".").resolve().parent)
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.force:
            print(f"custos import litellm: {out} exists (use --force)", file=sys.stderr)
            return 1
        out.write_text(text, encoding="utf-8")
        print(report.text(), end="")
    else:
        print(text, end="")
        print(report.text(), end="", file=sys.stderr)
    if problems:
        print(f"The converted config does not pass the check:\n{problems}", file=sys.stderr)
        return 1
    where = args.output or "the config above"
    print(f"{where} passes custos config check (with the variables above set)", file=sys.stderr)
    return 0


def check(text: str, base_dir: Path) -> str | None:
    """The config check's problems with ``text`` (``None`` when it passes), taking each
    ``${env:NAME}`` not set here as set: the variables are the operator's to provide."""
    from custos.config.loader import ConfigError, parse_config
    from custos.config.refs import REFERENCE

    missing = {name for kind, name in REFERENCE.findall(text)
               if kind == "env" and name not in os.environ}  # fmt: skip
    for name in missing:
        url = name.endswith(("BASE", "URL", "ENDPOINT", "HOST"))
        os.environ[name] = "https://placeholder.invalid" if url else f"placeholder-{name.lower()}"
    try:
        parse_config(text, base_dir=base_dir)
    except ConfigError as exc:
        return str(exc)
    finally:
        for name in missing:
            os.environ.pop(name, None)
    return None

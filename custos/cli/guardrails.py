"""``custos guardrails eval``: precision and recall of the built-in detectors on a corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CORPUS = Path("tests/corpus/detectors.jsonl")


def register(commands: Any) -> None:
    """Add ``guardrails`` and its commands to the ``custos`` commands."""
    guardrails = commands.add_parser("guardrails", help="the built-in guardrail detectors")
    guardrail_commands = guardrails.add_subparsers(title="guardrails commands", metavar="COMMAND")
    evaluate = guardrail_commands.add_parser(
        "eval",
        help="precision and recall of the built-in detectors on a labelled corpus",
        description="Run the pii, secrets and prompt_injection detectors (as guardrails with "
        "their defaults) over a labelled corpus (JSON lines: text, language, expected kinds) "
        "and print precision and recall per detector and per kind, and how many clean texts "
        "were flagged. Exit status 0, or 1 when the corpus cannot be read.",
    )
    evaluate.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, metavar="PATH",
                          help=f"the corpus (default: {DEFAULT_CORPUS})")  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument("--mistakes", action="store_true",
                          help="also list each text scored wrong, with its text")  # fmt: skip
    evaluate.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    from custos.guardrails import corpus

    try:
        entries = corpus.load(args.corpus)
    except (OSError, ValueError) as exc:
        print(f"custos guardrails eval: {exc}", file=sys.stderr)
        return 1
    report = corpus.evaluate(entries)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        for line in corpus.table(report):
            print(line)
    if args.mistakes:
        for detector, text, missed, extra in report.mistakes:
            print(f"{detector}: missed {missed} extra {extra}: {text!r}", file=sys.stderr)
    return 0

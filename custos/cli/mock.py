"""``custos mock-provider``: the mock LLM provider (``custos.mock``), in the foreground.

This is the one production module that imports ``custos.mock``, and only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add ``mock-provider`` to the ``custos`` commands."""
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


def _mock_provider(args: argparse.Namespace) -> int:
    from custos.mock import run

    run(host=args.host, port=args.port, api_key=args.api_key)
    return 0

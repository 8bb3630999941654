"""The tool server of ``bench/run.sh --mcp``, built with the official SDK's FastMCP.

Run as ``python bench/mcp_tool_server.py --port N``: MCP Streamable HTTP at ``/mcp``, stateful
sessions (``Mcp-Session-Id``), every request answered with one JSON message rather than an event
stream (``json_response``), so that the benchmark's load generator reads a plain body. The
gateway and the direct runs meet the same server in the same mode.

Tools: ``echo`` (the benchmarked call: says its text back) and ``delete_record``, which the
benchmark's Cedar policy forbids (its sanity check shows the policy decides).
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.fastmcp import FastMCP


def build() -> FastMCP:
    # FastMCP logs every request at INFO through rich, which costs the server more than the call
    server = FastMCP("bench-tools", json_response=True, log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    @server.tool()
    def delete_record(record_id: str) -> str:
        """Delete a record (the benchmark's policy never lets a call reach it)."""
        return f"deleted {record_id}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build().streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

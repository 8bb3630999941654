"""A tool server for the MCP gateway's tests, built with the official SDK's FastMCP.

Run as ``python tests/mcp_tool_server.py --port N --markers DIR [--token T] [--sse|--json]``;
it serves MCP Streamable HTTP at ``/mcp`` (answering requests with event streams, or with
``--json`` plain JSON; with ``--sse``, the older HTTP+SSE transport at ``/sse``).

Tools: ``echo``, ``lookup_customer`` (a result with an email and a phone number in it),
``count`` (reports progress), ``wait_forever`` (writes ``started`` and, when cancelled,
``cancelled`` into the markers directory), ``die`` (the process exits mid-call),
``delete_record``, ``secret_tool`` (which access never grants), ``whoami`` (whose token the
request carried). With ``--token`` every request must carry ``Authorization: Bearer T`` (401
otherwise); with ``--user-tokens ann=T1,bob=T2`` (per-user credentials) any of those tokens is
accepted and ``whoami`` names its user.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import uvicorn
from mcp.server.fastmcp import Context, FastMCP


def build(
    markers: Path, *, json_response: bool = False, users: dict[str, str] | None = None
) -> FastMCP:
    server = FastMCP("test-tools", json_response=json_response)
    by_token = {f"Bearer {token}": user for user, token in (users or {}).items()}

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The user whose token this request carried."""
        request = ctx.request_context.request
        header = request.headers.get("authorization", "") if request is not None else ""
        return by_token.get(header, "nobody")

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    @server.tool()
    def lookup_customer(customer_id: str) -> str:
        """A customer's contact details."""
        return f"Customer {customer_id}: Ada Lovelace, ada@example.com, +44 20 7946 0958"

    @server.tool()
    async def count(steps: int, ctx: Context) -> str:
        """Count to ``steps``, reporting progress at each step."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await asyncio.sleep(0.05)
        return f"counted to {steps}"

    @server.tool()
    async def wait_forever() -> str:
        """Never answers (until cancelled)."""
        (markers / "started").write_text("1")
        try:
            await asyncio.sleep(3600)
        except BaseException:
            (markers / "cancelled").write_text("1")
            raise
        return "unreachable"

    @server.tool()
    async def die() -> str:
        """The server process exits in the middle of the call."""
        await asyncio.sleep(0.1)
        os._exit(3)

    @server.tool()
    def delete_record(record_id: str, environment: str) -> str:
        """Delete a record."""
        return f"deleted {record_id} in {environment}"

    @server.tool()
    def secret_tool() -> str:
        """A tool nobody is granted."""
        return "secret"

    return server


class RequireToken:
    def __init__(self, app, tokens: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.app, self.expected = app, {f"Bearer {token}".encode() for token in tokens}

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if (
            scope["type"] == "http"
            and dict(scope["headers"]).get(b"authorization") not in self.expected
        ):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--markers", type=Path, required=True)
    parser.add_argument("--token")
    parser.add_argument("--user-tokens", help="USER=TOKEN,… accepted, named by whoami")
    parser.add_argument("--sse", action="store_true", help="the legacy HTTP+SSE transport")
    parser.add_argument("--json", action="store_true", help="answer requests with plain JSON")
    args = parser.parse_args()
    users = dict(pair.split("=", 1) for pair in args.user_tokens.split(",")) if (
        args.user_tokens) else {}  # fmt: skip
    server = build(args.markers, json_response=args.json, users=users)
    app = server.sse_app() if args.sse else server.streamable_http_app()
    tokens = [*([args.token] if args.token else []), *users.values()]
    if tokens:
        app = RequireToken(app, tokens)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

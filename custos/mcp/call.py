"""One MCP tool call's state on the request context (``ctx.mcp``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from custos.mcp.sessions import McpSession


@dataclass(slots=True)
class ToolCall:
    #: The endpoint called (``/mcp/{endpoint}``): a server or a virtual server.
    endpoint: str
    session: McpSession
    #: The client's JSON-RPC id of its ``tools/call``.
    message_id: Any
    #: The tool's name as the client called it (``jira__get_issue`` on a virtual server).
    name: str
    server: str = ""
    tool: str = ""
    #: ``tools/call`` params as they go to the server (``arguments`` rewritten by a ``mutate``
    #: guardrail; ``_meta`` with the client's progress token).
    params: dict[str, Any] = field(default_factory=dict)
    #: The canonical JSON of the arguments as the caller sent them, and of the result as the
    #: caller got it (their digests go into the audit record, never they).
    arguments_json: bytes = b"{}"
    result_json: bytes | None = None
    #: The tool reported an error in its result (``isError``), the call itself succeeded.
    tool_error: bool | None = None
    #: The tool server's JSON-RPC error code, when it answered one.
    upstream_error: int | None = None
    progress: int = 0
    upstream_id: int | None = None
    cancelled: bool = False
    #: The caller's own credential, for a server with ``auth: passthrough``.
    credential: str | None = field(default=None, repr=False)
    region: str | None = None

    @property
    def qualified(self) -> str:
        """``server/tool``: what access rules, guardrails and records name."""
        return f"{self.server}/{self.tool}"

    @property
    def arguments(self) -> dict[str, Any]:
        arguments = self.params.get("arguments")
        return arguments if isinstance(arguments, dict) else {}

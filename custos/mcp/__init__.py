"""The MCP gateway: registered tool servers behind ``/mcp/{name}``, every tool call governed.

- ``catalog``: ``mcp_servers`` and ``virtual_mcp_servers`` of a revision, as endpoints;
- ``sessions``: the session ids clients get, signed (any replica checks them; no shared state);
- ``upstream``: the gateway as the client of the tool servers (MCP Streamable HTTP over the
  gateway's pooled HTTP client), and ``legacy_sse`` for servers on the older HTTP+SSE transport;
- ``call``: one tool call's state on the request context (``ctx.mcp``);
- ``stages``: the chain stages of a tool call (tool access, ``mcp_tool_pre_invoke``,
  ``mcp_tool_post_invoke``), with ``policy`` asking policy guardrails (cedar, opa) to decide;
- ``terminal``: the chain's second terminal, the proxy (progress, cancellation, failures);
- ``service``: what lives as long as the process (upstream sessions, calls in flight for
  cancellation) and the questions the endpoint and the CLI ask (list, resolve, may call);
- ``jsonrpc``: messages and errors in JSON-RPC 2.0.

docs/mcp.md has the whole.
"""

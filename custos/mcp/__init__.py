"""The MCP gateway: registered tool servers behind ``/mcp/{name}``, every tool call governed.

``catalog`` compiles ``mcp_servers`` and ``virtual_mcp_servers`` per revision; ``sessions``
signs the session ids clients get (any replica checks them, no shared state); ``upstream``
is the gateway's client of the tool servers (MCP Streamable HTTP over the gateway's pooled HTTP
client); ``call`` is one tool call's state on the request context; ``stages`` are the chain
stages of a tool call (tool access, ``mcp_tool_pre_invoke``, ``mcp_tool_post_invoke``);
``terminal`` is the chain's second terminal, the proxy; ``service`` holds what lives as long as
the process (upstream sessions, calls in flight for cancellation). docs/mcp.md has the whole.
"""

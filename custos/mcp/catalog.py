"""The MCP endpoints of one config revision: each server, and each virtual server's choice.

``/mcp/{name}`` serves a server of ``mcp_servers`` (all its tools, as access allows) or a
virtual server of ``virtual_mcp_servers`` (the tools its ``tools`` globs choose, from the
servers they name, as access allows). A tool is always known to access rules, guardrails and
the audit record by ``server/tool``, whichever endpoint it was called through.
"""

from __future__ import annotations

from dataclasses import dataclass

from custos.config.schema import Config
from custos.policy.patterns import ModelPattern

#: A tool offered by a virtual server under ``{server}__{tool}`` (two chosen tools share a name).
SEPARATOR = "__"


@dataclass(frozen=True, slots=True)
class McpEndpoint:
    name: str
    #: The servers whose tools it may offer.
    servers: tuple[str, ...]
    virtual: bool
    #: A virtual server's choice (``server/tool`` globs); ``None``: every tool of its server.
    chosen: ModelPattern | None = None
    description: str | None = None

    def offers(self, server: str, tool: str) -> bool:
        if server not in self.servers:
            return False
        return self.chosen is None or self.chosen.matches(f"{server}/{tool}")


class McpCatalog:
    def __init__(self, config: Config) -> None:
        self.servers = config.mcp_servers
        self.endpoints: dict[str, McpEndpoint] = {
            name: McpEndpoint(name, (name,), False) for name in config.mcp_servers
        }
        for name, settings in config.virtual_mcp_servers.items():
            chosen = ModelPattern(settings.tools)
            servers = tuple(s for s in config.mcp_servers
                            if any(_server_part_matches(g, s) for g in settings.tools))  # fmt: skip
            self.endpoints[name] = McpEndpoint(name, servers, True, chosen, settings.description)


def _server_part_matches(glob: str, server: str) -> bool:
    return ModelPattern([glob.split("/", 1)[0]]).matches(server)

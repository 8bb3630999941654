"""``McpGateway``: what the MCP gateway keeps for as long as the process runs.

The upstream sessions (``custos.mcp.upstream``), the session-id signer, the calls in flight on
this replica (so that a client's ``notifications/cancelled`` reaches the call it names), and
the questions the HTTP layer and the CLI ask of a revision: which tools a caller may see on an
endpoint (``list_tools``), which server and tool a name stands for (``resolve``), whether a
caller may call a tool (``may_call``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from custos import __version__
from custos.config.mcp import McpServerSettings
from custos.context import Decision
from custos.errors import GatewayError
from custos.mcp.catalog import SEPARATOR, McpCatalog, McpEndpoint
from custos.mcp.credentials import per_user_credential
from custos.mcp.sessions import McpSession, SessionCodec
from custos.mcp.upstream import McpUpstream, McpUpstreamError, final
from custos.policy.access import AccessDecision
from custos.providers.transport import Transport
from custos.state.mcp_credentials import CredentialCache, CredentialCipher

if TYPE_CHECKING:
    from custos.identity.principal import Principal
    from custos.runtime import Runtime
    from custos.state.invalidation import Invalidation
    from custos.state.store import Store

log = logging.getLogger("custos.mcp")

#: Pages of ``tools/list`` followed per server (a server with more is cut there).
MAX_PAGES = 20


@dataclass(frozen=True, slots=True)
class ListedTool:
    server: str
    tool: str
    #: The name the endpoint offers it under.
    name: str
    definition: dict[str, Any]


class McpGateway:
    def __init__(self, transport: Transport) -> None:
        self.upstream = McpUpstream(transport, __version__)
        self.codec: SessionCodec | None = None
        #: (session nonce, client request id) → cancels that call.
        self.in_flight: dict[tuple[str, Any], Callable[[str | None], None]] = {}
        self._catalogs: weakref.WeakKeyDictionary[Runtime, McpCatalog] = weakref.WeakKeyDictionary()
        #: The users' own credentials for ``auth: per_user`` servers (``open_credentials``).
        self.credentials: CredentialCache | None = None

    def start(self, token_hash_key: bytes) -> None:
        self.codec = SessionCodec(token_hash_key)

    async def open_credentials(
        self, store: Store, token_hash_key: bytes, invalidation: Invalidation | None
    ) -> None:
        """Load the per-user credentials into memory and follow their changes."""
        cache = CredentialCache(store, CredentialCipher(token_hash_key), invalidation)
        await cache.start()
        self.credentials = cache

    async def close_credentials(self) -> None:
        if self.credentials is not None:
            await self.credentials.close()
            self.credentials = None

    def catalog(self, runtime: Runtime) -> McpCatalog:
        catalog = self._catalogs.get(runtime)
        if catalog is None:
            catalog = self._catalogs[runtime] = McpCatalog(runtime.config)
        return catalog

    # -- access --------------------------------------------------------------------------------

    @staticmethod
    def may_call(runtime: Runtime, principal: Principal, server: str, tool: str) -> AccessDecision:
        """Access to ``server/tool``: the token's and account's narrowing (which must name the
        tool as ``mcp:server/tool``, globs allowed), then the access rules (default deny)."""
        qualified = f"{server}/{tool}"
        if not principal.may_use_model(f"mcp:{qualified}"):
            return _OUTSIDE_NARROWING
        return runtime.access.decide_tool(principal.subjects, qualified)

    def credential(
        self, settings: McpServerSettings, server: str, principal: Principal, token: str | None
    ) -> str | None:
        """What the gateway presents to the server for this caller (``passthrough``: the
        caller's own IdP JWT, a gateway token never leaving the gateway; ``per_user``: the
        caller's own stored credential, from memory)."""
        if settings.auth.type == "per_user":
            return per_user_credential(self.credentials, server, principal)
        if settings.auth.type != "passthrough":
            return None
        if not principal.token_id.startswith("jwt:") or not token:
            raise GatewayError(
                403,
                "passthrough_needs_jwt",
                f"The MCP server '{server}' is called with the caller's own identity: "
                "authenticate with your identity provider's token, not a gateway token.",
            )
        return token

    # -- listing and resolving -----------------------------------------------------------------

    async def list_tools(
        self,
        runtime: Runtime,
        endpoint: McpEndpoint,
        session: McpSession,
        principal: Principal,
        token: str | None,
        *,
        check_access: bool = True,
    ) -> list[ListedTool]:
        """The tools the endpoint offers that the caller may call, under the names it offers
        them (a failing server of a virtual endpoint is left out; of a server's own endpoint
        it is the caller's error)."""
        servers = self.catalog(runtime).servers
        results = await asyncio.gather(
            *(self._server_tools(s, servers[s], session, principal, token)
              for s in endpoint.servers),
            return_exceptions=True,
        )  # fmt: skip
        listed: list[tuple[str, dict[str, Any]]] = []
        for server, found in zip(endpoint.servers, results, strict=True):
            if isinstance(found, BaseException):
                if not endpoint.virtual:
                    raise _listing_failed(server, found)
                log.warning("mcp: %s left out of %s (%s)", server, endpoint.name, found)
                continue
            for tool in found:
                name = tool.get("name")
                if not isinstance(name, str) or not endpoint.offers(server, name):
                    continue
                if check_access and not self.may_call(runtime, principal, server, name).allowed:
                    continue
                listed.append((server, tool))
        counts: dict[str, int] = {}
        for _, tool in listed:
            counts[tool["name"]] = counts.get(tool["name"], 0) + 1
        out = []
        for server, tool in listed:
            name = tool["name"]
            if endpoint.virtual and counts[name] > 1:
                name = f"{server}{SEPARATOR}{name}"
            out.append(ListedTool(server, tool["name"], name, {**tool, "name": name}))
        return out

    async def _server_tools(
        self,
        server: str,
        settings: McpServerSettings,
        session: McpSession,
        principal: Principal,
        token: str | None,
    ) -> list[dict[str, Any]]:
        credential = self.credential(settings, server, principal, token)
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params = {} if cursor is None else {"cursor": cursor}
            async with asyncio.timeout(settings.timeouts.call_s):
                exchange = await self.upstream.send(
                    server, settings, session.nonce, "tools/list", params, credential
                )
                answer = await final(exchange)
            result = answer.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise McpUpstreamError("malformed")
            tools += [t for t in result["tools"] if isinstance(t, dict)]
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return tools

    async def resolve(
        self,
        runtime: Runtime,
        endpoint: McpEndpoint,
        session: McpSession,
        principal: Principal,
        token: str | None,
        name: str,
    ) -> tuple[str, str]:
        """The server and tool a called name stands for on ``endpoint``. On a server's own
        endpoint the name is the tool's; on a virtual one it is looked up in the endpoint's
        listing (without access filtering: access is decided, and recorded, by the chain)."""
        if not endpoint.virtual:
            return endpoint.name, name
        server, sep, tool = name.partition(SEPARATOR)
        if sep and server in endpoint.servers and endpoint.offers(server, tool):
            return server, tool
        for listed in await self.list_tools(
            runtime, endpoint, session, principal, token, check_access=False
        ):
            if listed.name == name:
                return listed.server, listed.tool
        raise unknown_tool(name, endpoint.name)


def unknown_tool(name: str, endpoint: str) -> GatewayError:
    return GatewayError(404, "tool_not_found", f"The MCP endpoint '{endpoint}' has no tool "
                        f"'{name}'; tools/list shows the tools you may call.",
                        param="name")  # fmt: skip


def _listing_failed(server: str, exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    reason = exc.reason if isinstance(exc, McpUpstreamError) else "timeout"
    return upstream_failed(server, reason)


#: The gateway's error code for each way a tool server fails (``McpUpstreamError.reason``).
_UPSTREAM_CODES = {
    "unreachable": "upstream_unreachable",
    "malformed": "upstream_malformed_response",
    "broken": "upstream_stream_broken",
    "too_large": "upstream_response_too_large",
}


def upstream_failed(server: str, reason: str) -> GatewayError:
    """The caller's error for a tool server that failed (never the server's own text)."""
    if reason == "timeout":
        return GatewayError(504, "upstream_timeout",
                            f"The MCP server '{server}' did not answer in time.")  # fmt: skip
    code = _UPSTREAM_CODES.get(reason, "upstream_error")
    return GatewayError(502, code, f"The MCP server '{server}' failed ({reason}).")


_OUTSIDE_NARROWING = AccessDecision(
    False,
    None,
    "outside what this token or virtual account may call",
    Decision("authorize", None, "deny", "scope"),
)

"""Config schema of ``mcp_servers:`` and ``virtual_mcp_servers:`` (DESIGN §2, docs/mcp.md).

An MCP server registered with the gateway is served to clients at ``/mcp/{id}``; the gateway
calls it as the client (``url``, ``transport``) with its own credential for it (``auth``)::

    mcp_servers:
      jira:
        url: http://127.0.0.1:9000/mcp
        transport: streamable_http       # streamable_http (the current MCP transport) | sse
                                         # (the HTTP+SSE transport of 2024-11-05: url is its
                                         # event stream, e.g. http://host/sse)
        region: eu                       # recorded in every tool call's audit record
        auth: {type: bearer, token: "${env:JIRA_MCP_TOKEN}"}
        timeouts: {connect_s: 5, call_s: 300}

    virtual_mcp_servers:                 # chosen tools of several servers under one name
      support-desk:
        tools: [jira/get_issue, jira/search_*, github/list_issues]

``auth.type``: ``none``; ``bearer`` (``token``, a secret reference, sent as ``Authorization:
Bearer``); ``passthrough`` (the caller's own IdP JWT is sent on; a caller that authenticated
with a Custos token is refused, so a gateway token never leaves the gateway); ``per_user``
(each user's own credential, stored by them through the admin API and kept encrypted in the
store, ``custos.state.mcp_credentials``; sent in ``header`` after ``scheme``, by default
``Authorization: Bearer``).

A virtual server has the names of the real ones in one namespace: an id may not be both.
Its tools keep their own names; two chosen tools of one name are both offered as
``{server}__{tool}``. What a caller may call is decided by the access rules' ``mcp_tools``
(``server/tool`` globs) whichever endpoint they come through: a virtual server only chooses.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from custos.request_values import RequestValue

_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: ``server/tool`` with ``*`` globs in either part (``jira/*``, ``*/search_*``).
_TOOL_GLOB = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9_*-]{0,63}/[A-Za-z0-9_*][A-Za-z0-9._*/-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpAuth(_Strict):
    """How the gateway authenticates to the tool server (the module docstring)."""

    type: Literal["none", "bearer", "passthrough", "per_user"] = "none"
    #: ``bearer``: the token, a secret reference (``${env:NAME}``, ``${file:path}``).
    token: RequestValue | None = Field(default=None, repr=False)
    #: ``per_user``: the header the user's credential is sent in, and the scheme before it
    #: (``null``: the credential alone, e.g. ``header: X-Api-Key, scheme: null``).
    header: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")] = "Authorization"
    scheme: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")] | None = "Bearer"

    @model_validator(mode="after")
    def _fits_its_type(self) -> McpAuth:
        if self.type == "bearer" and not self.token:
            raise ValueError("bearer needs token: ${env:NAME} or ${file:path}")
        if self.type != "bearer" and self.token is not None:
            raise ValueError(f"auth type {self.type} takes no token")
        if self.type != "per_user" and {"header", "scheme"} & self.model_fields_set:
            raise ValueError("header and scheme are per_user's: bearer and passthrough send "
                             "Authorization: Bearer")  # fmt: skip
        if self.type == "per_user" and self.header.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {self.header!r} is the transport's own")
        return self

    def header_for(self, credential: str) -> tuple[str, str]:
        """The header carrying ``credential`` (per_user's header and scheme; Bearer else)."""
        if self.type != "per_user":
            return "authorization", f"Bearer {credential}"
        value = credential if self.scheme is None else f"{self.scheme} {credential}"
        return self.header.lower(), value


#: Headers the MCP transport sets itself, which a credential may not replace.
_RESERVED_HEADERS = frozenset({"content-type", "accept", "mcp-session-id", "mcp-protocol-version",
                               "content-length", "host", "last-event-id"})  # fmt: skip


class McpTimeouts(_Strict):
    connect_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    #: The longest a tool call (or a ``tools/list``) may take, progress notifications included.
    call_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0


def tool_glob(value: str) -> str:
    if not _TOOL_GLOB.match(value):
        raise ValueError(f"{value!r} must be SERVER/TOOL (globs with *: jira/*, */search_*)")
    return value


class McpServerSettings(_Strict):
    url: RequestValue
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    region: str | None = None
    auth: McpAuth = Field(default_factory=McpAuth)
    timeouts: McpTimeouts = Field(default_factory=McpTimeouts)
    #: The largest answer read from the server (a tool result, a tools/list).
    max_response_bytes: Annotated[int, Field(gt=0, le=256 * 1024 * 1024)] = 16 * 1024 * 1024

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class VirtualMcpServerSettings(_Strict):
    #: ``server/tool`` names or globs of the tools offered here.
    tools: Annotated[list[str], Field(min_length=1)]
    description: str | None = None

    @field_validator("tools")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        return [tool_glob(v) for v in value]


McpServers = dict[Annotated[str, Field(pattern=_ID)], McpServerSettings]
VirtualMcpServers = dict[Annotated[str, Field(pattern=_ID)], VirtualMcpServerSettings]


def check_mcp_names(servers: McpServers, virtual: VirtualMcpServers) -> None:
    """A virtual server's id is not a real one's, and its tools name configured servers."""
    for name, settings in virtual.items():
        if name in servers:
            raise ValueError(f"virtual_mcp_servers.{name}: an MCP server has this id")
        for tool in settings.tools:
            server = tool.split("/", 1)[0]
            if "*" not in server and server not in servers:
                raise ValueError(
                    f"virtual_mcp_servers.{name}: {tool!r} names no server of mcp_servers"
                )

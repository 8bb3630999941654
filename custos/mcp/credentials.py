"""``auth: per_user``: the caller's own credential for a tool server, or why there is none.

The credential comes from the in-memory ``CredentialCache`` (``custos.state.mcp_credentials``):
no table is read on a call. Only users hold credentials: a virtual account is an agent of a
team, not a person with an account at the tool server, so it is refused
(``mcp_credential_needs_user``); give such a server a ``bearer`` credential of its own on
another registration instead. A user without one is refused ``mcp_credential_missing`` before
the server is called, with how to set one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from custos.errors import GatewayError
from custos.state.mcp_credentials import CredentialCache, CredentialUnreadable

if TYPE_CHECKING:
    from custos.identity.principal import Principal

log = logging.getLogger("custos.mcp")


def per_user_credential(cache: CredentialCache | None, server: str, principal: Principal) -> str:
    """The caller's credential for ``server`` in clear; ``GatewayError`` when there is none."""
    if principal.kind != "user":
        raise GatewayError(
            403,
            "mcp_credential_needs_user",
            f"The MCP server '{server}' is called with each user's own credential; a virtual "
            "account has none: call it with a personal token.",
        )
    if cache is None:
        raise GatewayError(503, "not_ready", "The gateway is starting; retry in a moment.")
    try:
        credential = cache.get(principal.id, server)
    except CredentialUnreadable as exc:
        log.warning("mcp: the credential of %s for %s is unreadable (%s)", principal.id, server,
                    exc)  # fmt: skip
        credential = None
    if credential is None:
        raise missing(server)
    return credential


def missing(server: str) -> GatewayError:
    return GatewayError(
        403,
        "mcp_credential_missing",
        f"The MCP server '{server}' is called with your own credential for it, and you have "
        f"none stored: set it with 'custos mcp credential set {server}' (reads it from stdin) "
        f"or PUT /admin/v1/mcp/credentials/{server}.",
    )

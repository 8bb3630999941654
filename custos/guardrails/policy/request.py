"""``PolicyRequest``s built from what the gateway knows about a request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from custos.context import RequestContext
from custos.guardrails.policy.decision import PolicyRequest
from custos.identity.principal import Principal


def principal_of(principal: Principal | None) -> dict[str, Any]:
    """The ``principal`` of a ``PolicyRequest``: who calls, as policies name them (a user by
    email, a virtual account by name), with its internal id, teams and roles."""
    if principal is None:
        return {"type": "User", "id": "", "uid": "", "teams": [], "roles": []}
    return {
        "type": "VirtualAccount" if principal.kind == "virtual_account" else "User",
        "id": principal.name,
        "uid": principal.id,
        "teams": sorted(principal.teams),
        "roles": sorted(principal.roles),
    }


def policy_context(
    metadata: Mapping[str, str], data_classes: Iterable[str], unix_ms: int
) -> dict[str, Any]:
    """The ``context`` of a ``PolicyRequest``: the request's metadata, the data classes it
    carries (declared or detected) and when it was made (ISO 8601, UTC, milliseconds)."""
    at = datetime.fromtimestamp(unix_ms / 1000, UTC)
    return {
        "metadata": dict(metadata),
        "data_classes": sorted(set(data_classes)),
        "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def context_of(ctx: RequestContext) -> dict[str, Any]:
    return policy_context(ctx.metadata, (d.name for d in ctx.data_classes), ctx.started_unix_ms)


def model_call(ctx: RequestContext) -> PolicyRequest:
    """The ``call_model`` request of a model call: the model as the caller named it."""
    return PolicyRequest(
        principal=principal_of(ctx.principal),
        action="call_model",
        resource={"type": "Model", "name": ctx.model},
        context=context_of(ctx),
    )


def tool_call(
    principal: Principal | None,
    server: str,
    tool: str,
    arguments: Mapping[str, Any],
    context: dict[str, Any],
) -> PolicyRequest:
    """The ``call_tool`` request of an MCP ``tools/call`` (``context`` from ``policy_context``
    or ``context_of``)."""
    return PolicyRequest(
        principal=principal_of(principal),
        action="call_tool",
        resource={"type": "Tool", "server": server, "name": tool, "arguments": dict(arguments)},
        context=context,
    )

"""The stages of a tool call's chain (``custos.stage``), besides the ones every request has.

- ``AuthorizeTool`` (stage ``authorize``): may this caller call ``server/tool``? The token's
  and account's narrowing, then the access rules' ``mcp_tools`` (default deny).
- ``ToolPreInvoke`` (stage ``guardrails``): the ``mcp_tool_pre_invoke`` guardrails whose
  ``when`` matches, in file order, on the call's arguments: policy guardrails (``cedar``,
  ``opa``) are asked to decide, content guardrails inspect (and ``mutate`` rewrites) every
  string of the arguments, webhooks are called before the tool runs.
- ``ToolPostInvoke`` (stage ``guardrails``): the ``mcp_tool_post_invoke`` guardrails on the
  tool's result (the text of its content blocks, the strings of its structured content)
  before the client sees it; ``mutate`` redacts, ``validate`` replaces the result with a
  JSON-RPC error. It also keeps what the caller got for the audit record's digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from custos.context import RequestContext
from custos.errors import GatewayError
from custos.guardrails.rules import Guardrail
from custos.guardrails.stages import _inspect, _record, _remote_verdict, _state
from custos.guardrails.text import TextSlot, request_slots, response_slots
from custos.mcp import jsonrpc
from custos.mcp.call import ToolCall
from custos.mcp.policy import PRE_INVOKE, decide_by_policy
from custos.mcp.service import McpGateway
from custos.policy.when import Facts
from custos.stage import GatewayResponse

POST_INVOKE = "mcp_tool_post_invoke"


def tool_facts(ctx: RequestContext) -> Facts:
    assert ctx.principal is not None and ctx.mcp is not None
    return Facts(ctx.principal.subjects, "", ctx.metadata,
                 frozenset(d.name for d in ctx.data_classes), ctx.mcp.qualified)  # fmt: skip


class AuthorizeTool:
    name = "authorize"

    def enter(self, ctx: RequestContext) -> None:
        principal, call = ctx.principal, ctx.mcp
        assert principal is not None and call is not None
        decision = McpGateway.may_call(ctx.runtime, principal, call.server, call.tool)
        ctx.decisions.append(decision.decision)
        if not decision.allowed:
            raise GatewayError(
                403,
                "tool_not_allowed",
                f"The tool '{call.qualified}' is not allowed for {principal.name}: "
                f"{decision.reason}.",
                param="name",
            )


def _applicable(guardrails: Sequence[Guardrail], ctx: RequestContext) -> list[Guardrail]:
    known = tool_facts(ctx)
    return [g for g in guardrails if g.when.matches(known)]


class ToolPreInvoke:
    name = "guardrails"

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self.guardrails = tuple(g for g in guardrails if g.hook == PRE_INVOKE)

    async def enter(self, ctx: RequestContext) -> None:
        applicable = _applicable(self.guardrails, ctx)
        if not applicable:
            return
        call: ToolCall = ctx.mcp
        numbering = _state(ctx).numbering
        slots = request_slots("tool_call", call.params)
        for guardrail in applicable:
            policy = getattr(guardrail, "policy", None)
            if policy is not None:
                await decide_by_policy(ctx, guardrail, policy)
                continue
            await _check(ctx, guardrail, slots, numbering, PRE_INVOKE)


async def _check(ctx: RequestContext, guardrail: Guardrail, slots: list[TextSlot],
                 numbering: Any, hook: str) -> bool:  # fmt: skip
    """One content or webhook guardrail over ``slots``: records it, raises its refusal;
    whether it rewrote them."""
    if guardrail.remote:
        verdict = await _remote_verdict(ctx, guardrail, slots, hook)
    elif guardrail.type == "metadata":
        verdict = guardrail.check_metadata(ctx.metadata)
    else:
        verdict = _inspect(guardrail, slots, numbering)
    _record(ctx, guardrail, verdict, hook)
    return verdict.changed


class ToolPostInvoke:
    name = "guardrails"

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self.guardrails = tuple(g for g in guardrails if g.hook == POST_INVOKE
                                and getattr(g, "policy", None) is None)  # fmt: skip

    async def on_response(self, ctx: RequestContext, response: GatewayResponse) -> None:
        if response.stream is None and response.body:
            response.body = await self.guard(ctx, response.body)

    async def on_chunk(self, ctx: RequestContext, chunk: bytes, last: bool) -> bytes:
        """A stream's last chunk is the response event (``jsonrpc.sse_event``)."""
        if not last or not chunk.startswith(b"event: message\ndata: "):
            return chunk
        data = chunk[len(b"event: message\ndata: ") :].rstrip(b"\n")
        guarded = await self.guard(ctx, data)
        return chunk if guarded is data else jsonrpc.sse_event(guarded)

    async def guard(self, ctx: RequestContext, body: bytes) -> bytes:
        """The response message after the guardrails (the same bytes when none changed it)."""
        call: ToolCall = ctx.mcp
        message = orjson.loads(body)
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            return body
        changed = False
        applicable = _applicable(self.guardrails, ctx) if self.guardrails else []
        if applicable:
            slots = response_slots("tool_call", result)
            numbering = _state(ctx).numbering
            for guardrail in applicable:
                changed = await _check(ctx, guardrail, slots, numbering, POST_INVOKE) or changed
        call.result_json = orjson.dumps(result, option=orjson.OPT_SORT_KEYS)
        return orjson.dumps(message) if changed else body

"""Building the records of schema version 3, one function per event type.

Keys are flat. Where OpenTelemetry's GenAI (or general) semantic conventions name a field, the
key is that name (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``error.type``,
``http.response.status_code``, ``cloud.region``); other keys are this gateway's own. Every key of
an event type is always present (``null`` when unknown), so readers see one stable shape.

``llm.call`` (exactly one per LLM request, built from the request context after the path ran):

    schema_version, event_type, event_id, salt, request_id, time_start, time_end,
    gateway.instance, gateway.version, config.revision,
    principal.kind (user | virtual_account), principal.id, principal.teams, team, auth.token_id,
    metadata, data_classes [{class, count, source}], data_classes.detectors,
    api.protocol (openai | anthropic), api.operation (chat | messages | responses | embeddings),
    gen_ai.operation.name (chat | embeddings),
    gen_ai.request.model, gen_ai.request.stream, gen_ai.request.max_tokens,
    gen_ai.provider.name, provider.account, provider.model, provider.upstream_model, cloud.region,
    attempts [{target, region, status, error, offset_ms, latency_ms}], skips [{target, reason}],
    decisions [{stage, rule, decision, reason, input}],
    limits.estimated_input_tokens, limits.estimated_output_tokens, limits.reserved_micros,
    http.response.status_code, outcome, stopped_at, error.type,
    gen_ai.usage.input_tokens, gen_ai.usage.output_tokens, gen_ai.usage.cache_read.input_tokens,
    gen_ai.usage.cache_creation.input_tokens, gen_ai.usage.reasoning.output_tokens,
    usage.estimated, cost_micros, currency, latency_ms, time_to_first_chunk_ms

``team`` is the one team the call is attributed to (reports group by it): a virtual account's
team; for a user, the metadata ``team`` if the user is a member of it, else their only team,
else ``null``. ``outcome`` is one of ``served``, ``denied`` (a stage of the gateway stopped it;
``stopped_at`` names which), ``upstream_error``, ``client_disconnected`` and ``error``.
``decisions`` and ``stopped_at`` are exactly what the stages wrote into the request context
when they decided (``custos.context.Decision``): nothing here infers them.

Version 3 (from 2): ``decisions`` entries gained ``reason`` and ``input`` and their ``decision``
is one of ``allow``, ``deny``, ``mutate``, ``audit_only`` (2's ``allow_over_limit`` is
``audit_only`` with reason ``over_limit``; ``allow_fail_open`` is ``allow`` with reason
``fail_open``); ``ttfc_ms`` is named ``time_to_first_chunk_ms``; a translation refusal stops
at ``route`` (was ``read_request``), counters that are down stop at ``budget`` or
``rate_limit`` with outcome ``denied`` (was ``gateway``, ``error``).

With ``audit.content`` other than ``none``, ``llm.call`` also has ``content.*`` fields
(digests, or the ciphertext's hash, key id and size: ``custos.audit.records.content``); with
``none`` it has none.

``mcp.tool_call`` (exactly one per ``tools/call`` through ``/mcp/{name}``, built the same way):

    schema_version, event_type, event_id, salt, request_id, time_start, time_end,
    gateway.instance, gateway.version, config.revision,
    principal.kind, principal.id, principal.teams, team, auth.token_id, metadata,
    data_classes [{class, count, source}], data_classes.detectors, api.protocol (mcp),
    mcp.endpoint (the server or virtual server called), mcp.server, mcp.tool, mcp.tool.called_as,
    mcp.session (the session's random nonce), cloud.region (the server's),
    mcp.arguments.hmac_sha256, mcp.result.hmac_sha256, mcp.result.is_error,
    mcp.upstream.error_code, mcp.progress_notifications,
    decisions [{stage, rule, decision, reason, input}],
    http.response.status_code, outcome, stopped_at, error.type, latency_ms

The two digests are HMAC-SHA-256 keyed by the record's salt (as ``audit.content: hash``
makes them for model calls) over the canonical JSON of the arguments as the caller sent them
and of the result as the caller received it (after redaction); ``null`` when there was none.
``outcome`` is as for ``llm.call``, plus ``cancelled`` (the client cancelled the call). With
``audit.content`` other than ``none`` it has the ``content.*`` fields too (the tool and its
arguments as the request part, the result as the response part).

Never in a record: the bearer token (only its id), provider keys, request or response content.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from custos.audit.gateway_info import GatewayInfo
from custos.audit.records.record import (
    ADMIN_CHANGE,
    AUDIT_PURGE,
    AUTH_FAILURE,
    CONFIG_REVISION,
    LLM_CALL,
    MCP_TOOL_CALL,
    new_salt,
    rfc3339_ms,
    unix_ms,
)
from custos.wire import MAX_INT, MAX_TOKENS, Usage

if TYPE_CHECKING:
    from custos.context import Decision, RequestContext
    from custos.runtime import Runtime

#: ``gen_ai.provider.name`` for each provider account type (the conventions' well-known values;
#: an OpenAI-compatible server has none, so it gets its own).
PROVIDER_NAMES = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "openai_compatible": "openai_compatible",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
}
#: OpenTelemetry's well-known values: a Responses API call is a chat (the route is in the
#: ``api.operation`` field beside it).
OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "count_tokens": "count_tokens",
}

#: Secrets never belong in an admin event; these keys are dropped from before/after regardless.
_SECRET_KEYS = frozenset({"secret", "token", "token_hash", "api_key", "password", "key"})


def outcome_of(ctx: RequestContext) -> str:
    """How the request ended, from what the chain wrote into its context."""
    if ctx.client_disconnected or ctx.stopped_at == "client":
        return "client_disconnected"
    stage = ctx.stopped_at
    if stage is None and ctx.error_code is None and 0 < ctx.status < 400:
        return "served"
    if stage == "provider":
        return "upstream_error"
    if ctx.error_code == "internal_error":
        return "error"
    return "denied"


# -- llm.call --------------------------------------------------------------------------------------


def llm_call(
    ctx: RequestContext, gateway: GatewayInfo, ended_ns: int
) -> tuple[dict[str, Any], int]:
    """The ``llm.call`` record of a settled request, and its ``time_start`` in Unix ms.
    ``ended_ns``: when the request was settled (``time.monotonic_ns``)."""
    runtime = ctx.runtime
    served = ctx.served
    usage = ctx.usage or _NO_USAGE
    start_ms = ctx.started_unix_ms
    latency_ms = (ended_ns - ctx.started_ns) // 1_000_000
    status = ctx.status
    code = ctx.error_code
    provider_type = account = model = upstream_model = region = None
    if served is not None:
        settings = runtime.config.providers.get(served.account)
        provider_type = settings.type if settings is not None else None
        account, model = served.account, served.model
        upstream_model, region = served.upstream_model, served.region
    # What the budget and rate-limit stages charged at admission (their decisions' input).
    estimated_in = estimated_out = reserved = None
    metering = ctx.limits
    if metering is not None:
        estimated_in = metering.estimated_input_tokens
        estimated_out = metering.estimated_output_tokens
        reserved = metering.reserved_micros
    body = ctx.body
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = body.get("max_output_tokens")
    record: dict[str, Any] = {
        "event_type": LLM_CALL,
        **_call_fields(ctx, gateway, start_ms, latency_ms),
        "api.protocol": ctx.protocol,
        "api.operation": ctx.operation,
        "gen_ai.operation.name": OPERATIONS.get(ctx.operation, ctx.operation),
        "gen_ai.request.model": ctx.model or None,
        "gen_ai.request.stream": ctx.stream,
        # Out of range only in a request refused for it at intake (read_request).
        "gen_ai.request.max_tokens": max_tokens
        if type(max_tokens) is int and 0 < max_tokens <= MAX_TOKENS
        else None,
        "gen_ai.provider.name": PROVIDER_NAMES.get(provider_type or "", provider_type),
        "provider.account": account,
        "provider.model": model,
        "provider.upstream_model": upstream_model,
        "cloud.region": region,
        "attempts": [
            {
                "target": a.target,
                "region": _region(runtime, a.target),
                "status": a.status,
                "error": a.error,
                "offset_ms": max(0, (a.started_ns - ctx.started_ns) // 1_000_000),
                "latency_ms": a.latency_ms,
            }
            for a in ctx.attempts
        ],
        "skips": [{"target": s.target, "reason": s.reason} for s in ctx.skips],
        "decisions": [_decision(d) for d in ctx.decisions],
        "limits.estimated_input_tokens": estimated_in,
        "limits.estimated_output_tokens": estimated_out,
        "limits.reserved_micros": reserved,
        "http.response.status_code": status,
        "outcome": outcome_of(ctx),
        "stopped_at": ctx.stopped_at,
        "error.type": code,
        "gen_ai.usage.input_tokens": _count(usage.input_tokens),
        "gen_ai.usage.output_tokens": _count(usage.output_tokens),
        "gen_ai.usage.cache_read.input_tokens": _count(usage.cached_input_tokens),
        "gen_ai.usage.cache_creation.input_tokens": _count(usage.cache_write_tokens),
        "gen_ai.usage.reasoning.output_tokens": _count(usage.reasoning_tokens),
        "usage.estimated": bool(usage.estimated),
        "cost_micros": _count(ctx.cost_micros),
        "currency": "USD",
        "latency_ms": latency_ms,
        "time_to_first_chunk_ms": ctx.time_to_first_chunk_ms,
    }
    return record, start_ms


_NO_USAGE = Usage()


def _call_fields(
    ctx: RequestContext, gateway: GatewayInfo, start_ms: int, latency_ms: int
) -> dict[str, Any]:
    """The fields a model call's and a tool call's records share: when, where, under which
    revision, who (with their teams and token), the request's metadata and data classes."""
    principal = ctx.principal
    return {
        "request_id": ctx.request_id,
        "time_start": rfc3339_ms(start_ms),
        "time_end": rfc3339_ms(start_ms + latency_ms),
        "gateway.instance": gateway.instance,
        "gateway.version": gateway.version,
        "config.revision": ctx.runtime.revision,
        "principal.kind": principal.kind if principal is not None else None,
        "principal.id": principal.id if principal is not None else None,
        "principal.teams": list(principal.teams) if principal is not None else [],
        "team": _team(ctx),
        "auth.token_id": principal.token_id if principal is not None else None,
        "metadata": dict(ctx.metadata),
        "data_classes": [
            {"class": d.name, "count": d.count, "source": d.source} for d in ctx.data_classes
        ],
        "data_classes.detectors": ctx.data_class_detectors,
    }


# -- mcp.tool_call ---------------------------------------------------------------------------------


def mcp_tool_call(
    ctx: RequestContext, gateway: GatewayInfo, ended_ns: int
) -> tuple[dict[str, Any], int]:
    """The ``mcp.tool_call`` record of a settled tool call, and its ``time_start`` in Unix ms."""
    call = ctx.mcp
    start_ms = ctx.started_unix_ms
    latency_ms = (ended_ns - ctx.started_ns) // 1_000_000
    salt = new_salt()
    key = bytes.fromhex(salt)
    outcome = "cancelled" if ctx.error_code == "cancelled" else outcome_of(ctx)
    record: dict[str, Any] = {
        "event_type": MCP_TOOL_CALL,
        "salt": salt,
        **_call_fields(ctx, gateway, start_ms, latency_ms),
        "api.protocol": "mcp",
        "mcp.endpoint": call.endpoint,
        "mcp.server": call.server or None,
        "mcp.tool": call.tool or None,
        "mcp.tool.called_as": call.name,
        "mcp.session": call.session.nonce,
        "cloud.region": call.region,
        "mcp.arguments.hmac_sha256": _keyed(key, call.arguments_json) if call.server else None,
        "mcp.result.hmac_sha256": _keyed(key, call.result_json),
        "mcp.result.is_error": call.tool_error,
        "mcp.upstream.error_code": call.upstream_error,
        "mcp.progress_notifications": call.progress,
        "decisions": [_decision(d) for d in ctx.decisions],
        "http.response.status_code": ctx.status,
        "outcome": outcome,
        "stopped_at": ctx.stopped_at,
        "error.type": ctx.error_code,
        "latency_ms": latency_ms,
    }
    return record, start_ms


def _keyed(key: bytes, content: bytes | None) -> str | None:
    return None if content is None else hmac.new(key, content, hashlib.sha256).hexdigest()


def unbuilt_llm_call(
    ctx: RequestContext, gateway: GatewayInfo, ended_ns: int
) -> tuple[dict[str, Any], int]:
    """The ``llm.call`` record of a request whose full record could not be built (a defect,
    logged where it happened): what the request was and how it ended, from fields that cannot
    fail, and ``audit.repaired: ["$"]`` saying that everything else is missing."""
    start_ms = ctx.started_unix_ms
    code = ctx.error_code
    record: dict[str, Any] = {
        "event_type": MCP_TOOL_CALL if ctx.mcp is not None else LLM_CALL,
        "request_id": ctx.request_id,
        "time_start": rfc3339_ms(start_ms),
        "time_end": rfc3339_ms(start_ms + (ended_ns - ctx.started_ns) // 1_000_000),
        "gateway.instance": gateway.instance,
        "gateway.version": gateway.version,
        "config.revision": ctx.runtime.revision,
        "api.protocol": ctx.protocol,
        "http.response.status_code": ctx.status,
        "outcome": outcome_of(ctx),
        "stopped_at": ctx.stopped_at,
        "error.type": code,
        "audit.repaired": ["$"],
    }
    return record, start_ms


def repaired(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` made recordable, for a record whose sealing failed: an integer past
    ±(2**53 - 1) becomes that bound, a float its integer part, text that is not UTF-8 has the
    offending characters replaced, anything else becomes null; ``audit.repaired`` lists the
    paths changed (``$.limits.reserved_micros``). Every value the gateway records is bounded
    where it enters (a 400 at intake, a provider's usage clamped), so this is a safety net that
    keeps a request from going unrecorded, never a path a request is expected to take."""
    changed: list[str] = []
    fixed = _repair(record, "$", changed)
    fixed["audit.repaired"] = changed
    return fixed


def _repair(value: Any, path: str, changed: list[str]) -> Any:
    kind = type(value)
    if kind is dict:
        return {str(k): _repair(v, f"{path}.{k}", changed) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_repair(v, f"{path}[{i}]", changed) for i, v in enumerate(value)]
    if value is None or kind is bool:
        return value
    if kind is int:
        if -MAX_INT <= value <= MAX_INT:
            return value
        changed.append(path)
        return MAX_INT if value > 0 else -MAX_INT
    if kind is str:
        clean = value.encode("utf-8", "replace").decode("utf-8")
        if clean != value:
            changed.append(path)
        return clean
    changed.append(path)
    if kind is float and value == value and abs(value) < float("inf"):
        return _repair(int(value), path, [])
    return None


def _count(value: object) -> int:
    """A count from a provider as an integer: a provider that writes ``12.0`` must not cost the
    request its record (records refuse floats)."""
    return value if type(value) is int else int(value)  # type: ignore[call-overload]


def _team(ctx: RequestContext) -> str | None:
    principal = ctx.principal
    if principal is None or not principal.teams:
        return None
    if principal.kind == "virtual_account":
        return principal.teams[0]
    declared = ctx.metadata.get("team")
    if declared is not None and declared in principal.teams:
        return declared
    return principal.teams[0] if len(principal.teams) == 1 else None


def _region(runtime: Runtime, target: str) -> str | None:
    found = runtime.targets.get(target)
    return found.region if found is not None else None


def _decision(decision: Decision) -> dict[str, Any]:
    return {
        "stage": decision.stage,
        "rule": decision.rule,
        "decision": decision.outcome,
        "reason": decision.reason,
        "input": decision.input,
    }


def _instant(
    event_type: str, gateway: GatewayInfo, at_ms: int | None = None
) -> tuple[dict[str, Any], int]:
    """The fields every record of an instantaneous event starts with (it starts and ends at
    ``at_ms``, default now), and that instant in Unix ms."""
    now = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    at = rfc3339_ms(now)
    return {
        "event_type": event_type,
        "time_start": at,
        "time_end": at,
        "gateway.instance": gateway.instance,
        "gateway.version": gateway.version,
    }, now


# -- auth.failure ----------------------------------------------------------------------------------


def auth_failure(
    *,
    request_id: str,
    route: str,
    method: str,
    code: str,
    client: str | None,
    revision: str,
    gateway: GatewayInfo,
) -> tuple[dict[str, Any], int]:
    """A refused credential outside the LLM routes (whose refusals are their ``llm.call``)."""
    record, now = _instant(AUTH_FAILURE, gateway)
    return {
        **record,
        "request_id": request_id,
        "config.revision": revision,
        "http.route": route,
        "http.request.method": method,
        "http.response.status_code": 401,
        "error.type": code,
        "client.address": truncate_address(client),
    }, now


def truncate_address(address: str | None) -> str | None:
    """An IPv4 address to its /24, an IPv6 address to its /48: enough to see where a flood of
    failures comes from, without keeping a person's exact address."""
    if not address:
        return None
    if ":" in address:
        groups = address.split(":")
        return ":".join(groups[:3]) + "::/48"
    parts = address.split(".")
    if len(parts) == 4:
        return ".".join(parts[:3]) + ".0/24"
    return None


# -- admin.change ----------------------------------------------------------------------------------


def admin_change(event: dict[str, Any], gateway: GatewayInfo) -> tuple[dict[str, Any], int]:
    """The record of one row of the store's ``admin_events`` (written with the change itself)."""
    record, at_ms = _instant(ADMIN_CHANGE, gateway, unix_ms(event["at"]))
    return {
        **record,
        "admin.event_id": int(event["id"]),
        "actor.id": event["actor"],
        "actor.role": event["actor_role"],
        "action": event["action"],
        "target.type": event["target_type"],
        "target.id": event["target_id"],
        "before": _plain(event.get("before")),
        "after": _plain(event.get("after")),
    }, at_ms


def _plain(value: Any) -> Any:
    """JSON for a record: secrets dropped, floats as text (records hold no floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k not in _SECRET_KEYS}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    return value


# -- config.revision -------------------------------------------------------------------------------


def config_revision(
    *,
    revision: str,
    previous: str | None,
    text_sha256: str,
    source: str,
    trigger: str,
    gateway: GatewayInfo,
) -> tuple[dict[str, Any], int]:
    """A revision began to be served (``trigger``: ``start`` or ``reload``); its full text is in
    the store's ``audit_config_texts`` under ``config.revision``."""
    record, now = _instant(CONFIG_REVISION, gateway)
    return {
        **record,
        "config.revision": revision,
        "config.previous_revision": previous,
        "config.text_sha256": text_sha256,
        "config.source": source,
        "trigger": trigger,
    }, now


# -- audit.purge -----------------------------------------------------------------------------------


def audit_purge(
    *,
    cutoff_ms: int,
    retention_days: int,
    seq_ranges: list[tuple[int, int]],
    count: int,
    team_holds: list[str],
    trigger: str,
    gateway: GatewayInfo,
) -> tuple[dict[str, Any], int]:
    """The retention purge emptied the bodies (and dropped the query rows) of ``count`` records
    whose ``time_start`` is before ``cutoff_ms``: exactly the sequence numbers in ``seq_ranges``
    (inclusive ``[first, last]`` pairs, ascending). ``team_holds``: the teams whose records were
    kept under a legal hold. ``trigger``: ``schedule`` (the gateway) or ``command``."""
    record, now = _instant(AUDIT_PURGE, gateway)
    return {
        **record,
        "purge.cutoff": rfc3339_ms(cutoff_ms),
        "purge.retention_days": retention_days,
        "purge.count": count,
        "purge.first_seq": seq_ranges[0][0] if seq_ranges else None,
        "purge.last_seq": seq_ranges[-1][1] if seq_ranges else None,
        "purge.seq_ranges": [[first, last] for first, last in seq_ranges],
        "purge.team_holds": sorted(team_holds),
        "trigger": trigger,
    }, now

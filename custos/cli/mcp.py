"""``custos mcp``: the MCP servers of a config, the tools a principal would see, and what the
gateway would decide about a tool call, without making it.

- ``servers``: every endpoint (``/mcp/{name}``) the config serves, its server or choice of tools;
- ``tools --as SUBJECT``: the tools ``tools/list`` would show that caller (the servers are asked
  for their tools; access decides, exactly as on the endpoint);
- ``explain --as SUBJECT SERVER/TOOL``: access, then each ``mcp_tool_pre_invoke`` guardrail
  in order on the given arguments (content guardrails and policy guardrails run as they would;
  webhooks are named, not called), then the post-invoke guardrails that would see the result.
  Exit status 0 when the call would go to the tool, 1 when it would be refused;
- ``report --from DATE --to DATE --group-by team,server,tool``: ``custos audit report --kind
  tool_calls`` (the admin API's tool-call report, as an admin or auditor): tool calls of a
  period grouped, with calls, served, denied, cancelled, failed and tool errors, and totals;
- ``credential set|list|delete``: your own credentials for ``auth: per_user`` servers
  (``custos.cli.mcp_credentials``).

The caller is given as ``user:EMAIL`` (its teams are the config's for that email, plus any
``--team``) or ``virtualaccount:NAME`` (with its ``--team``); nothing is read from the store,
so a token's own narrowing is not applied.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from typing import Any

from custos.audit.compliance.tool_report import DEFAULT_GROUP_BY as TOOL_GROUP_BY
from custos.audit.compliance.tool_report import DIMENSIONS as TOOL_DIMENSIONS
from custos.cli import mcp_credentials
from custos.cli.common import TOKEN_ENV, api_options, fail, token_of, usage


def register(commands: Any) -> None:
    mcp = commands.add_parser("mcp", help="MCP servers, tools and decisions of a config")
    mcp.set_defaults(run=lambda _a: usage(mcp))
    sub = mcp.add_subparsers(title="mcp commands", metavar="COMMAND")
    servers = sub.add_parser("servers", help="the MCP endpoints a config serves")
    servers.add_argument("--config", "-c", metavar="FILE", required=True)
    servers.set_defaults(run=_servers)
    tools = sub.add_parser("tools", help="the tools a caller would see (asks the servers)")
    _caller(tools)
    tools.add_argument("--endpoint", metavar="NAME", help="one endpoint (default: every one)")
    tools.set_defaults(run=_tools)
    explain = sub.add_parser(
        "explain",
        help="what the gateway would decide about a tool call, without calling the tool",
        description="Access, then the pre-invoke guardrails on the arguments, in order; exit "
        "status 0 when the call would reach the tool, 1 when it would be refused.",
    )
    _caller(explain)
    explain.add_argument("tool", metavar="SERVER/TOOL")
    explain.add_argument("--arguments", default="{}", help="the call's arguments, a JSON object")
    explain.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                         help="request metadata (repeatable)")  # fmt: skip
    explain.set_defaults(run=_explain)
    report = sub.add_parser(
        "report",
        parents=[api_options("an admin's or auditor's token")],
        help="tool calls of a period grouped: calls, served, denied, cancelled, failed",
        description="The same report as 'custos audit report --kind tool_calls': MCP tool calls "
        "between two dates (whole UTC days, both inclusive) grouped by the dimensions given, "
        "with calls, served, denied, cancelled, failed and tool errors, and totals.",
    )
    report.add_argument("--from", dest="from_", required=True, metavar="DATE")
    report.add_argument("--to", required=True, metavar="DATE")
    report.add_argument("--group-by", default=TOOL_GROUP_BY,
                        help="comma-separated: " + ", ".join(TOOL_DIMENSIONS))  # fmt: skip
    report.add_argument("--data-class", help="only calls that carry this data class")
    report.add_argument("--source", choices=["declared", "detected"],
                        help="only classes from this source: declared by the caller, or "
                        "detected in the arguments")  # fmt: skip
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.set_defaults(run=_report)
    mcp_credentials.register(sub)


def _caller(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", required=True)
    parser.add_argument("--as", dest="subject", required=True,
                        metavar="user:EMAIL|virtualaccount:NAME")  # fmt: skip
    parser.add_argument("--team", action="append", default=[], help="a team (repeatable)")


def _runtime(path: str) -> Any:
    from custos.config.loader import ConfigError, load_config
    from custos.runtime import Runtime

    try:
        return Runtime(load_config(path))
    except ConfigError as exc:
        raise SystemExit(fail(str(exc))) from None


def _principal(args: argparse.Namespace, runtime: Any) -> Any:
    from custos.emails import email_key
    from custos.identity.principal import Principal

    kind, _, name = args.subject.partition(":")
    if kind not in ("user", "virtualaccount") or not name:
        raise SystemExit(fail("--as takes user:EMAIL or virtualaccount:NAME", 2))
    teams = list(args.team)
    if kind == "user":
        name = email_key(name)
        for team, settings in runtime.config.teams.items():
            members = {email_key(e) for e in (*settings.members, *settings.managers)}
            if name in members and team not in teams:
                teams.append(team)
    subjects = frozenset({f"{kind}:{name}", *(f"team:{t}" for t in teams)})
    return Principal(
        kind="user" if kind == "user" else "virtual_account", id=args.subject, name=name,
        display_name=name, teams=tuple(teams), managed_teams=(), roles=frozenset(),
        subjects=subjects, token_id="cli", token_kind="cli", account_models=None,
        token_models=None,
    )  # fmt: skip


# -- servers ---------------------------------------------------------------------------------------


def _servers(args: argparse.Namespace) -> int:
    from custos.mcp.catalog import McpCatalog

    runtime = _runtime(args.config)
    catalog = McpCatalog(runtime.config)
    if not catalog.endpoints:
        print("no MCP servers")
    for name, endpoint in catalog.endpoints.items():
        if endpoint.virtual:
            chosen = runtime.config.virtual_mcp_servers[name].tools
            print(f"/mcp/{name}  virtual: {', '.join(chosen)}")
        else:
            server = catalog.servers[name]
            region = server.region or "-"
            print(f"/mcp/{name}  {server.url}  {server.transport}  region {region}  "
                  f"auth {server.auth.type}")  # fmt: skip
    return 0


# -- tools -----------------------------------------------------------------------------------------


def _tools(args: argparse.Namespace) -> int:
    runtime = _runtime(args.config)
    principal = _principal(args, runtime)
    return asyncio.run(_list(args, runtime, principal))


async def _list(args: argparse.Namespace, runtime: Any, principal: Any) -> int:
    import secrets

    from custos.errors import GatewayError
    from custos.mcp.service import McpGateway
    from custos.mcp.sessions import SessionCodec
    from custos.providers.transport import Transport

    transport = Transport()
    await transport.start()
    service = McpGateway(transport)
    session = SessionCodec(secrets.token_bytes(32)).issue("cli", "cli", "2025-06-18")
    endpoints = service.catalog(runtime).endpoints
    if args.endpoint is not None and args.endpoint not in endpoints:
        await transport.close()
        return fail(f"no MCP endpoint {args.endpoint!r} in {args.config}")
    status = 0
    try:
        for name, endpoint in endpoints.items():
            if args.endpoint is not None and name != args.endpoint:
                continue
            try:
                tools = await service.list_tools(runtime, endpoint, session, principal, None)
            except GatewayError as exc:
                print(f"/mcp/{name}: {exc.message}", file=sys.stderr)
                status = 1
                continue
            print(f"/mcp/{name}")
            for tool in tools:
                alias = f"  (as {tool.name})" if tool.name != tool.tool else ""
                print(f"  {tool.server}/{tool.tool}{alias}")
    finally:
        await transport.close()
    return status


# -- explain ---------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    runtime = _runtime(args.config)
    principal = _principal(args, runtime)
    server, _, tool = args.tool.partition("/")
    if not server or not tool:
        return fail("give the tool as SERVER/TOOL", 2)
    if server not in runtime.config.mcp_servers:
        return fail(f"no MCP server {server!r} in {args.config}")
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        return fail(f"--arguments is not JSON ({exc.msg})", 2)
    if not isinstance(arguments, dict):
        return fail("--arguments must be a JSON object", 2)
    metadata = dict(item.partition("=")[::2] for item in args.metadata)
    return asyncio.run(_decide(runtime, principal, server, tool, arguments, metadata))


async def _decide(runtime: Any, principal: Any, server: str, tool: str,
                  arguments: dict[str, Any], metadata: dict[str, str]) -> int:  # fmt: skip
    from custos.context import RequestContext
    from custos.errors import GatewayError
    from custos.guardrails.rules import compile_guardrails
    from custos.mcp.call import ToolCall
    from custos.mcp.sessions import SessionCodec
    from custos.mcp.stages import POST_INVOKE, AuthorizeTool, ToolPreInvoke, tool_facts

    ctx = RequestContext("explain", "mcp", "tool_call", runtime)
    ctx.principal, ctx.metadata = principal, metadata
    session = SessionCodec(b"\0" * 32).issue(server, "cli", "2025-06-18")
    sent = copy.deepcopy(arguments)  # what mutating guardrails rewrite
    ctx.mcp = ToolCall(server, session, 0, tool, server=server, tool=tool,
                       params={"name": tool, "arguments": sent})  # fmt: skip
    guardrails = compile_guardrails(runtime.config.guardrails)
    webhooks = [g for g in guardrails if g.type == "webhook"]
    print(f"{server}/{tool} as {principal.id}")
    refusal: GatewayError | None = None
    try:
        AuthorizeTool().enter(ctx)
        await ToolPreInvoke([g for g in guardrails if g.type != "webhook"]).enter(ctx)
    except GatewayError as err:
        refusal = err
    for decision in ctx.decisions:
        found = (decision.input or {}).get("found") or {}
        policy = (decision.input or {}).get("policy")
        extra = f"  found {json.dumps(found)}" if found else ""
        if policy:
            extra += f"  policy {policy} rule {(decision.input or {}).get('policy_rule')}"
        print(f"  {decision.stage:<10} {decision.rule or '-':<28} {decision.outcome}"
              f"{'  (' + decision.reason + ')' if decision.reason else ''}{extra}")  # fmt: skip
    known = tool_facts(ctx)
    for guardrail in webhooks:
        if guardrail.hook == "mcp_tool_pre_invoke" and guardrail.when.matches(known):
            print(f"  guardrails {guardrail.id:<28} webhook: would be called (not called here)")
    if refusal is not None:
        print(f"refused: {refusal.message}")
        return 1
    after = [g.id for g in guardrails if g.hook == POST_INVOKE and g.when.matches(known)]
    if after:
        print(f"  on the result: {', '.join(after)}")
    if ctx.mcp.arguments != arguments:
        print(f"the tool would get: {json.dumps(ctx.mcp.arguments)}")
    print("allowed: the call would reach the tool")
    return 0


# -- report ----------------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    from custos.cli.audit import tool_report
    from custos.cli.client import AdminClient, ApiError

    token = token_of(args)
    if not token:
        return fail(f"no token: pass --token or set ${TOKEN_ENV}", 2)
    try:
        return tool_report(AdminClient(args.url, token, timeout=120), args.from_, args.to,
                           args.group_by, args.format, data_class=args.data_class,
                           source=args.source)  # fmt: skip
    except ApiError as exc:
        return fail(str(exc))

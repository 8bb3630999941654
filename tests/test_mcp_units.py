"""The MCP gateway's parts on their own: the config sections, signed session ids, tool access,
and the pre-invoke stage asking a policy guardrail (``cedar``/``opa`` build such guardrails; a
fake policy here proves the wiring: the request it is asked, allow, deny, failure, audit)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from custos.config import ConfigError, parse_config
from custos.context import RequestContext
from custos.errors import GatewayError
from custos.guardrails.policy.decision import PolicyDecision, PolicyRequest
from custos.guardrails.rules import compile_guardrails
from custos.identity.principal import Principal
from custos.mcp.call import ToolCall
from custos.mcp.catalog import McpCatalog
from custos.mcp.service import McpGateway
from custos.mcp.sessions import SESSION_TTL_S, SessionCodec
from custos.mcp.stages import AuthorizeTool, ToolPreInvoke
from custos.policy.when import Facts, When
from custos.runtime import Runtime
from tests.conftest import CUSTOS, ROOT

BASE = textwrap.dedent(
    """\
    version: 1
    providers: {}
    access:
      - id: support-tools
        subjects: [team:support]
        mcp_tools: [jira/get_*, jira/delete_issue]
      - id: models-only
        subjects: ["*"]
        models: ["*"]
    mcp_servers:
      jira:
        url: http://127.0.0.1:9000/mcp
        region: eu
        auth: {type: bearer, token: "${env:CUSTOS_T_JIRA}"}
      github: {url: "http://127.0.0.1:9001/mcp"}
    virtual_mcp_servers:
      desk: {tools: [jira/get_*, github/list_issues]}
    guardrails:
      - id: redact-args
        hook: mcp_tool_pre_invoke
        type: pii
        operation: mutate
    """
)


def load(text: str = BASE, **env: str) -> Runtime:
    import os

    os.environ.update({"CUSTOS_T_JIRA": "jira-token", **env})
    return Runtime(parse_config(text))


def problems(text: str) -> dict[str, str]:
    import os

    os.environ["CUSTOS_T_JIRA"] = "jira-token"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return {p.path: p.message for p in caught.value.problems}


# -- config ----------------------------------------------------------------------------------------


def test_servers_and_virtual_servers_load():
    runtime = load()
    jira = runtime.config.mcp_servers["jira"]
    assert (jira.transport, jira.region, jira.auth.type) == ("streamable_http", "eu", "bearer")
    assert jira.auth.token == "jira-token"
    catalog = McpCatalog(runtime.config)
    desk = catalog.endpoints["desk"]
    assert desk.virtual and desk.servers == ("jira", "github")
    assert desk.offers("jira", "get_issue") and not desk.offers("jira", "delete_issue")
    assert catalog.endpoints["jira"].offers("jira", "anything")


_JIRA_AUTH = 'auth: {type: bearer, token: "${env:CUSTOS_T_JIRA}"}'
_DESK = "desk: {tools: [jira/get_*, github/list_issues]}"


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [
        (_JIRA_AUTH, 'auth: {type: bearer, token: "Bearer sk-literal"}',
         "mcp_servers.jira.auth.token", "use ${env:NAME}"),
        (_JIRA_AUTH, "auth: {type: bearer}", "mcp_servers.jira.auth", "bearer needs token"),
        (_JIRA_AUTH, "auth: {type: none, header: X-Key}", "mcp_servers.jira.auth",
         "header and scheme are per_user's"),
        (_JIRA_AUTH, "auth: {type: per_user, header: Mcp-Session-Id}", "mcp_servers.jira.auth",
         "the transport's own"),
        (_JIRA_AUTH, "auth: {type: per_user, header: 'X Key'}", "mcp_servers.jira.auth.header",
         "pattern"),
        ("region: eu", "region: eu\n    transport: websocket", "mcp_servers.jira.transport",
         "streamable_http"),
        ("url: http://127.0.0.1:9000/mcp", "url: ftp://127.0.0.1:9000/mcp", "mcp_servers.jira.url",
         "http"),
        (_DESK, "desk: {tools: [gitlab/list_issues]}", "virtual_mcp_servers", "names no server"),
        (_DESK, "jira: {tools: [github/list_issues]}", "virtual_mcp_servers", "has this id"),
        ("mcp_tools: [jira/get_*, jira/delete_issue]", "mcp_tools: [get_issue]",
         "access[0].mcp_tools", "SERVER/TOOL"),
        ('models: ["*"]', "models: []", "access[1]", "models, mcp_tools or both"),
    ],
)  # fmt: skip
def test_bad_mcp_config_is_refused_with_its_path(old, new, path, fragment):
    text = BASE.replace(old, new, 1)
    assert text != BASE
    found = problems(text)
    assert any(p.startswith(path) and fragment in m for p, m in found.items()), found


def test_mcp_tools_select_only_rate_limits_that_count_tool_calls():
    limit = "  - {id: r, when: {mcp_tools: [jira/*]}, limit_to: 5, unit: %s}\n"
    text = BASE + "rate_limits:\n" + limit % "requests_per_minute"
    assert "tool_calls_per_minute" in problems(text)["rate_limits[0].when"]
    budget = "budgets:\n  - {id: b, when: {mcp_tools: [jira/*]}, limit_usd: 5, period: day}\n"
    assert "do not count" in problems(BASE + budget)["budgets[0].when"]
    runtime = load(BASE + "rate_limits:\n" + limit % "tool_calls_per_minute")
    (rule,) = runtime.limits.rate_limits
    assert (rule.unit, rule.window_s, rule.per_token) == ("tool_calls", 60, False)
    tool_facts = Facts(frozenset({"team:support"}), "", {}, frozenset(), "jira/get_issue")
    model_facts = Facts(frozenset({"team:support"}), "gpt-5.5")
    assert runtime.limits.rate_rule(tool_facts) is rule
    assert runtime.limits.rate_rule(model_facts) is None  # counts tool calls only


# -- session ids -----------------------------------------------------------------------------------


def test_a_session_id_round_trips_and_any_change_is_refused():
    codec = SessionCodec(b"k" * 32)
    session = codec.issue("jira", "tok_1", "2025-06-18")
    assert codec.open(session.id) == session
    assert SessionCodec(b"k" * 32).open(session.id) == session  # another replica, same key
    assert SessionCodec(b"x" * 32).open(session.id) is None  # another key
    body, tag = session.id[len("mcs1.") :].split(".")

    def flip(text: str) -> str:
        return text[:-1] + ("B" if text[-1] == "A" else "A")

    for forged in (f"mcs1.{flip(body)}.{tag}", f"mcs1.{body}.{flip(tag)}", "mcs1.e30.AAAA", "x"):
        assert codec.open(forged) is None
    assert codec.open(session.id, now=session.issued_s + SESSION_TTL_S + 1) is None


# -- access ----------------------------------------------------------------------------------------


def principal(*, teams: tuple[str, ...] = ("support",), token_models: tuple[str, ...] | None
              = None) -> Principal:  # fmt: skip
    return Principal(
        kind="user", id="u1", name="ann@example.com", display_name="Ann", teams=teams,
        managed_teams=(), roles=frozenset(),
        subjects=frozenset({"user:ann@example.com", *(f"team:{t}" for t in teams)}),
        token_id="tok_1", token_kind="pat", account_models=None, token_models=token_models,
    )  # fmt: skip


def test_tools_are_default_deny_and_granted_by_globs():
    runtime = load()
    support = principal()
    assert McpGateway.may_call(runtime, support, "jira", "get_issue").allowed
    assert McpGateway.may_call(runtime, support, "jira", "delete_issue").rule_id == "support-tools"
    assert not McpGateway.may_call(runtime, support, "jira", "create_issue").allowed
    assert not McpGateway.may_call(runtime, support, "github", "get_x").allowed
    outsider = principal(teams=("sales",))
    assert not McpGateway.may_call(runtime, outsider, "jira", "get_issue").allowed
    # A token narrowed to models calls no tool, unless its narrowing names it.
    narrowed = principal(token_models=("gpt-*",))
    assert not McpGateway.may_call(runtime, narrowed, "jira", "get_issue").allowed
    tool_token = principal(token_models=("gpt-*", "mcp:jira/*"))
    assert McpGateway.may_call(runtime, tool_token, "jira", "get_issue").allowed


# -- the pre-invoke stage and policy guardrails ----------------------------------------------------


def decided(verdict: str, rule: str, enforcing: str = "enforce") -> PolicyDecision:
    """What a cedar/opa guardrail's policy answers (custos.guardrails.policy.GuardrailPolicy)."""
    allowed = verdict == "allow" or enforcing == "audit"
    return PolicyDecision(allowed, "tool-policy", rule, "told so", verdict=verdict,  # type: ignore[arg-type]
                          enforcing=enforcing, engine="cedar", revision="rev1")  # type: ignore[arg-type]  # fmt: skip


class FakePolicy:
    """Stands for a cedar/opa policy: records what it was asked, answers as told."""

    def __init__(self, answer: PolicyDecision | Exception) -> None:
        self.answer = answer
        self.asked: list[Any] = []

    async def decide(self, request: PolicyRequest) -> PolicyDecision:
        self.asked.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def policy_guardrail(policy: FakePolicy, enforcing: str = "enforce") -> Any:
    return SimpleNamespace(id="tool-policy", hook="mcp_tool_pre_invoke", type="cedar",
                           enforcing=enforcing, when=When.compile(None), timeout_s=1.0,
                           policy=policy, remote=False)  # fmt: skip


def tool_ctx(runtime: Runtime, arguments: dict[str, Any]) -> RequestContext:
    ctx = RequestContext("req-1", "mcp", "tool_call", runtime)
    ctx.principal = principal()
    ctx.metadata = {"environment": "production"}
    codec = SessionCodec(b"k" * 32)
    ctx.mcp = ToolCall("jira", codec.issue("jira", "tok_1", "2025-06-18"), 7, "delete_issue",
                       server="jira", tool="delete_issue",
                       params={"name": "delete_issue", "arguments": arguments})  # fmt: skip
    return ctx


def run_stages(runtime: Runtime, ctx: RequestContext, guardrail: Any) -> None:
    compiled = compile_guardrails(runtime.config.guardrails)
    AuthorizeTool().enter(ctx)
    asyncio.run(ToolPreInvoke([*compiled, guardrail]).enter(ctx))


def test_a_policy_is_asked_about_the_call_after_the_mutations_before_it():
    runtime = load()
    policy = FakePolicy(decided("allow", "permit-support"))
    ctx = tool_ctx(runtime, {"issue": "OPS-1", "note": "mail ann@example.com", "n": 3})
    run_stages(runtime, ctx, policy_guardrail(policy))
    (asked,) = policy.asked
    assert asked.action == "call_tool"
    assert asked.principal == {"type": "User", "id": "ann@example.com", "uid": "u1",
                               "teams": ["support"], "roles": []}  # fmt: skip
    mutated = {"issue": "OPS-1", "note": "mail <EMAIL_1>", "n": 3}
    assert asked.resource == {"type": "Tool", "server": "jira", "name": "delete_issue",
                              "arguments": mutated}  # fmt: skip
    assert asked.context["metadata"] == {"environment": "production"}
    assert asked.context["time"].endswith("Z")
    decision = ctx.decisions[-1]
    assert (decision.stage, decision.rule, decision.outcome) == ("guardrails", "tool-policy",
                                                                 "allow")  # fmt: skip
    assert decision.input["policy"] == "tool-policy"
    assert decision.input["policy_rule"] == "permit-support"
    assert decision.input["policy_revision"] == "rev1"


def test_a_policy_denial_names_the_guardrail_the_policy_and_the_rule():
    runtime = load()
    policy = FakePolicy(decided("deny", "forbid-delete-in-prod"))
    ctx = tool_ctx(runtime, {"issue": "OPS-1"})
    with pytest.raises(GatewayError) as caught:
        run_stages(runtime, ctx, policy_guardrail(policy))
    err = caught.value
    assert (err.status, err.code) == (403, "policy_denied")
    assert "tool-policy" in err.message
    assert "forbid-delete-in-prod" in err.message
    assert ctx.decisions[-1].outcome == "deny"


def test_a_policy_that_fails_follows_its_enforcing_and_audit_never_blocks():
    runtime = load()
    failing = FakePolicy(RuntimeError("engine down"))
    with pytest.raises(GatewayError) as caught:
        run_stages(runtime, tool_ctx(runtime, {}), policy_guardrail(failing))
    assert caught.value.code == "guardrail_unavailable"
    ctx = tool_ctx(runtime, {})
    run_stages(runtime, ctx, policy_guardrail(failing, "enforce_but_ignore_on_error"))
    assert (ctx.decisions[-1].outcome, ctx.decisions[-1].reason) == ("allow", "error")
    denying = FakePolicy(decided("deny", "r", "audit"))
    ctx = tool_ctx(runtime, {})
    run_stages(runtime, ctx, policy_guardrail(denying, "audit"))
    assert ctx.decisions[-1].outcome == "audit_only"


# -- custos mcp ------------------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "custos.yaml"
    config.write_text(BASE + "teams:\n  support: {members: [ann@example.com]}\n")
    return subprocess.run(
        [*CUSTOS, "mcp", *args, "--config", str(config)], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "CUSTOS_T_JIRA": "jira-token"},
    )  # fmt: skip


def test_mcp_servers_lists_the_endpoints(tmp_path):
    listed = cli(tmp_path, "servers")
    assert listed.returncode == 0, listed.stderr
    assert "/mcp/jira  http://127.0.0.1:9000/mcp  streamable_http  region eu  auth bearer" in (
        listed.stdout
    )
    assert "/mcp/desk  virtual: jira/get_*, github/list_issues" in listed.stdout
    assert "jira-token" not in listed.stdout


def test_mcp_explain_shows_each_decision_without_calling(tmp_path):
    allowed = cli(tmp_path, "explain", "--as", "user:Ann@example.com", "jira/delete_issue",
                  "--arguments", '{"note": "tell ann@example.com"}')  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "authorize  support-tools" in allowed.stdout
    assert "redact-args" in allowed.stdout and "mutate" in allowed.stdout
    assert 'the tool would get: {"note": "tell <EMAIL_1>"}' in allowed.stdout
    denied = cli(tmp_path, "explain", "--as", "user:zed@example.com", "jira/get_issue")
    assert denied.returncode == 1
    assert "no access rule grants this tool" in denied.stdout
    wrong = cli(tmp_path, "explain", "--as", "nobody", "jira/get_issue")
    assert wrong.returncode == 2


def test_config_check_counts_the_mcp_servers(tmp_path):
    config = tmp_path / "custos.yaml"
    config.write_text(BASE)
    checked = subprocess.run(
        [*CUSTOS, "config", "check", str(config)], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "CUSTOS_T_JIRA": "jira-token"},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "2 MCP server(s), 1 virtual MCP server(s)" in checked.stdout


def test_passthrough_sends_the_callers_jwt_and_never_a_gateway_token():
    runtime = load(BASE.replace("github: {url: \"http://127.0.0.1:9001/mcp\"}",
                                "github: {url: \"http://127.0.0.1:9001/mcp\", "
                                "auth: {type: passthrough}}"))  # fmt: skip
    github, jira = runtime.config.mcp_servers["github"], runtime.config.mcp_servers["jira"]
    with pytest.raises(GatewayError) as caught:
        McpGateway(None).credential(github, "github", principal(), "cst_pat_secret")  # type: ignore[arg-type]
    assert caught.value.code == "passthrough_needs_jwt"
    assert "cst_pat_secret" not in caught.value.message
    from dataclasses import replace

    federated = replace(principal(), token_id="jwt:corp:ann@example.com")
    gateway = McpGateway(None)  # type: ignore[arg-type]
    assert gateway.credential(github, "github", federated, "eyJ.jwt.sig") == "eyJ.jwt.sig"
    assert gateway.credential(jira, "jira", federated, "eyJ.jwt.sig") is None  # its bearer

"""Policy as code: ``cedar`` and ``opa`` guardrails (docs/policy.md).

The same rules written in Cedar and in Rego decide tool-shaped requests (asked directly through
``PolicyRequest``, as the MCP gateway asks) and model calls (through a gateway, with the
``openai`` SDK): a ``delete_*`` tool only when the metadata ``environment`` is ``staging``,
``send_email`` only to the company's domain, tools only for the ``support`` team, and no model
in ``environment: production``. A policy file with an error is refused by ``custos config
check`` and by a reload (the serving revision keeps deciding); a stand-in for OPA's REST Data
API (aiohttp, loopback) that is down, slow or answers garbage is handled as ``enforcing`` says.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.config.loader import ConfigError, load_config
from custos.config.policies import load_cedar, load_rego
from custos.guardrails.policy import PolicyRequest
from custos.guardrails.policy.request import policy_context
from custos.guardrails.policy.request import tool_call as tool_request
from custos.guardrails.rules import Guardrail, compile_guardrails
from custos.identity.principal import Principal
from tests.audit_helpers import recorded
from tests.conftest import (
    CUSTOS,
    MOCK_KEY,
    GatewayProcess,
    MockProvider,
    free_port,
    standard_config,
)
from tests.test_reload import replace_atomically, wait_until

CEDAR = """\
@id("models-for-everyone")
permit(principal, action == Action::"call_model", resource);

@id("no-models-in-production")
forbid(principal, action == Action::"call_model", resource)
when { context.metadata has environment && context.metadata.environment == "production" };

@id("tools-for-support")
permit(principal in Team::"support", action == Action::"call_tool", resource);

@id("delete-only-in-staging")
forbid(principal, action == Action::"call_tool", resource)
when { resource.name like "delete_*" }
unless { context.metadata has environment && context.metadata.environment == "staging" };

@id("send-email-company-only")
forbid(principal, action == Action::"call_tool", resource)
when { resource.name == "send_email" }
unless { resource.arguments has to && resource.arguments.to like "*@example.com" };
"""

SCHEMA = """\
entity Team;
entity User in [Team] { uid: String, roles: Set<String> };
entity VirtualAccount in [Team] { uid: String, roles: Set<String> };
entity Tool { server: String, name: String, arguments: { to?: String, ticket?: Long } };
entity Model { name: String };
type Context = {
  metadata: { environment?: String, project?: String },
  data_classes: Set<String>,
  time: datetime,
};
action call_tool appliesTo {
  principal: [User, VirtualAccount], resource: [Tool], context: Context
};
action call_model appliesTo {
  principal: [User, VirtualAccount], resource: [Model], context: Context
};
"""

REGO = """\
package custos

default allow := false

environment := object.get(input.context.metadata, "environment", "")

deny contains "no-models-in-production" if {
	input.action == "call_model"
	environment == "production"
}

deny contains "tools-for-support" if {
	input.action == "call_tool"
	not "support" in input.principal.teams
}

deny contains "delete-only-in-staging" if {
	input.action == "call_tool"
	startswith(input.resource.name, "delete_")
	environment != "staging"
}

deny contains "send-email-company-only" if {
	input.action == "call_tool"
	input.resource.name == "send_email"
	not endswith(object.get(input.resource.arguments, "to", ""), "@example.com")
}

allow if {
	input.action in {"call_model", "call_tool"}
	count(deny) == 0
}

# One decision however many rules deny (a complete rule has one value): the first by name.
decision := {"allow": false, "rule": min(deny), "reason": sprintf("denied by %s", [min(deny)])} if {
	count(deny) > 0
} else := {"allow": true, "rule": "allowed", "reason": "no rule denies"} if {
	allow
} else := {"allow": false, "reason": "not an action these rules know"}
"""

SUPPORT = {"type": "User", "id": "ann@example.com", "uid": "u-1", "teams": ["support"],
           "roles": ["member"]}  # fmt: skip
SALES = {"type": "User", "id": "bo@example.com", "uid": "u-2", "teams": ["sales"], "roles": []}


def write_policies(directory: Path, *, cedar: str = CEDAR, rego: str = REGO) -> None:
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "tools.cedar").write_text(cedar)
    (directory / "policies" / "custos.cedarschema").write_text(SCHEMA)
    (directory / "policies" / "tools.rego").write_text(rego)


CEDAR_RULE = {"type": "cedar", "policies": "policies/tools.cedar",
              "schema": "policies/custos.cedarschema"}  # fmt: skip
REGO_RULE = {"type": "opa", "policy": "policies/tools.rego", "query": "data.custos.decision"}
ENGINES = {"cedar": CEDAR_RULE, "rego": REGO_RULE}


def guardrails(directory: Path, rules: list[dict[str, Any]]) -> dict[str, Guardrail]:
    """The compiled guardrails of a config holding ``rules`` (ids and hook filled in)."""
    full = [{"id": f"g{i}", "hook": "llm_input", **rule} for i, rule in enumerate(rules)]
    path = directory / "custos.yaml"
    path.write_text(f"version: 1\nproviders: {{}}\nguardrails: {json.dumps(full)}\n")
    return {g.id: g for g in compile_guardrails(load_config(path).config.guardrails)}


def tool_call(
    name: str,
    arguments: dict[str, Any] | None = None,
    environment: str | None = None,
    principal: dict[str, Any] = SUPPORT,
) -> PolicyRequest:
    metadata = {"environment": environment} if environment else {}
    return PolicyRequest(
        principal=principal,
        action="call_tool",
        resource={"type": "Tool", "server": "ops", "name": name, "arguments": arguments or {}},
        context={"metadata": metadata, "data_classes": [], "time": "2026-12-07T11:00:00.000Z"},
    )


def model_call(environment: str | None = None) -> PolicyRequest:
    metadata = {"environment": environment} if environment else {}
    return PolicyRequest(
        principal=SUPPORT,
        action="call_model",
        resource={"type": "Model", "name": "openai-main/gpt-5.5"},
        context={
            "metadata": metadata,
            "data_classes": ["customer_data"],
            "time": "2026-12-07T11:00:00Z",
        },
    )


# -- Cedar and Rego in process --------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["cedar", "rego"])
@pytest.mark.parametrize(
    "request_",
    [
        model_call(),
        model_call("staging"),
        tool_call("delete_ticket", {"ticket": 42}, "staging"),
        tool_call("send_email", {"to": "carol@example.com", "body": "hi"}),
        tool_call("read_ticket", {"ticket": 7, "ratio": 0.5, "note": None}, "production"),
    ],
    ids=["model", "model-staging", "delete-staging", "email-company", "read-production"],
)
async def test_allowed(tmp_path: Path, engine: str, request_: PolicyRequest) -> None:
    write_policies(tmp_path)
    guardrail = guardrails(tmp_path, [ENGINES[engine]])["g0"]
    assert guardrail.policy is not None
    decision = await guardrail.policy.decide(request_)
    assert decision.allowed and decision.verdict == "allow", decision
    assert decision.policy_id == "g0" and decision.refusal() is None
    if engine == "cedar":
        expected = "models-for-everyone" if request_.action == "call_model" else "tools-for-support"
        assert decision.rule == expected


@pytest.mark.parametrize("engine", ["cedar", "rego"])
@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (model_call("production"), "no-models-in-production"),
        (tool_call("delete_ticket", {"ticket": 42}, "production"), "delete-only-in-staging"),
        (tool_call("delete_user", {}), "delete-only-in-staging"),
        (tool_call("send_email", {"to": "mallory@evil.test"}), "send-email-company-only"),
        (tool_call("send_email", {"to": "x@example.com.evil.test"}), "send-email-company-only"),
        (tool_call("send_email", {"cc": "carol@example.com"}), "send-email-company-only"),
        # An argument of an unexpected type: a forbid that cannot be evaluated still denies.
        (tool_call("send_email", {"to": ["mallory@evil.test"]}), "send-email-company-only"),
        (tool_call("send_email", {"to": 7}), "send-email-company-only"),
        (tool_call("send_email", {"to": {"address": "x@example.com"}}), "send-email-company-only"),
        (tool_call("read_ticket", {}, principal=SALES), "tools-for-support"),
    ],
    ids=["model-production", "delete-production", "delete-no-env", "email-elsewhere",
         "email-lookalike", "email-no-to", "email-to-list", "email-to-number", "email-to-record",
         "not-support"],
)  # fmt: skip
async def test_denied_by_a_rule(
    tmp_path: Path, engine: str, request_: PolicyRequest, rule: str
) -> None:
    write_policies(tmp_path)
    guardrail = guardrails(tmp_path, [ENGINES[engine]])["g0"]
    assert guardrail.policy is not None
    decision = await guardrail.policy.decide(request_)
    assert not decision.allowed and decision.verdict == "deny", decision
    if engine == "cedar" and rule == "tools-for-support":
        # Cedar denies by default: no permit applies, so no rule decided.
        assert decision.rule is None and "no policy permits" in decision.reason
    else:
        assert decision.rule == rule
    refusal = decision.refusal()
    assert refusal is not None and refusal.status == 400 and refusal.code == "guardrail_blocked"
    assert "'g0'" in refusal.message
    recorded_ = decision.to_decision("mcp_tool_pre_invoke")
    assert recorded_.rule == "g0" and recorded_.outcome == "deny"
    assert recorded_.input is not None and recorded_.input["policy_rule"] == decision.rule


@pytest.mark.parametrize("engine", ["cedar", "rego"])
async def test_audit_mode_records_a_denial_and_lets_through(tmp_path: Path, engine: str) -> None:
    write_policies(tmp_path)
    guardrail = guardrails(tmp_path, [{**ENGINES[engine], "enforcing": "audit"}])["g0"]
    assert guardrail.policy is not None
    decision = await guardrail.policy.decide(tool_call("delete_ticket", {}, "production"))
    assert decision.allowed and decision.verdict == "deny" and decision.outcome == "audit_only"
    assert decision.refusal() is None


async def test_a_boolean_query_allows_or_denies(tmp_path: Path) -> None:
    """``query`` defaults to ``data.custos.allow``: a boolean, no rule named."""
    write_policies(tmp_path)
    guardrail = guardrails(tmp_path, [{"type": "opa", "policy": "policies/tools.rego"}])["g0"]
    assert guardrail.policy is not None
    assert (await guardrail.policy.decide(model_call())).allowed
    denied = await guardrail.policy.decide(model_call("production"))
    assert not denied.allowed and denied.rule is None and "data.custos.allow" in denied.reason


ACCOUNT_POLICY = """\
@id("bots-read-only")
permit(principal is VirtualAccount, action == Action::"call_tool", resource)
when { principal in Team::"automation" && resource.name like "read_*" && principal.uid == "va-7" }
unless { context.data_classes.contains("customer_data") };
"""


def account() -> Principal:
    return Principal(
        kind="virtual_account", id="va-7", name="ticket-bot", display_name="Ticket bot",
        teams=("automation",), managed_teams=(), roles=frozenset(),
        subjects=frozenset({"virtualaccount:ticket-bot", "team:automation"}), token_id="t-1",
        token_kind="virtual_account", account_models=None, token_models=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "classes", "allowed"),
    [("read_ticket", [], True), ("delete_ticket", [], False),
     ("read_ticket", ["customer_data"], False)],
)  # fmt: skip
async def test_a_virtual_account_is_a_principal_in_its_teams(
    tmp_path: Path, tool: str, classes: list[str], allowed: bool
) -> None:
    (tmp_path / "bots.cedar").write_text(ACCOUNT_POLICY)
    guardrail = guardrails(tmp_path, [{"type": "cedar", "policies": "bots.cedar"}])["g0"]
    assert guardrail.policy is not None
    context = policy_context({"environment": "staging"}, classes, 1_796_641_200_123)
    assert context["time"] == "2026-12-07T11:00:00.123Z"
    # Values Cedar has no type for are adapted, never a reason to fail.
    arguments = {"ticket": 7, "ratio": 0.25, "big": 2**70, "none": None,
                 "nested": {"__entity": {"type": "Team", "id": "admins"}}}  # fmt: skip
    request = tool_request(account(), "helpdesk", tool, arguments, context)
    assert request.principal == {"type": "VirtualAccount", "id": "ticket-bot", "uid": "va-7",
                                 "teams": ["automation"], "roles": []}  # fmt: skip
    decision = await guardrail.policy.decide(request)
    assert decision.verdict == ("allow" if allowed else "deny"), decision
    assert decision.failure is None
    assert decision.rule == ("bots-read-only" if allowed else None)


async def test_policies_from_several_files_are_named_by_file_without_an_id(tmp_path: Path) -> None:
    write_policies(tmp_path)
    (tmp_path / "policies" / "extra.cedar").write_text(
        "// no @id: named by its file and position\n"
        'permit(principal, action, resource) when { resource.name == "x" };\n'
        'forbid(principal, action, resource) when { resource.name == "wipe" };\n'
    )
    rule = {**CEDAR_RULE, "policies": ["policies/tools.cedar", "policies/extra.cedar"]}
    guardrail = guardrails(tmp_path, [rule])["g0"]
    assert guardrail.policy is not None
    decision = await guardrail.policy.decide(tool_call("wipe", {}, "staging"))
    assert not decision.allowed and decision.rule == "policies/extra.cedar#1"
    assert (await guardrail.policy.decide(tool_call("send_email", {"to": "a@b.c"}))).rule == (
        "send-email-company-only"
    )


def _record(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Record", "attributes": attributes}


#: The part of the schema the account policy needs, in Cedar's JSON schema format.
JSON_SCHEMA = {"": {
    "entityTypes": {
        "Team": {},
        "VirtualAccount": {"memberOfTypes": ["Team"], "shape": _record({
            "uid": {"type": "String"}, "roles": {"type": "Set", "element": {"type": "String"}}})},
        "Tool": {"shape": _record({"server": {"type": "String"}, "name": {"type": "String"},
                                   "arguments": _record({})})},
    },
    "actions": {"call_tool": {"appliesTo": {
        "principalTypes": ["VirtualAccount"], "resourceTypes": ["Tool"],
        "context": _record({"metadata": _record({}),
                            "data_classes": {"type": "Set", "element": {"type": "String"}},
                            "time": {"type": "Extension", "name": "datetime"}})}}},
}}  # fmt: skip


def test_a_json_schema_validates_the_policies(tmp_path: Path) -> None:
    (tmp_path / "bots.cedar").write_text(ACCOUNT_POLICY)
    (tmp_path / "schema.json").write_text(json.dumps(JSON_SCHEMA))
    rule = {"type": "cedar", "policies": "bots.cedar", "schema": "schema.json"}
    assert guardrails(tmp_path, [rule])["g0"].policy is not None
    (tmp_path / "bots.cedar").write_text(ACCOUNT_POLICY.replace("principal.uid", "principal.email"))
    with pytest.raises(ConfigError) as caught:
        guardrails(tmp_path, [rule])
    assert "attribute `email` on entity type `VirtualAccount` not found" in str(caught.value)
    assert "bots-read-only" in str(caught.value)  # the policy named by its @id


EMAILS = ["carol@example.com", "m@evil.test", "x@example.com.evil.test", "@example.com", "",
          "CAROL@EXAMPLE.COM"]  # fmt: skip
#: ``to`` as agents may send it: addresses, and values of every other JSON type.
ARGUMENT = st.one_of(
    st.sampled_from(EMAILS), st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(),
    st.lists(st.sampled_from(EMAILS), max_size=2),
)  # fmt: skip
NAMES = ["send_email", "delete_ticket", "delete_", "read_ticket", "deletex", "Send_email"]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Guardrail, Guardrail]:
    directory = tmp_path_factory.mktemp("both")
    write_policies(directory)
    cedar, rego = guardrails(directory, [CEDAR_RULE, REGO_RULE]).values()
    return cedar, rego


@settings(max_examples=500, deadline=None)
@given(
    action=st.sampled_from(["call_tool", "call_model"]),
    name=st.sampled_from(NAMES),
    environment=st.sampled_from([None, "staging", "production", "Staging", ""]),
    teams=st.lists(st.sampled_from(["support", "sales", "Support"]), unique=True, max_size=2),
    to=ARGUMENT,
)
def test_cedar_and_rego_agree_on_the_same_rules(
    both: tuple[Guardrail, Guardrail],
    action: str,
    name: str,
    environment: str | None,
    teams: list[str],
    to: Any,
) -> None:
    """The two policies say the same thing: on any request, they decide the same way."""
    principal = {**SUPPORT, "teams": teams}
    request = tool_call(name, {"to": to}, environment, principal)
    if action == "call_model":
        request = PolicyRequest(principal, "call_model", {"type": "Model", "name": name},
                                request.context)  # fmt: skip
    cedar, rego = (asyncio.run(g.policy.decide(request)) for g in both)  # type: ignore[union-attr]
    assert cedar.verdict == rego.verdict, (cedar, rego)
    if cedar.verdict == "deny" and cedar.rule is not None:
        assert rego.rule in cedar.reason  # Cedar names every forbid that applied


def test_the_policy_files_are_part_of_the_revision(tmp_path: Path) -> None:
    write_policies(tmp_path)
    path = tmp_path / "custos.yaml"
    rules = [{"id": "c", "hook": "llm_input", **CEDAR_RULE},
             {"id": "o", "hook": "llm_input", **REGO_RULE}]  # fmt: skip
    path.write_text(f"version: 1\nproviders: {{}}\nguardrails: {json.dumps(rules)}\n")
    first = load_config(path)
    assert {p.name for p in first.files} == {"tools.cedar", "custos.cedarschema", "tools.rego"}
    assert load_config(path).revision == first.revision
    for name in ("tools.cedar", "tools.rego", "custos.cedarschema"):
        file = tmp_path / "policies" / name
        original = file.read_text()
        file.write_text(original + "\n// edited\n" if name != "tools.rego" else original + "\n#\n")
        assert load_config(path).revision != first.revision, name
        file.write_text(original)
    assert load_config(path).revision == first.revision


BAD_RULES = [
    ({"type": "cedar"}, "a cedar guardrail needs policies"),
    ({**CEDAR_RULE, "hook": "llm_output"}, "hook llm_input or mcp_tool_pre_invoke"),
    ({**CEDAR_RULE, "operation": "mutate"}, "operation validate"),
    ({**CEDAR_RULE, "query": "data.custos.allow"}, "a cedar guardrail takes no query"),
    ({"type": "opa"}, "either policy: file.rego (in process) or url:"),
    ({**REGO_RULE, "url": "http://127.0.0.1:8181"}, "not both"),
    ({**REGO_RULE, "query": "custos.allow"}, "query: write it as data.<package>.<rule>"),
    ({**REGO_RULE, "headers": {"x-tenant": "a"}}, "headers are for a remote OPA"),
    ({**REGO_RULE, "policies": "policies/tools.cedar"}, "an opa guardrail takes no policies"),
    ({"type": "opa", "url": "http://opa:8181/v1/data/custos"}, "without a path"),
    ({"type": "opa", "url": "http://user:pw@opa:8181"}, "no credentials in the address"),
    ({"type": "cedar", "policies": "policies/missing.cedar"},
     "cannot read policy file policies/missing.cedar"),
    ({"type": "cedar", "policies": "/etc"}, "cannot read policy file /etc: not a regular file"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "says"), BAD_RULES)
def test_a_policy_guardrail_that_cannot_work_is_refused(
    tmp_path: Path, rule: dict[str, Any], says: str
) -> None:
    write_policies(tmp_path)
    with pytest.raises(ConfigError) as caught:
        guardrails(tmp_path, [rule])
    assert says in str(caught.value) and "line 3: guardrails[0]" in str(caught.value)


def test_a_broken_schema_is_refused(tmp_path: Path) -> None:
    write_policies(tmp_path)
    (tmp_path / "policies" / "custos.cedarschema").write_text(
        SCHEMA.replace("};\naction", "\naction", 1)
    )
    with pytest.raises(ConfigError) as caught:
        guardrails(tmp_path, [CEDAR_RULE])
    assert "policies/custos.cedarschema: not a valid Cedar schema" in str(caught.value)


# -- refused at check -----------------------------------------------------------------------------

BROKEN = [
    ("cedar", "cedar-syntax", CEDAR.replace('like "delete_*" }', 'like "delete_*" && }'),
     "policies/tools.cedar line 11: not valid Cedar"),
    ("cedar", "cedar-schema", CEDAR.replace("arguments.to like", "arguments.cc like"),
     "do not validate against policies/custos.cedarschema"),
    ("cedar", "cedar-unknown-action", CEDAR.replace('"call_model"', '"call_modle"', 1),
     "do not validate"),
    ("rego", "rego-syntax", REGO.replace('environment == "production"', 'environment == '),
     "policies/tools.rego line 9: not valid Rego"),
    ("rego", "rego-package", REGO.replace("package custos", "package other"),
     "query data.custos.decision: no module of package custos"),
]  # fmt: skip


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTOS, "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(("engine", "name", "text", "says"), BROKEN, ids=[b[1] for b in BROKEN])
def test_config_check_refuses_a_policy_file_with_an_error(
    tmp_path: Path, engine: str, name: str, text: str, says: str
) -> None:
    write_policies(tmp_path)
    rules = [{"id": "policy-check", "hook": "llm_input", **ENGINES[engine]}]
    path = tmp_path / "custos.yaml"
    path.write_text(f"version: 1\nproviders: {{}}\nguardrails: {json.dumps(rules)}\n")
    good = config_check(path)
    assert good.returncode == 0, good.stderr
    language = (
        "cedar file(s), validated against policies/custos.cedarschema"
        if engine == "cedar"
        else "rego file(s)"
    )
    assert f"guardrail policy-check: 1 {language}, policy revision " in good.stdout
    write_policies(tmp_path, **{engine: text})
    checked = config_check(path)
    assert checked.returncode == 1, checked.stdout
    assert "line 3: guardrails[0]: " in checked.stderr and says in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr and checked.stdout == ""


# -- a remote OPA: its REST Data API, stood in for by aiohttp -------------------------------------


class FakeOpa:
    """OPA's ``POST /v1/data/<path>``: decides ``data.custos.decision`` as the Rego above does
    for models; ``mode`` makes it slow, broken or undefined. It keeps what it was sent."""

    def __init__(self) -> None:
        self.mode = "normal"
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(sock, started), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/data/{path:.*}", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.SockSite(self.runner, sock).start())
        started.set()
        self.loop.run_forever()

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("authorization") != f"Bearer {MOCK_KEY}":
            return web.json_response({"code": "unauthorized"}, status=401)
        body = await request.json()
        self.seen.append((request.path, body))
        if self.mode == "slow":
            await asyncio.sleep(1)
        if self.mode == "garbage":
            return web.Response(text="<html>surprise</html>", content_type="text/html")
        if self.mode == "error":
            return web.json_response({"code": "internal_error"}, status=500)
        if self.mode == "undefined":
            return web.json_response({})
        if self.mode == "wrong_shape":
            return web.json_response({"result": {"allowed": "yes"}})
        production = body["input"]["context"]["metadata"].get("environment") == "production"
        if production:
            result = {"allow": False, "rule": "no-models-in-production", "reason": "production"}
        else:
            result = {"allow": True, "rule": "models-elsewhere"}
        return web.json_response({"result": result})

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(autouse=True)
def opa_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the remote guardrails' ``${env:…}`` header names, for configs loaded here."""
    monkeypatch.setenv("CUSTOS_TEST_MOCK_KEY", MOCK_KEY)


@pytest.fixture(scope="module")
def opa() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.stop()


def down_url() -> str:
    """An address nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def remote(url: str, enforcing: str, timeout_ms: int = 300) -> dict[str, Any]:
    credential = {"authorization": "Bearer ${env:CUSTOS_TEST_MOCK_KEY}"}
    return {"type": "opa", "url": url, "query": "data.custos.decision", "enforcing": enforcing,
            "timeout_ms": timeout_ms, "headers": credential}  # fmt: skip


async def test_a_remote_opa_is_asked_through_its_data_api(tmp_path: Path, opa: FakeOpa) -> None:
    opa.mode = "normal"
    guardrail = guardrails(tmp_path, [remote(opa.url, "enforce")])["g0"]
    assert guardrail.policy is not None
    try:
        allowed = await guardrail.policy.decide(model_call("staging"))
        assert allowed.allowed and allowed.rule == "models-elsewhere"
        assert opa.seen[-1] == (
            "/v1/data/custos/decision",
            {"input": model_call("staging").as_input()},
        )
        denied = await guardrail.policy.decide(model_call("production"))
        assert not denied.allowed and denied.rule == "no-models-in-production"
        assert denied.reason == "production" and denied.engine == "opa-remote"
    finally:
        await guardrail.policy.close()


@pytest.mark.parametrize(
    ("mode", "failure"),
    [("down", "unreachable"), ("slow", "timeout"), ("garbage", "bad_answer"),
     ("error", "status_500"), ("wrong_shape", "bad_answer")],
)  # fmt: skip
@pytest.mark.parametrize("enforcing", ["enforce", "enforce_but_ignore_on_error", "audit"])
async def test_a_remote_opa_that_fails_is_handled_as_enforcing_says(
    tmp_path: Path, opa: FakeOpa, mode: str, failure: str, enforcing: str
) -> None:
    opa.mode = mode
    url = down_url() if mode == "down" else opa.url
    guardrail = guardrails(tmp_path, [remote(url, enforcing, timeout_ms=200)])["g0"]
    assert guardrail.policy is not None
    try:
        decision = await guardrail.policy.decide(model_call())
    finally:
        await guardrail.policy.close()
        opa.mode = "normal"
    assert decision.verdict == "error" and decision.failure == failure
    assert decision.allowed == (enforcing != "enforce")
    assert decision.latency_us < 900_000  # the slow OPA is given up on at its timeout
    recorded_ = decision.to_decision("llm_input")
    expected = {"enforce": "deny", "enforce_but_ignore_on_error": "allow", "audit": "audit_only"}
    assert recorded_.outcome == expected[enforcing] and recorded_.reason == failure
    refusal = decision.refusal()
    if enforcing == "enforce":
        assert refusal is not None and refusal.status == 503
        assert refusal.code == "guardrail_unavailable"
    else:
        assert refusal is None


async def test_an_undefined_decision_denies(tmp_path: Path, opa: FakeOpa) -> None:
    opa.mode = "undefined"
    guardrail = guardrails(tmp_path, [remote(opa.url, "enforce_but_ignore_on_error")])["g0"]
    assert guardrail.policy is not None
    try:
        decision = await guardrail.policy.decide(model_call())
    finally:
        await guardrail.policy.close()
        opa.mode = "normal"
    assert not decision.allowed and decision.verdict == "deny" and "undefined" in decision.reason


# -- through the gateway, with the openai SDK ----------------------------------------------------

MODEL = "openai-main/gpt-5.5"


def gateway_config(mock_url: str, opa_url: str, dead_url: str) -> str:
    def on(project: str, rule: dict[str, Any], gid: str) -> dict[str, Any]:
        return {"id": gid, "hook": "llm_input", **rule, "when": {"metadata": {"project": project}}}

    rules = [
        on("cedar", CEDAR_RULE, "models-cedar"),
        on("rego", REGO_RULE, "models-rego"),
        on("opa", remote(opa_url, "enforce"), "models-opa"),
        on("opa-down", remote(dead_url, "enforce"), "opa-down"),
        on("opa-lenient", remote(dead_url, "enforce_but_ignore_on_error"), "opa-lenient"),
        on("opa-audit", remote(opa_url, "audit"), "opa-audit"),
    ]
    return standard_config(mock_url) + f"guardrails: {json.dumps(rules)}\n"


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, opa: FakeOpa, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("policy")
    write_policies(directory)
    process = GatewayProcess(gateway_config(mock_provider.url, opa.url, down_url()), directory)
    yield process
    process.stop()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def oai(gw: GatewayProcess, project: str, environment: str) -> openai.OpenAI:
    metadata = json.dumps({"project": project, "environment": environment})
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                         default_headers={"x-custos-metadata": metadata})  # fmt: skip


def policy_decision(gw: GatewayProcess, request_id: str, guardrail: str) -> dict[str, Any]:
    record = recorded(gw, request_id)
    return next(d for d in record["decisions"] if d["rule"] == guardrail)


def digest(directory: Path, engine: str) -> str:
    if engine == "cedar":
        return load_cedar(["policies/tools.cedar"], "policies/custos.cedarschema", directory).digest
    return load_rego(["policies/tools.rego"], "data.custos.decision", directory).digest


@pytest.mark.parametrize(("project", "guardrail"), [("cedar", "models-cedar"),
                                                    ("rego", "models-rego"),
                                                    ("opa", "models-opa")])  # fmt: skip
def test_a_model_call_is_allowed_by_the_policy(
    gw: GatewayProcess, mock_provider: MockProvider, opa: FakeOpa, project: str, guardrail: str
) -> None:
    mock_provider.clear()
    raw = oai(gw, project, "staging").chat.completions.with_raw_response.create(
        model=MODEL, messages=user("hello")
    )
    assert raw.parse().choices[0].message.content
    assert len(mock_provider.requests()) == 1
    assert guardrail in raw.headers["x-custos-applied"].split(",")
    decided = policy_decision(gw, raw.headers["x-custos-request-id"], guardrail)
    assert decided["decision"] == "allow" and decided["input"]["verdict"] == "allow"
    if project == "opa":
        assert decided["input"]["policy_rule"] == "models-elsewhere"
        sent = opa.seen[-1][1]["input"]
        assert sent["action"] == "call_model" and sent["resource"] == {"type": "Model",
                                                                       "name": MODEL}  # fmt: skip
        assert (
            sent["principal"]["type"] == "User" and sent["principal"]["id"] == "admin@custos.test"
        )
        assert sent["context"]["metadata"] == {"project": "opa", "environment": "staging"}
    else:
        assert decided["input"]["policy_revision"] == digest(gw.config_path.parent, project)


@pytest.mark.parametrize(("project", "guardrail"), [("cedar", "models-cedar"),
                                                    ("rego", "models-rego"),
                                                    ("opa", "models-opa")])  # fmt: skip
def test_a_model_call_denied_by_the_policy_is_a_400_naming_guardrail_and_rule(
    gw: GatewayProcess, mock_provider: MockProvider, project: str, guardrail: str
) -> None:
    mock_provider.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw, project, "production").chat.completions.create(model=MODEL, messages=user("hello"))
    assert caught.value.code == "guardrail_blocked"
    assert f"'{guardrail}'" in caught.value.message
    assert "'no-models-in-production'" in caught.value.message
    assert mock_provider.requests() == []
    request_id = caught.value.response.headers["x-custos-request-id"]
    record = recorded(gw, request_id)
    assert record["stopped_at"] == "guardrails" and record["outcome"] == "denied"
    decided = policy_decision(gw, request_id, guardrail)
    assert decided["decision"] == "deny" and decided["reason"] == "denied"
    assert decided["input"]["policy_rule"] == "no-models-in-production"
    assert decided["input"]["hook"] == "llm_input" and decided["input"]["policy_revision"]


def test_a_denied_stream_and_a_denied_anthropic_call_never_reach_the_provider(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    mock_provider.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw, "cedar", "production").chat.completions.create(
            model=MODEL, messages=user("hello"), stream=True
        )
    assert caught.value.code == "guardrail_blocked" and "models-cedar" in caught.value.message
    metadata = json.dumps({"project": "rego", "environment": "production"})
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0,
                                 default_headers={"x-custos-metadata": metadata})  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as refused_:
        claude.messages.create(
            model="claude-main/claude-sonnet-4.5",
            max_tokens=20,
            messages=user("hello"),  # type: ignore[arg-type]
        )
    assert "models-rego" in str(refused_.value) and "no-models-in-production" in str(refused_.value)
    assert mock_provider.requests() == []


def test_the_opa_input_is_the_documented_request(gw: GatewayProcess, opa: FakeOpa) -> None:
    metadata = {"project": "opa", "environment": "staging",
                "data_classification": "customer_data:2"}  # fmt: skip
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                           default_headers={"x-custos-metadata": json.dumps(metadata)})  # fmt: skip
    before = time.time()
    client.chat.completions.create(model=MODEL, messages=user("hello"))
    path, body = opa.seen[-1]
    assert path == "/v1/data/custos/decision" and set(body) == {"input"}
    sent = body["input"]
    assert set(sent) == {"principal", "action", "resource", "context"}
    assert sent["principal"]["type"] == "User" and sent["principal"]["id"] == "admin@custos.test"
    assert sent["principal"]["uid"] and "admin" in sent["principal"]["roles"]
    assert sent["context"]["metadata"] == metadata
    assert sent["context"]["data_classes"] == ["customer_data"]
    at = datetime.fromisoformat(sent["context"]["time"].replace("Z", "+00:00")).timestamp()
    assert before - 1 < at < time.time() + 1


def test_a_remote_opa_down_blocks_under_enforce(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        oai(gw, "opa-down", "staging").chat.completions.create(model=MODEL, messages=user("hello"))
    assert caught.value.status_code == 503 and caught.value.code == "guardrail_unavailable"
    decided = policy_decision(gw, caught.value.response.headers["x-custos-request-id"], "opa-down")
    assert decided["decision"] == "deny" and decided["reason"] == "unreachable"


def test_a_remote_opa_down_lets_through_when_errors_are_ignored(gw: GatewayProcess) -> None:
    raw = oai(gw, "opa-lenient", "production").chat.completions.with_raw_response.create(
        model=MODEL, messages=user("hello")
    )
    assert raw.parse().choices[0].message.content
    decided = policy_decision(gw, raw.headers["x-custos-request-id"], "opa-lenient")
    assert decided["decision"] == "allow" and decided["reason"] == "unreachable"
    assert decided["input"]["verdict"] == "error" and decided["input"]["error"] == "unreachable"


def test_an_audit_policy_records_its_denial_and_lets_through(gw: GatewayProcess) -> None:
    raw = oai(gw, "opa-audit", "production").chat.completions.with_raw_response.create(
        model=MODEL, messages=user("hello")
    )
    assert raw.parse().choices[0].message.content
    decided = policy_decision(gw, raw.headers["x-custos-request-id"], "opa-audit")
    assert decided["decision"] == "audit_only" and decided["reason"] == "denied"
    assert decided["input"]["policy_rule"] == "no-models-in-production"


# -- refused at reload ----------------------------------------------------------------------------


def refused(gateway: GatewayProcess) -> float:
    return gateway.metric("custos_config_reloads_total", result="refused")


@pytest.mark.parametrize("engine", ["cedar", "rego"])
def test_a_policy_file_with_an_error_is_refused_at_reload_and_a_fix_applied(
    mock_provider: MockProvider, tmp_path: Path, engine: str
) -> None:
    write_policies(tmp_path)
    rule = {"id": "models", "hook": "llm_input", **ENGINES[engine]}
    config = standard_config(mock_provider.url) + f"guardrails: [{json.dumps(rule)}]\n"
    gateway = GatewayProcess(config, tmp_path)
    try:
        production = {"x-custos-metadata": '{"environment": "production"}'}
        client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0,
                               default_headers=production)  # fmt: skip

        def production_blocked() -> bool:
            try:
                client.chat.completions.create(model=MODEL, messages=user("x"))
            except openai.BadRequestError as exc:
                return "no-models-in-production" in exc.message
            return False

        assert production_blocked()
        serving = gateway.revision()
        file = tmp_path / "policies" / ("tools.cedar" if engine == "cedar" else "tools.rego")
        good = file.read_text()
        before = refused(gateway)
        logged = len(gateway.log())
        replace_atomically(file, BROKEN[0][2] if engine == "cedar" else BROKEN[3][2])
        wait_until(lambda: refused(gateway) > before, what="the broken policy's refusal")
        log = gateway.log()[logged:]
        assert "config reload refused" in log and "tools." in log and "not valid" in log, log
        assert gateway.revision() == serving
        assert production_blocked()  # the old revision's policy keeps deciding
        # The fix drops the production rule: a new revision, and production calls go through.
        fixed = good.replace("production", "nowhere")
        replace_atomically(file, fixed)
        wait_until(lambda: gateway.revision() != serving, what="the fixed policy to apply")
        assert not production_blocked()
    finally:
        gateway.stop()

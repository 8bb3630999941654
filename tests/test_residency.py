"""Data residency (docs/residency.md): requests a rule matches reach only accounts in its regions.

Regions and rules are checked as units first; then a gateway process with mock accounts in
several regions is called with the official ``openai`` and ``anthropic`` SDKs: a declared class
and a class detected in the prompt both keep a request in the EU, across retries and fallbacks,
and a request with no EU target left is refused 403 ``residency_denied`` naming the rule. The
mock tells which account received what: every account sends its name in a header.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import custos.gateway
from custos.config.loader import ConfigError, parse_config
from custos.config.residency import ResidencyRule
from custos.config.schema import Config
from custos.context import Decision, RequestContext
from custos.errors import GatewayError
from custos.gateway import Gateway
from custos.http.app import GatewayApp
from custos.policy.regions import GROUPS, RegionSelector
from custos.policy.when import Facts
from custos.runtime import Runtime
from custos.telemetry import metrics
from tests.audit_helpers import one_call
from tests.conftest import (
    MOCK_KEY,
    TOKEN_KEY,
    GatewayProcess,
    MockProvider,
    issue_admin_token,
    serve_gateway,
)

ACCOUNT_HEADER = "x-test-account"
PRICE = "{input_per_mtok: 1, output_per_mtok: 2}"


# -- regions ---------------------------------------------------------------------------------------


def test_a_group_holds_its_own_name_and_the_eu_regions_of_each_cloud():
    eu = RegionSelector(["eu"])
    for region in ("eu", "eu-central-1", "eu-west-1", "europe-west4", "westeurope", "EU-West-1"):
        assert eu.allows(region), region
    # In Europe, outside the European Union: AWS still names them eu-.
    for region in ("eu-west-2", "eu-central-2", "europe-west2", "europe-west6", "uksouth",
                   "switzerlandnorth", "us", "us-east-1", "eastus", "eu-somewhere-9"):  # fmt: skip
        assert not eu.allows(region), region
    assert GROUPS["us"] >= {"us", "us-east-1", "us-central1", "eastus2"}
    assert GROUPS["eu"].isdisjoint(GROUPS["us"])


def test_globs_and_exact_names_and_never_a_missing_region():
    selector = RegionSelector(["eu-*", "westeurope"])
    assert selector.allows("eu-west-2")  # a glob takes what its pattern says (London too)
    assert selector.allows("westeurope")
    assert not selector.allows("europe-west4")
    assert not selector.allows("xeu-west-1")  # whole names only
    anything = RegionSelector(["*"])
    assert anything.allows("on-prem")
    assert not anything.allows(None)
    assert not RegionSelector(["eu"]).allows(None)


# -- config ----------------------------------------------------------------------------------------

BASE = textwrap.dedent(
    """\
    version: 1
    providers:
      us-main:
        type: openai
        base_url: http://127.0.0.1:9/v1
        api_key: ${env:HOME}
        region: us
        models: {m: {input_per_mtok: 1}}
      eu-main:
        type: openai
        base_url: http://127.0.0.1:9/v1
        api_key: ${env:HOME}
        region: eu-west-1
        models: {m: {input_per_mtok: 1}}
    data_classes:
      customer_data: {detectors: [pii.email]}
    """
)
DESIGN_EXAMPLE = """\
residency:
  - id: eu-customer-data
    when: {data_classes: [customer_data]}
    allow_regions: [eu]
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.message) for p in caught.value.problems]


def test_the_design_example_loads():
    config = parse_config(BASE + DESIGN_EXAMPLE).config
    (rule,) = config.residency
    assert (rule.id, rule.allow_regions) == ("eu-customer-data", ["eu"])
    assert rule.when.data_classes is not None and rule.when.data_classes.in_ == ["customer_data"]


def test_with_residency_rules_every_account_needs_a_region():
    text = (BASE + DESIGN_EXAMPLE).replace("    region: us\n", "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    ((path, line, message),) = [(p.path, p.line, p.message) for p in caught.value.problems]
    assert path == "providers.us-main.region"
    assert line == text.splitlines().index("  us-main:") + 1
    assert "residency" in message
    # The schema holds the rule too, for a config built without the loader.
    with pytest.raises(ValidationError, match="'us-main' has none"):
        Config.model_validate(yaml.safe_load(text))
    parse_config(BASE.replace("    region: us\n", ""))  # without rules a region is optional


@pytest.mark.parametrize(
    ("rule", "where", "says"),
    [
        ({"id": "r", "allow_regions": []}, "residency[0].allow_regions", "at least 1"),
        ({"id": "r", "allow_regions": ["eu west"]}, "residency[0].allow_regions", "not a region"),
        ({"id": "r", "allow_regions": ["eu", "EU"]}, "residency[0].allow_regions", "twice"),
        ({"id": "r"}, "residency[0].allow_regions", "required"),
        ({"allow_regions": ["eu"]}, "residency[0].id", "required"),
        (
            {"id": "r", "when": {"mcp_tools": ["jira.search"]}, "allow_regions": ["eu"]},
            "residency[0].when",
            "model calls",
        ),
        ({"id": "r", "allow_regions": ["eu"], "zone": "eu"}, "residency[0].zone", "unknown"),
    ],
)
def test_bad_rules_are_refused_with_their_path(rule: dict[str, Any], where: str, says: str):
    found = problems(BASE + "residency: " + json.dumps([rule]) + "\n")
    assert [path for path, _ in found] == [where]
    assert says in found[0][1].lower()


def test_rule_ids_are_unique():
    rules = [{"id": "r", "allow_regions": ["eu"]}, {"id": "r", "allow_regions": ["us"]}]
    ((path, message),) = problems(BASE + "residency: " + json.dumps(rules) + "\n")
    assert path == "residency" and "residency[0] and residency[1]" in message


def test_regions_are_kept_in_lower_case():
    rule = ResidencyRule.model_validate({"id": "r", "allow_regions": ["EU", "Europe-*"]})
    assert rule.allow_regions == ["eu", "europe-*"]


# -- the policy ------------------------------------------------------------------------------------


def test_rules_intersect_in_order_and_a_remembered_placement_decides_the_same_each_time():
    customers = {"data_classes": ["customer_data"]}
    rules = [
        {"id": "customers-eu", "when": customers, "allow_regions": ["eu"]},
        {"id": "everything-us", "allow_regions": ["us"]},
    ]
    text = BASE + "residency: " + json.dumps(rules) + "\n"
    runtime = Runtime(parse_config(text))
    candidates = [runtime.targets["us-main/m"], runtime.targets["eu-main/m"]]
    plain = Facts(frozenset({"user:ann@x.example"}), "m", {}, frozenset())
    customer = Facts(frozenset({"user:ann@x.example"}), "m", {}, frozenset({"customer_data"}))
    denials = metrics.child(metrics.RESIDENCY_DECISIONS, "everything-us", "deny")
    before = denials.value
    for _ in range(2):  # the second time from what the policy remembers
        decisions: list[Decision] = []
        kept = runtime.residency.place(plain, "m", candidates, decisions)
        assert [t.name for t in kept] == ["us-main/m"]
        assert [(d.rule, d.outcome) for d in decisions] == [("everything-us", "allow")]
        decisions = []
        with pytest.raises(GatewayError) as caught:
            runtime.residency.place(customer, "m", candidates, decisions)
        assert caught.value.code == "residency_denied" and caught.value.status == 403
        assert "'everything-us'" in caught.value.message
        assert "earlier residency rules" in caught.value.message
        assert [(d.rule, d.outcome, d.reason) for d in decisions] == [
            ("customers-eu", "allow", None),
            ("everything-us", "deny", "no_allowed_region"),
        ]
        assert decisions[1].input == {
            "allow_regions": ["us"],
            "kept": [],
            "removed": [{"target": "eu-main/m", "region": "eu-west-1"}],
        }
    assert denials.value == before + 2


# -- through the gateway ---------------------------------------------------------------------------

US_OK = "us-openai/gpt"
US_503 = "us-openai/gpt+status=503"
EU_503 = "eu-azure/gpt-503"
EU_OK = "eu-azure/gpt"
EU_CLAUDE = "eu-claude/claude"
US_CLAUDE = "us-claude/claude"
LONDON = "uk-openai/gpt"
RULE = "eu-customer-data"


def residency_config(mock_url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        state: {{store: "sqlite:///./custos.db"}}
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
        access:
          - id: everyone-everything
            subjects: ["*"]
            models: ["*"]
        providers:
          us-openai:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: us-east-1
            headers: {{{ACCOUNT_HEADER}: us-openai}}
            models:
              gpt: {PRICE}
              gpt+status=503: {PRICE}
          uk-openai:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: eu-west-2
            headers: {{{ACCOUNT_HEADER}: uk-openai}}
            models:
              gpt: {PRICE}
          eu-azure:
            type: azure_openai
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            api_version: "2024-10-21"
            region: westeurope
            headers: {{{ACCOUNT_HEADER}: eu-azure}}
            models:
              gpt: {{deployment: gpt-eu, input_per_mtok: 1, output_per_mtok: 2}}
              gpt-503: {{deployment: "gpt-eu+status=503", input_per_mtok: 1, output_per_mtok: 2}}
          eu-claude:
            type: anthropic
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: eu
            headers: {{{ACCOUNT_HEADER}: eu-claude}}
            models:
              claude: {PRICE}
          us-claude:
            type: anthropic
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: us
            headers: {{{ACCOUNT_HEADER}: us-claude}}
            models:
              claude: {PRICE}
        virtual_models:
          chat:
            targets: [{{model: {US_503}}}, {{model: {LONDON}}}, {{model: {EU_503}}},
                      {{model: {US_OK}}}, {{model: {EU_OK}}}]
            retry: {{attempts: 2, backoff_ms: 1, on_status: [503]}}
          us-only:
            targets: [{{model: {US_OK}}}, {{model: {LONDON}}}]
          claude:
            strategy: weighted
            targets: [{{model: {US_CLAUDE}, weight: 100}}, {{model: {EU_CLAUDE}, weight: 1}}]
        data_classes:
          customer_data: {{detectors: [pii.email]}}
        residency:
          - id: {RULE}
            when: {{data_classes: [customer_data]}}
            allow_regions: [eu]
          - id: health-in-eu-west
            when: {{data_classes: [health]}}
            allow_regions: ["eu-west-*", westeurope]
        """
    )


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(residency_config(mock_provider.url), tmp_path_factory.mktemp("res"))


def _openai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0, timeout=10)


def _anthropic(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=10)


def _metadata(classes: str | None) -> dict[str, str] | None:
    if classes is None:
        return None
    return {"x-custos-metadata": json.dumps({"data_classification": classes})}


def _reached(mock: MockProvider, marker: str) -> list[str]:
    """The accounts that received a request carrying ``marker``, in order."""
    return [
        r["headers"].get(ACCOUNT_HEADER, "?")
        for r in mock.requests()
        if marker in json.dumps(r["body"])
    ]


def _record(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    return one_call(f"sqlite:///{gw.config_path.parent / 'custos.db'}", request_id)


def _at(target: str, region: str) -> dict[str, str]:
    return {"target": target, "region": region}


def _residency_decisions(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in record["decisions"] if d["stage"] == "route"]


def test_a_declared_class_keeps_the_call_in_the_eu_across_retries_and_fallbacks(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    marker = f"declared {uuid.uuid4().hex}"
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": marker}],
        extra_headers=_metadata("customer_data"),
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-custos-served-by"] == EU_OK
    assert RULE in raw.headers["x-custos-applied"].split(",")
    # The failing EU target is retried, then the next EU one; no US or London account is asked.
    assert _reached(mock_provider, marker) == ["eu-azure", "eu-azure", "eu-azure"]
    record = _record(gw, raw.headers["x-custos-request-id"])
    assert [a["target"] for a in record["attempts"]] == [EU_503, EU_503, EU_OK]
    assert {a["region"] for a in record["attempts"]} == {"westeurope"}
    ((decision,),) = [_residency_decisions(record)]
    assert decision == {
        "stage": "route",
        "rule": RULE,
        "decision": "allow",
        "reason": None,
        "input": {
            "allow_regions": ["eu"],
            "kept": [_at(EU_503, "westeurope"), _at(EU_OK, "westeurope")],
            "removed": [
                _at(US_503, "us-east-1"),
                _at(LONDON, "eu-west-2"),
                _at(US_OK, "us-east-1"),
            ],
        },
    }
    assert record["cloud.region"] == "westeurope"


def test_without_a_restricted_class_every_target_may_serve(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    marker = f"plain {uuid.uuid4().hex}"
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": marker}]
    )
    assert raw.headers["x-custos-served-by"] == LONDON  # the first healthy one, after the 503s
    assert _reached(mock_provider, marker) == ["us-openai", "us-openai", "uk-openai"]
    record = _record(gw, raw.headers["x-custos-request-id"])
    assert _residency_decisions(record) == []
    assert RULE not in raw.headers.get("x-custos-applied", "")


def test_an_email_in_the_prompt_keeps_an_anthropic_call_in_the_eu(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    # The weighted strategy would send almost every call to the US account: a detected class
    # leaves it only the EU one (filtered before the strategy draws).
    for _ in range(5):
        marker = f"detected {uuid.uuid4().hex}"
        raw = _anthropic(gw).messages.with_raw_response.create(
            model="claude",
            max_tokens=50,
            messages=[{"role": "user", "content": f"{marker}: mail jane.roe@northwind.example"}],
        )
        assert raw.parse().content[0].text  # type: ignore[union-attr]
        assert raw.headers["x-custos-served-by"] == EU_CLAUDE
        assert _reached(mock_provider, marker) == ["eu-claude"]
    record = _record(gw, raw.headers["x-custos-request-id"])
    assert {"class": "customer_data", "count": 1, "source": "detected"} in record["data_classes"]
    (decision,) = _residency_decisions(record)
    assert (decision["rule"], decision["decision"]) == (RULE, "allow")
    assert decision["input"]["removed"] == [{"target": US_CLAUDE, "region": "us"}]


def test_a_stream_with_customer_data_is_served_in_the_eu(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    marker = f"stream {uuid.uuid4().hex}"
    with _openai(gw).chat.completions.with_streaming_response.create(
        model="chat",
        messages=[{"role": "user", "content": f"{marker} for ann@northwind.example"}],
        stream=True,
    ) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        assert response.headers["x-custos-served-by"] == EU_OK
    assert text
    assert set(_reached(mock_provider, marker)) == {"eu-azure"}


def test_no_allowed_target_is_403_residency_denied_naming_the_rule_in_openai_shape(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    marker = f"denied {uuid.uuid4().hex}"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _openai(gw).chat.completions.create(
            model="us-only",
            messages=[{"role": "user", "content": marker}],
            extra_headers=_metadata("customer_data"),
        )
    err = caught.value
    assert err.status_code == 403 and err.code == "residency_denied"
    assert RULE in err.message and "us-only" in err.message
    assert err.body["type"] == "permission_error"  # type: ignore[index]
    assert _reached(mock_provider, marker) == []
    record = _record(gw, err.response.headers["x-custos-request-id"])
    assert (record["outcome"], record["stopped_at"], record["error.type"]) == (
        "denied", "route", "residency_denied",
    )  # fmt: skip
    assert record["attempts"] == []
    (decision,) = _residency_decisions(record)
    assert (decision["rule"], decision["decision"], decision["reason"]) == (
        RULE, "deny", "no_allowed_region",
    )  # fmt: skip
    assert decision["input"]["kept"] == []
    assert gw.metric("custos_residency_decisions_total", rule=RULE, outcome="deny") >= 1
    assert gw.metric("custos_residency_decisions_total", rule=RULE, outcome="allow") >= 1


def test_no_allowed_target_is_403_residency_denied_in_anthropic_shape(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    marker = f"denied {uuid.uuid4().hex}"
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        _anthropic(gw).messages.create(
            model=US_CLAUDE,  # a model named directly is held to the same rules
            max_tokens=50,
            messages=[{"role": "user", "content": f"{marker} to bo@northwind.example"}],
        )
    err = caught.value
    assert err.status_code == 403
    assert err.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert RULE in err.body["error"]["message"]  # type: ignore[index]
    assert _reached(mock_provider, marker) == []


def test_a_token_count_is_held_to_the_rules_too(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    # Counting sends the prompt to the account: an email keeps it from the US one.
    marker = f"count {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": f"{marker} to cy@northwind.example"}]
    with pytest.raises(anthropic.PermissionDeniedError):
        _anthropic(gw).messages.count_tokens(model=US_CLAUDE, messages=messages)  # type: ignore[arg-type]
    counted = _anthropic(gw).messages.count_tokens(model="claude", messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens > 0
    assert _reached(mock_provider, marker) == ["eu-claude"]


def test_several_matching_rules_intersect_and_the_one_that_empties_the_set_is_named(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    # customer_data allows eu (westeurope and the EU Claude account); health allows eu-west-*
    # and westeurope: together only westeurope is left.
    marker = f"both {uuid.uuid4().hex}"
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": marker}],
        extra_headers=_metadata("customer_data,health"),
    )
    assert raw.headers["x-custos-served-by"] == EU_OK
    applied = raw.headers["x-custos-applied"].split(",")
    assert RULE in applied and "health-in-eu-west" in applied
    # health alone may go to London (eu-west-2) but not to the US.
    marker = f"health {uuid.uuid4().hex}"
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": marker}],
        extra_headers=_metadata("health"),
    )
    assert raw.headers["x-custos-served-by"] == LONDON
    assert _reached(mock_provider, marker) == ["uk-openai"]
    # On the EU Claude account (region eu), customer data passes the first rule, and the
    # second, which allows no such region, names itself.
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        _anthropic(gw).messages.create(
            model="claude",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=_metadata("customer_data,health"),
        )
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert "'health-in-eu-west'" in message and "earlier residency rules" in message


def test_the_report_by_region_shows_customer_data_only_in_the_eu(gw: GatewayProcess) -> None:
    # With whatever the tests above sent (customer data served in the EU, or refused), and:
    served = [
        _openai(gw).chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "for ann@northwind.example"}]
        ),
        _anthropic(gw).messages.with_raw_response.create(
            model="claude", max_tokens=20,
            messages=[{"role": "user", "content": "for bo@northwind.example"}],
        ),
    ]  # fmt: skip
    for raw in served:
        _record(gw, raw.headers["x-custos-request-id"])  # stored
    today = datetime.now(UTC).date()
    query = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1)),
             "data_class": "customer_data", "group_by": "region"}  # fmt: skip
    reply = httpx.get(f"{gw.url}/admin/v1/audit/report", params=query, headers=gw.headers)
    assert reply.status_code == 200, reply.text
    rows = {r["group"]["region"]: r["requests"] for r in reply.json()["rows"]}
    assert rows.get("westeurope", 0) > 0 and rows.get("eu", 0) > 0, rows
    assert set(rows) <= {"westeurope", "eu", None}, rows  # None: refused, sent nowhere


# -- the property: random configs, requests and failures -------------------------------------------
#
# One gateway runs in this process; each example applies a random revision to it (accounts in
# random regions, virtual models with random targets, retries, fallbacks and cooldowns, random
# residency rules), sends it random requests (plain or streamed; classes declared, or found in
# the content) through the ASGI app, and reads from the mock which account received each. An
# independent model of the rules (region groups written out below for the regions drawn, globs
# by fnmatch) says which accounts were allowed, and, for the priority strategy without a
# cooldown, which attempts the route must make. A stage at the head of the chain keeps what
# each record is made of, which must say the same (attempts and residency decisions).

#: The regions accounts are drawn from, and which of them the test counts as in the EU / US.
EU_REGIONS = ("eu", "eu-west-1", "eu-central-1", "europe-west4", "westeurope")
US_REGIONS = ("us", "us-east-1", "eastus", "us-central1")
OTHER_REGIONS = ("eu-west-2", "europe-west2", "uksouth", "on-prem")
#: (groups drawn more often than single regions, which leave fewer candidates)
ALLOW_ENTRIES = ("eu", "eu", "us", "us", "eu-*", "europe-*", "westeurope", "eu-west-2", "us-*",
                 "on-prem")  # fmt: skip
#: The variants every account serves: its model name, the mock directive, the status the
#: gateway sees (a provider's 500 reaches the caller as 502).
VARIANTS = {"ok": ("", 200), "e503": ("+status=503", 503), "e500": ("+status=500", 502),
            "e429": ("+status=429", 429)}  # fmt: skip
STATUSES = (429, 502, 503)
CLASSES = ("customer_data", "health")
EMAIL = "dana.lee@northwind.example"
DIAGNOSIS = "diagnosis"


def _allows(entry: str, region: str) -> bool:
    if entry == "eu":
        return region in EU_REGIONS
    if entry == "us":
        return region in US_REGIONS
    if "*" in entry:
        return fnmatch.fnmatchcase(region, entry)
    return region == entry


@st.composite
def revisions(draw: st.DrawFn) -> dict[str, Any]:
    regions = st.sampled_from(EU_REGIONS + US_REGIONS + OTHER_REGIONS)
    accounts = {
        f"a{i}": {"type": draw(st.sampled_from(["openai", "anthropic", "azure_openai"])),
                  "region": draw(regions)}
        for i in range(draw(st.integers(2, 6)))
    }  # fmt: skip
    variants = st.sampled_from(["ok", "ok", "e503", "e500", "e429"])
    statuses = st.one_of(st.just(list(STATUSES)), st.lists(st.sampled_from(STATUSES), unique=True))
    targets = st.tuples(st.sampled_from(sorted(accounts)), variants)
    virtual = {
        f"vm{i}": {
            "strategy": draw(st.sampled_from(["priority", "priority", "weighted"])),
            "targets": draw(st.lists(targets, min_size=1, max_size=5)),
            "weights": draw(st.lists(st.integers(1, 5), min_size=5, max_size=5)),
            "attempts": draw(st.integers(1, 3)),
            "on_status": draw(statuses),
            "fallback_on": draw(statuses),
            # A cooldown makes the route skip a target that failed (targets then go untried).
            "cooldown": draw(st.sampled_from([None, None, None, 1, 2])),
        }
        for i in range(draw(st.integers(1, 3)))
    }
    whens = st.one_of(
        st.builds(lambda c: {"data_classes": c}, st.lists(st.sampled_from(CLASSES), min_size=1,
                                                          max_size=2, unique=True)),
        st.just({}),
        st.builds(lambda m: {"models": [m]}, st.sampled_from(sorted(virtual))),
    )  # fmt: skip
    rules = [
        {"id": f"r{i}", "when": draw(whens),
         "allow_regions": draw(st.lists(st.sampled_from(ALLOW_ENTRIES), min_size=1, max_size=3,
                                        unique=True))}
        for i in range(draw(st.integers(0, 2)))
    ]  # fmt: skip
    if draw(st.booleans()):  # the design's rule, somewhere in the list
        eu_rule = {"id": "eu-customer-data", "when": {"data_classes": ["customer_data"]},
                   "allow_regions": ["eu"]}  # fmt: skip
        rules.insert(draw(st.integers(0, len(rules))), eu_rule)
    return {"accounts": accounts, "virtual": virtual, "rules": rules}


@st.composite
def requests(draw: st.DrawFn, revision: dict[str, Any]) -> list[dict[str, Any]]:
    direct = [f"{a}/{v}" for a in revision["accounts"] for v in ("ok", "ok", "e503")]
    models = st.one_of(st.sampled_from(sorted(revision["virtual"])), st.sampled_from(direct))
    return [
        {
            "model": draw(models),
            "protocol": draw(st.sampled_from(["openai", "anthropic"])),
            "stream": draw(st.booleans()),
            "declared": draw(st.lists(st.sampled_from(CLASSES), unique=True)),
            "email": draw(st.booleans()),
            "diagnosis": draw(st.booleans()),
        }
        for _ in range(draw(st.integers(1, 4)))
    ]


def revision_text(base: str, mock_url: str, revision: dict[str, Any]) -> str:
    providers: dict[str, Any] = {}
    for name, account in revision["accounts"].items():
        kind = account["type"]
        models = {}
        for variant, (directive, _) in VARIANTS.items():
            upstream = "deployment" if kind == "azure_openai" else "upstream_model"
            models[variant] = {upstream: f"m{directive}", "input_per_mtok": 1}
        providers[name] = {
            "type": kind,
            "base_url": f"{mock_url}/v1" if kind == "openai" else mock_url,
            "api_key": "${env:CUSTOS_TEST_MOCK_KEY}",
            "region": account["region"],
            "headers": {ACCOUNT_HEADER: name},
            "models": models,
            **({"api_version": "2024-10-21"} if kind == "azure_openai" else {}),
        }
    virtual_models = {
        name: {
            "strategy": vm["strategy"],
            "targets": [
                {"model": f"{a}/{v}", "weight": w}
                for (a, v), w in zip(vm["targets"], vm["weights"], strict=False)
            ],
            "retry": {"attempts": vm["attempts"], "backoff_ms": 0, "on_status": vm["on_status"]},
            "fallback_on": vm["fallback_on"],
            **(
                {"cooldown": {"failures": vm["cooldown"], "cooldown_s": 60}}
                if vm["cooldown"]
                else {}
            ),
        }
        for name, vm in revision["virtual"].items()
    }
    sections = {
        "providers": providers,
        "virtual_models": virtual_models,
        "data_classes": {
            "customer_data": {"detectors": ["pii.email"]},
            "health": {"detectors": ["keyword.terms"], "keywords": {"terms": [DIAGNOSIS]}},
        },
        "residency": revision["rules"],
    }
    return base + "".join(f"{key}: {json.dumps(value)}\n" for key, value in sections.items())


class Expected:
    """What the model of the rules says about one request."""

    def __init__(self, revision: dict[str, Any], request: dict[str, Any]) -> None:
        classes = set(request["declared"])
        if request["email"]:
            classes.add("customer_data")
        if request["diagnosis"]:
            classes.add("health")
        model = request["model"]
        vm = revision["virtual"].get(model)
        targets = [tuple(model.split("/"))] if vm is None else vm["targets"]
        region = {name: a["region"] for name, a in revision["accounts"].items()}
        self.matching: list[str] = []
        self.denied_by: str | None = None
        kept = list(targets)
        for rule in revision["rules"]:
            if not _when_matches(rule["when"], classes, model):
                continue
            self.matching.append(rule["id"])
            kept = [t for t in kept if any(_allows(e, region[t[0]]) for e in rule["allow_regions"])]
            if not kept:
                self.denied_by = rule["id"]
                break
        self.kept = kept
        self.allowed_accounts = {account for account, _ in kept}
        self.eu_only = any(
            rule["allow_regions"] == ["eu"] for rule in revision["rules"]
            if rule["id"] in self.matching
        )  # fmt: skip
        self.cooled = vm is not None and vm["cooldown"] is not None
        predictable = vm is None or (_ordered(vm) and not self.cooled)
        self.attempts = _priority_attempts(vm, kept) if predictable else None


def _when_matches(when: dict[str, Any], classes: set[str], model: str) -> bool:
    if "data_classes" in when:
        return bool(classes & set(when["data_classes"]))
    if "models" in when:
        return model in when["models"]
    return True


def _ordered(vm: dict[str, Any]) -> bool:
    """Whether the route tries its targets in the order written."""
    return vm["strategy"] == "priority" or len(vm["targets"]) < 2


def _priority_attempts(
    vm: dict[str, Any] | None, kept: list[tuple[str, str]]
) -> list[tuple[str, int]]:
    """The (account, status) of every attempt the route makes, in order (custos.routing)."""
    attempts_per_target = vm["attempts"] if vm else 1
    on_status = set(vm["on_status"]) if vm else set()
    fallback_on = set(vm["fallback_on"]) if vm else set()
    made: list[tuple[str, int]] = []
    for account, variant in kept:
        status = VARIANTS[variant][1]
        for _ in range(attempts_per_target):
            made.append((account, status))
            if status == 200 or status not in on_status:
                break
        if status == 200 or vm is None or status not in fallback_on:
            break
    return made


class Settled:
    """First in the chain, so it settles last: keeps what each request's record is made of
    (its attempts' targets and its residency decisions), by request id."""

    name = "gateway"

    def __init__(self) -> None:
        self.seen: dict[str, tuple[list[str], list[tuple[str | None, str]]]] = {}

    def settle(self, ctx: RequestContext) -> None:
        routed = [(d.rule, d.outcome) for d in ctx.decisions if d.stage == "route"]
        self.seen[ctx.request_id] = ([a.target for a in ctx.attempts], routed)


class RecordingGateway(Gateway):
    settled = Settled()

    def build_chain(self, runtime: Runtime) -> list[object]:
        return [self.settled, *super().build_chain(runtime)]


@pytest.fixture(scope="module")
def in_process(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[asyncio.AbstractEventLoop, RecordingGateway, httpx.AsyncClient, str, str]]:
    """A gateway in this process on its own event loop, its ASGI app behind an httpx client,
    and the fixed part of every revision's text."""
    tmp = tmp_path_factory.mktemp("residency-property")
    os.environ.setdefault("CUSTOS_TEST_MOCK_KEY", MOCK_KEY)
    os.environ.setdefault("CUSTOS_TEST_TOKEN_KEY", TOKEN_KEY)
    store = f"sqlite:///{tmp / 'custos.db'}"
    token = issue_admin_token(store)
    base = textwrap.dedent(
        f"""\
        version: 1
        state: {{store: "{store}"}}
        identity: {{token_hash_key: "${{env:CUSTOS_TEST_TOKEN_KEY}}"}}
        audit: {{spool: {{path: "{tmp / "spool"}"}}}}
        access: [{{id: everyone, subjects: ["*"], models: ["*"]}}]
        """
    )
    first = revision_text(base, mock_provider.url,
                          {"accounts": {"a0": {"type": "openai", "region": "eu"}}, "virtual": {},
                           "rules": []})  # fmt: skip
    path = tmp / "custos.yaml"
    path.write_text(first)
    loop = asyncio.new_event_loop()
    tune = custos.gateway.tune_collector
    custos.gateway.tune_collector = lambda: None  # the test process's collector stays as is
    gateway = RecordingGateway.from_file(path, watch=False)
    try:
        loop.run_until_complete(gateway.start())
        transport = httpx.ASGITransport(app=GatewayApp(gateway))
        client = httpx.AsyncClient(transport=transport, base_url="http://custos.test", timeout=10)
        yield loop, gateway, client, base, token
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(gateway.stop())
    finally:
        custos.gateway.tune_collector = tune
        loop.close()


async def _send(
    client: httpx.AsyncClient, token: str, request: dict[str, Any], marker: str
) -> httpx.Response:
    parts = [marker]
    if request["email"]:
        parts.append(f"reply to {EMAIL}")
    if request["diagnosis"]:
        parts.append(f"the {DIAGNOSIS} is attached")
    messages = [{"role": "user", "content": " ".join(parts)}]
    headers = {"authorization": f"Bearer {token}"}
    if request["declared"]:
        classes = ",".join(request["declared"])
        headers["x-custos-metadata"] = json.dumps({"data_classification": classes})
    body: dict[str, Any] = {"model": request["model"], "messages": messages}
    if request["stream"]:
        body["stream"] = True
    if request["protocol"] == "anthropic":
        body["max_tokens"] = 20
        return await client.post("/v1/messages", json=body, headers=headers)
    return await client.post("/v1/chat/completions", json=body, headers=headers)


@pytest.mark.timeout(600)
@settings(max_examples=100, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_request_leaves_its_allowed_regions_and_only_an_empty_set_is_refused(
    in_process: tuple[asyncio.AbstractEventLoop, RecordingGateway, httpx.AsyncClient, str, str],
    mock_provider: MockProvider,
    data: st.DataObject,
) -> None:
    loop, gateway, client, base, token = in_process
    revision = data.draw(revisions(), label="revision")
    sent = data.draw(requests(revision), label="requests")
    loaded = parse_config(revision_text(base, mock_provider.url, revision))
    mock_provider.clear()
    markers = [f"q{uuid.uuid4().hex}" for _ in sent]

    async def send_all() -> list[httpx.Response]:
        gateway.apply(loaded)  # in the loop: the audit trail records the revision in a task
        return [await _send(client, token, r, m) for r, m in zip(sent, markers, strict=True)]

    responses = loop.run_until_complete(send_all())
    received = mock_provider.requests()
    regions = {name: a["region"] for name, a in revision["accounts"].items()}
    for request, marker, response in zip(sent, markers, responses, strict=True):
        expected = Expected(revision, request)
        reached = [
            r["headers"][ACCOUNT_HEADER] for r in received if marker in json.dumps(r["body"])
        ]
        note = f"{request} -> {response.status_code} {response.text[:300]}; reached {reached}"
        event("refused" if expected.denied_by else f"status {response.status_code}")
        event("EU-restricted" if expected.eu_only else "not EU-restricted")
        event(
            f"{min(len(reached), 3)}+ attempts" if len(reached) >= 3 else f"{len(reached)} attempts"
        )
        if expected.eu_only:  # the must-show: an EU-restricted class never leaves the EU
            assert all(regions[a] in EU_REGIONS for a in reached), note
        assert set(reached) <= expected.allowed_accounts, note
        error = response.json().get("error") if response.status_code != 200 else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message", "") if isinstance(error, dict) else ""
        # What the record is made of says the same: the attempts the mock saw, and one
        # decision per matching rule, up to the one that left nothing.
        attempted, routed = gateway.settled.seen[response.headers["x-custos-request-id"]]
        assert [t.split("/", 1)[0] for t in attempted] == reached, note
        decided = expected.matching
        assert routed == [(rule, "deny" if rule == expected.denied_by else "allow")
                          for rule in decided], note  # fmt: skip
        if expected.denied_by is not None:
            assert response.status_code == 403, note
            assert code in ("residency_denied", None), note  # None: Anthropic's shape
            assert f"'{expected.denied_by}'" in message, note
            assert reached == [], note
            continue
        assert response.status_code != 403, note
        cooling = response.status_code == 503 and "cooling down" in message  # both shapes
        if not (expected.cooled and cooling):
            assert reached, note  # an allowed candidate exists: it was tried
        if expected.attempts is not None:
            assert reached == [a for a, _ in expected.attempts], note
            assert response.status_code == expected.attempts[-1][1], note
        if response.status_code == 200:
            applied = response.headers.get("x-custos-applied", "").split(",")
            assert set(expected.matching) <= set(applied), note

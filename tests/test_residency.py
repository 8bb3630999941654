"""Data residency (docs/residency.md): requests a rule matches reach only accounts in its regions.

Regions and rules are checked as units first; then a gateway process with mock accounts in
several regions is called with the official ``openai`` and ``anthropic`` SDKs: a declared class
and a class detected in the prompt both keep a request in the EU, across retries and fallbacks,
and a request with no EU target left is refused 403 ``residency_denied`` naming the rule. The
mock tells which account received what: every account sends its name in a header.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from custos.config.loader import ConfigError, parse_config
from custos.config.residency import ResidencyRule
from custos.policy.regions import GROUPS, RegionSelector
from tests.audit_helpers import one_call
from tests.conftest import GatewayProcess, MockProvider, serve_gateway

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
    ((_, message),) = problems(text)
    assert "'us-main'" in message and "region" in message
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

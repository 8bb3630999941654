"""The quarter question from content: teams send customer data without labelling it, and the
report names them, with totals that match the records.

Three teams' services call the gateway through their virtual accounts: one sends customer
e-mail addresses and customer ids in its prompts without saying so, one labels its requests
``customer_data`` in the metadata, one sends nothing of the kind. ``data_classes`` tells the
gateway what customer data looks like; the report over the day, by team and source, must name
the first team (``detected``) and the second (``declared``), never the third, and its totals
must equal what the stored records say.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.audit_helpers import recorded
from tests.conftest import GatewayProcess, MockProvider, standard_config

CLASSES = {
    "customer_data": {
        "detectors": ["pii.email", "pattern.customer_id"],
        "patterns": {"customer_id": "CUST-[0-9]{6}"},
    }
}
SENDS = {
    "support": ["refund for CUST-{n:06d} please", "reply to client{n}@northwind.example"],
    "sales": ["draft a pitch for a prospect"],
    "research": ["summarise the paper on transformers", "what is a monad"],
}
LABELLED = "sales"


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    text = standard_config(mock_provider.url) + "data_classes: " + json.dumps(CLASSES) + "\n"
    process = GatewayProcess(text, tmp_path_factory.mktemp("classes-report"))
    yield process
    process.stop()


def admin(gw: GatewayProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/admin/v1{path}", headers=gw.headers, timeout=10, **kw)


def service_token(gw: GatewayProcess, team: str) -> str:
    assert admin(gw, "POST", "/teams", json={"name": team}).status_code == 201
    assert (
        admin(
            gw,
            "POST",
            "/accounts",
            json={"name": f"{team}-bot", "team": team, "allowed_models": ["openai-main/*"]},
        ).status_code
        == 201
    )
    issued = admin(gw, "POST", "/tokens", json={"name": "t", "account": f"{team}-bot"})
    assert issued.status_code == 201, issued.text
    return issued.json()["token"]  # type: ignore[no-any-return]


def test_the_report_names_the_teams_that_sent_customer_data(gw: GatewayProcess) -> None:
    request_ids: list[str] = []
    for team, prompts in SENDS.items():
        metadata = {"data_classification": "customer_data"} if team == LABELLED else {}
        client = openai.OpenAI(
            base_url=gw.base_url, api_key=service_token(gw, team), max_retries=0,
            default_headers={"x-custos-metadata": json.dumps(metadata)},
        )  # fmt: skip
        for n in range(3):
            for prompt in prompts:
                raw = client.chat.completions.with_raw_response.create(
                    model="openai-main/gpt-5.5",
                    messages=[{"role": "user", "content": prompt.format(n=n)}],
                )
                request_ids.append(raw.headers["x-custos-request-id"])
    records = [recorded(gw, rid) for rid in request_ids]

    today = datetime.now(UTC).date()
    query = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1)),
             "data_class": "customer_data", "group_by": "team,data_class_source"}  # fmt: skip
    report = admin(gw, "GET", "/audit/report", params=query)
    assert report.status_code == 200, report.text
    rows = {(r["group"]["team"], r["group"]["data_class_source"]): r["requests"]
            for r in report.json()["rows"]}  # fmt: skip
    assert rows == {("support", "detected"): 6, ("sales", "declared"): 3}

    # The totals are what the records say, counted from the records themselves.
    carrying = [r for r in records if any(c["class"] == "customer_data" for c in r["data_classes"])]
    totals = report.json()["totals"]
    assert totals["requests"] == len(carrying) == 9
    assert totals["cost_micros"] == sum(r["cost_micros"] for r in carrying)
    assert totals["input_tokens"] == sum(r["gen_ai.usage.input_tokens"] for r in carrying)
    sources = Counter(c["source"] for r in carrying for c in r["data_classes"])
    assert sources == {"detected": 6, "declared": 3}

    detected_only = admin(gw, "GET", "/audit/report", params={**query, "source": "detected",
                                                              "group_by": "team"})  # fmt: skip
    assert [(r["group"]["team"], r["requests"]) for r in detected_only.json()["rows"]] == [
        ("support", 6)
    ]

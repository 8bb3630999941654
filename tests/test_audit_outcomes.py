"""One ``llm.call`` record per request, whatever its outcome, on SQLite and on PostgreSQL.

Each test makes one request the way a client does, takes its ``x-custos-request-id`` (or the
unique marker it sent) and asserts that exactly one record names it, with the fields that
outcome must have. Plus the other event types: ``auth.failure``, ``admin.change`` and
``config.revision``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from custos.config.schema import UNSUPPORTED_SECTIONS
from tests.audit_helpers import eventually, one_call, query, stored_records
from tests.conftest import ADMIN_EMAIL, TOKEN_KEY, GatewayProcess, MockProvider, standard_config
from tests.store_fixtures import (
    PG_URL,
    create_pg_schema,
    drop_pg_schema,
    require_pg,
    with_search_path,
)

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
_LIMITS_INPUT = ("estimated_input_tokens", "estimated_output_tokens", "reserved_micros")


@dataclass
class Audited:
    gateway: GatewayProcess
    store_url: str
    dialect: str

    def chat(
        self,
        model: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **body: object,
    ) -> httpx.Response:
        auth = {"authorization": f"Bearer {token or self.gateway.token}"}
        return httpx.post(
            f"{self.gateway.base_url}/chat/completions",
            headers={**auth, **(headers or {})},
            json={"model": model, **CHAT, **body},
            timeout=15,
        )

    def admin(self, method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.gateway.url}/admin/v1{path}",
            headers=self.gateway.headers,
            timeout=10,
            **kw,
        )


async def _bootstrap(store_url: str) -> str:
    from custos.admin.bootstrap import bootstrap
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store

    store = await open_store(store_url)
    try:
        return (await bootstrap(store, TokenService(store, TOKEN_KEY), ADMIN_EMAIL)).secret
    finally:
        await store.close()


def start_audited(config: str, tmp: Path, dialect: str) -> tuple[Audited, str | None]:
    """A gateway on ``dialect``; returns it and the PostgreSQL schema to drop (if any)."""
    if dialect == "sqlite":
        gateway = GatewayProcess(config, tmp)
        return Audited(gateway, f"sqlite:///{tmp / 'custos.db'}", dialect), None
    asyncio.run(require_pg())
    schema = asyncio.run(create_pg_schema())
    store_url = with_search_path(PG_URL, schema)
    token = asyncio.run(_bootstrap(store_url))
    config = config.replace('store: "sqlite:///./custos.db"', f'store: "{store_url}"')
    gateway = GatewayProcess(config, tmp)
    gateway.token = token
    return Audited(gateway, store_url, dialect), schema


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def audited(
    request: pytest.FixtureRequest,
    mock_provider: MockProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Audited]:
    config = standard_config(mock_provider.url)
    found, schema = start_audited(
        config, tmp_path_factory.mktemp(f"audit-{request.param}"), request.param
    )
    yield found
    found.gateway.stop()
    if schema:
        asyncio.run(drop_pg_schema(schema))


def _request_id(response: httpx.Response) -> str:
    return response.headers["x-custos-request-id"]


def test_served_call(audited: Audited) -> None:
    metadata = {"project": "alpha", "data_classification": "customer_data:2,pii.email"}
    headers = {"x-custos-metadata": json.dumps(metadata)}
    response = audited.chat("openai-main/gpt-5.5", headers=headers, max_tokens=50)
    assert response.status_code == 200
    record = one_call(audited.store_url, _request_id(response))
    assert record["schema_version"] == 3
    assert record["skips"] == []
    assert record["outcome"] == "served"
    assert record["http.response.status_code"] == 200
    assert record["error.type"] is None and record["stopped_at"] is None
    assert record["principal.kind"] == "user" and record["principal.id"].startswith("usr_")
    assert record["auth.token_id"].startswith("tok_")
    assert record["metadata"] == metadata
    assert record["data_classes"] == [
        {"class": "customer_data", "count": 2, "source": "declared"},
        {"class": "pii.email", "count": None, "source": "declared"},
    ]
    assert record["gen_ai.operation.name"] == "chat"
    assert record["gen_ai.request.model"] == "openai-main/gpt-5.5"
    assert record["gen_ai.request.max_tokens"] == 50
    assert record["gen_ai.provider.name"] == "openai"
    assert record["provider.account"] == "openai-main" and record["provider.model"] == "gpt-5.5"
    assert record["cloud.region"] == "us"
    usage = response.json()["usage"]
    assert record["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert record["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert record["cost_micros"] > 0 and record["currency"] == "USD"
    assert [a["target"] for a in record["attempts"]] == ["openai-main/gpt-5.5"]
    assert record["attempts"][0]["status"] == 200
    assert record["decisions"] == [
        {"stage": "authorize", "rule": "everyone-everything", "decision": "allow",
         "reason": None, "input": None}
    ]  # fmt: skip
    # No budget or rate limit applies: nothing was estimated or reserved.
    assert [record[f"limits.{k}"] for k in _LIMITS_INPUT] == [None, None, None]
    assert record["config.revision"] == audited.gateway.revision()
    assert record["time_start"] <= record["time_end"] and record["time_start"].endswith("Z")
    assert len(record["salt"]) == 32 and record["event_id"][14] == "7"
    # The projection agrees with the record, and has the data classes as rows.
    row = query(
        audited.store_url,
        "SELECT * FROM audit_llm_calls WHERE request_id = $1",
        record["request_id"],
    )[0]
    assert (row["provider"], row["model"], row["status"], row["outcome"], row["cost_micros"]) == (
        "openai-main",
        "gpt-5.5",
        200,
        "served",
        record["cost_micros"],
    )
    classes = query(
        audited.store_url,
        "SELECT data_class, match_count FROM"
        " audit_llm_call_data_classes WHERE event_id = $1 ORDER BY data_class",
        record["event_id"],
    )
    assert [(c["data_class"], c["match_count"]) for c in classes] == [
        ("customer_data", 2),
        ("pii.email", None),
    ]


def test_virtual_account_call_is_attributed_to_its_team(audited: Audited) -> None:
    team = f"support-{audited.dialect}"
    assert audited.admin("POST", "/teams", json={"name": team}).status_code == 201
    body = {"name": f"bot-{team}", "team": team, "allowed_models": ["azure-eu/*"]}
    account = audited.admin("POST", "/accounts", json=body)
    assert account.status_code == 201
    token = audited.admin("POST", "/tokens", json={"name": "t", "account": f"bot-{team}"})
    assert token.status_code == 201
    response = audited.chat("azure-eu/gpt-5.5", token=token.json()["token"])
    assert response.status_code == 200
    record = one_call(audited.store_url, _request_id(response))
    assert record["principal.kind"] == "virtual_account"
    assert record["team"] == team and record["principal.teams"] == [team]
    assert record["gen_ai.provider.name"] == "azure.ai.openai"
    assert record["provider.upstream_model"] == "gpt55-eu" and record["cloud.region"] == "eu"


def test_streamed_call(audited: Audited) -> None:
    with httpx.stream(
        "POST",
        f"{audited.gateway.base_url}/chat/completions",
        headers=audited.gateway.headers,
        json={"model": "claude-main/claude-sonnet-4.5", **CHAT, "stream": True},
        timeout=15,
    ) as response:
        assert response.status_code == 200
        body = response.read()
    assert b"[DONE]" in body
    record = one_call(audited.store_url, _request_id(response))
    assert record["outcome"] == "served" and record["gen_ai.request.stream"] is True
    assert record["gen_ai.provider.name"] == "anthropic"
    first_chunk_ms = record["time_to_first_chunk_ms"]
    assert isinstance(first_chunk_ms, int) and first_chunk_ms <= record["latency_ms"]
    assert record["gen_ai.usage.output_tokens"] > 0


@pytest.mark.parametrize(
    ("token", "code"),
    [("cst_pat_" + "A" * 40, "malformed_token"), (None, "missing_api_key")],
)
def test_unauthenticated_call(audited: Audited, token: str | None, code: str) -> None:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{audited.gateway.base_url}/chat/completions",
        headers=headers,
        json={"model": "openai-main/gpt-5.5", **CHAT},
        timeout=10,
    )
    assert response.status_code == 401
    record = one_call(audited.store_url, _request_id(response))
    assert record["http.response.status_code"] == 401
    assert record["outcome"] == "denied" and record["stopped_at"] == "authenticate"
    assert record["error.type"] == code == response.json()["error"]["code"]
    assert record["principal.id"] is None and record["auth.token_id"] is None
    # The body is never read before authentication, so the model is unknown.
    assert record["gen_ai.request.model"] is None and record["attempts"] == []


def test_forbidden_call(audited: Audited) -> None:
    narrowed = audited.admin("POST", "/tokens", json={"name": "narrow", "models": ["azure-eu/*"]})
    assert narrowed.status_code == 201
    response = audited.chat("openai-main/gpt-5.5", token=narrowed.json()["token"])
    assert response.status_code == 403
    record = one_call(audited.store_url, _request_id(response))
    assert record["outcome"] == "denied" and record["stopped_at"] == "authorize"
    assert record["error.type"] == "model_not_allowed"
    assert record["auth.token_id"] == narrowed.json()["record"]["id"]
    assert record["decisions"] == [
        {"stage": "authorize", "rule": None, "decision": "deny", "reason": "scope", "input": None}
    ]
    assert record["attempts"] == [] and record["cost_micros"] == 0


@pytest.mark.parametrize(
    ("header", "param"),
    [
        ("not json", "metadata"),
        ('{"data_classification": "Customer Data!"}', "metadata.data_classification"),
    ],
)
def test_bad_metadata(audited: Audited, header: str, param: str) -> None:
    response = audited.chat("openai-main/gpt-5.5", headers={"x-custos-metadata": header})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    record = one_call(audited.store_url, _request_id(response))
    assert record["outcome"] == "denied" and record["stopped_at"] == "identify"
    assert record["error.type"] == "invalid_metadata" and record["attempts"] == []


def test_bad_input(audited: Audited) -> None:
    response = httpx.post(
        f"{audited.gateway.base_url}/chat/completions",
        headers={**audited.gateway.headers, "content-type": "application/json"},
        content=b'{"model": "openai-main/gpt-5.5", "messages": [',
        timeout=10,
    )
    assert response.status_code == 400
    record = one_call(audited.store_url, _request_id(response))
    assert record["outcome"] == "denied" and record["stopped_at"] == "read_request"
    assert record["error.type"] == response.json()["error"]["code"]
    assert record["principal.id"] is not None  # authenticated before the body was read


def test_upstream_failure_with_fallback_and_without(audited: Audited) -> None:
    failed = audited.chat("openai-main/gpt-5.5+status=500")
    assert failed.status_code == 502
    record = one_call(audited.store_url, _request_id(failed))
    assert record["outcome"] == "upstream_error" and record["stopped_at"] == "provider"
    assert record["error.type"] == "upstream_error"
    assert [(a["status"], a["error"]) for a in record["attempts"]] == [(500, "upstream_error")]
    # A virtual model retries the first target, then falls back: every attempt is recorded.
    served = audited.chat("chat-default")
    assert served.status_code == 200
    record = one_call(audited.store_url, _request_id(served))
    assert record["outcome"] == "served" and record["provider.account"] == "azure-eu"
    assert [(a["target"], a["status"], a["region"]) for a in record["attempts"]] == [
        ("openai-main/gpt-5.5+status=503", 503, "us"),
        ("openai-main/gpt-5.5+status=503", 503, "us"),
        ("azure-eu/gpt-5.5", 200, "eu"),
    ]
    offsets = [a["offset_ms"] for a in record["attempts"]]
    assert offsets == sorted(offsets)


def test_upstream_timeout(audited: Audited) -> None:
    response = audited.chat("openai-main/gpt-5.5+latency_ms=5000")
    assert response.status_code == 504
    record = one_call(audited.store_url, _request_id(response))
    assert record["outcome"] == "upstream_error" and record["error.type"] == "upstream_timeout"
    assert record["latency_ms"] >= 1900


def test_client_disconnect_mid_stream(audited: Audited) -> None:
    marker = f"disconnect-{time.monotonic_ns()}"
    with (
        httpx.Client(timeout=15) as client,
        client.stream(
            "POST",
            f"{audited.gateway.base_url}/chat/completions",
            headers={**audited.gateway.headers, "x-custos-metadata": json.dumps({"run": marker})},
            json={
                "model": "openai-main/gpt-5.5+chunks=200+chunk_delay_ms=50",
                **CHAT,
                "stream": True,
            },
        ) as response,
    ):
        request_id = _request_id(response)
        chunks = response.iter_bytes()
        next(chunks)
        next(chunks)
    record = one_call(audited.store_url, request_id)
    assert record["http.response.status_code"] == 499
    assert (
        record["outcome"] == "client_disconnected" and record["error.type"] == "client_disconnected"
    )
    assert record["metadata"] == {"run": marker}
    assert record["gen_ai.usage.output_tokens"] > 0 and record["usage.estimated"] is True


@pytest.mark.skipif("rate_limits" in UNSUPPORTED_SECTIONS, reason="rate limits not built yet")
def test_rate_limited_call(mock_provider: MockProvider, tmp_path: Path) -> None:
    config = standard_config(mock_provider.url) + (
        "rate_limits:\n  - id: one-a-minute\n    when: {}\n    limit_to: 1\n"
        "    unit: requests_per_minute\n    applies_per: [user]\n"
    )
    audited, _ = start_audited(config, tmp_path, "sqlite")
    try:
        assert audited.chat("openai-main/gpt-5.5").status_code == 200
        response = audited.chat("openai-main/gpt-5.5")
        assert response.status_code == 429
        record = one_call(audited.store_url, _request_id(response))
        assert record["outcome"] == "denied" and record["stopped_at"] == "rate_limit"
        assert record["error.type"] == "rate_limit_exceeded"
        assert {"stage": "rate_limit", "rule": "one-a-minute", "decision": "deny",
                "reason": None, "input": {"units": 1}} in record["decisions"]  # fmt: skip
        # A requests-per-minute rule and no budget: tokens estimated, nothing reserved.
        estimated_in, estimated_out, reserved = (record[f"limits.{k}"] for k in _LIMITS_INPUT)
        assert estimated_in > 0 and estimated_out > 0 and reserved == 0
    finally:
        audited.gateway.stop()


@pytest.mark.skipif("budgets" in UNSUPPORTED_SECTIONS, reason="budgets not built yet")
def test_over_budget_call(mock_provider: MockProvider, tmp_path: Path) -> None:
    # Two budgets match: a roomy one in audit mode with nothing to object to, then the tiny
    # one that refuses. The record must say which one denied.
    config = standard_config(mock_provider.url) + (
        "budgets:\n  - id: roomy\n    when: {}\n    limit_usd: 1000\n    period: month\n"
        "    mode: audit\n"
        "  - id: tiny\n    when: {}\n    limit_usd: 0.000001\n    period: month\n"
        "    mode: enforce\n"
    )
    audited, _ = start_audited(config, tmp_path, "sqlite")
    try:
        statuses = [audited.chat("openai-main/gpt-5.5", max_tokens=40) for _ in range(3)]
        denied = [r for r in statuses if r.status_code in (402, 429)]
        assert denied, [r.status_code for r in statuses]
        record = one_call(audited.store_url, _request_id(denied[-1]))
        assert record["outcome"] == "denied" and record["stopped_at"] == "budget"
        assert record["error.type"] == "budget_exceeded"
        # The refused reservation is in the record: the estimate at gpt-5.5's prices ($1.25 in,
        # $10 out per million tokens), rounded up to whole micro-dollars, and max_tokens as
        # the output estimate; each budget's decision names it as its input.
        estimated_in, estimated_out, reserved = (record[f"limits.{k}"] for k in _LIMITS_INPUT)
        assert estimated_in > 0 and estimated_out == 40
        assert reserved == -(-(estimated_in * 125 + estimated_out * 1000) // 100)
        budget_decisions = [d for d in record["decisions"] if d["stage"] == "budget"]
        asked = {"reserve_micros": reserved}
        assert budget_decisions == [
            {"stage": "budget", "rule": "roomy", "decision": "allow", "reason": None,
             "input": asked},
            {"stage": "budget", "rule": "tiny", "decision": "deny", "reason": None,
             "input": asked},
        ]  # fmt: skip
    finally:
        audited.gateway.stop()


def test_auth_failures_outside_llm_routes(audited: Audited) -> None:
    bad = {"authorization": "Bearer cst_pat_" + "B" * 40}
    assert httpx.get(f"{audited.gateway.base_url}/models", headers=bad).status_code == 401
    assert httpx.get(f"{audited.gateway.url}/admin/v1/users", headers=bad).status_code == 401
    assert httpx.get(f"{audited.gateway.url}/admin/v1/users").status_code == 401

    def failures() -> list[dict]:
        return [
            r
            for r in stored_records(audited.store_url, "auth.failure")
            if r["http.route"] in ("/v1/models", "/admin/v1/users")
        ]

    found = eventually(failures, lambda f: len(f) >= 3)
    assert sorted((r["http.route"], r["error.type"]) for r in found) == [
        ("/admin/v1/users", "malformed_token"),
        ("/admin/v1/users", "missing_token"),
        ("/v1/models", "malformed_token"),
    ]
    assert all(r["client.address"] == "127.0.0.0/24" for r in found)
    # A good token on /v1/models is no auth failure, and no LLM call either.
    assert httpx.get(
        f"{audited.gateway.base_url}/models", headers=audited.gateway.headers
    ).is_success


def test_admin_changes_are_recorded_with_their_actor(audited: Audited) -> None:
    name = f"audit-team-{audited.dialect}-{time.monotonic_ns()}"
    created = audited.admin("POST", "/teams", json={"name": name})
    assert created.status_code == 201

    def changes() -> list[dict]:
        return [
            r
            for r in stored_records(audited.store_url, "admin.change")
            if r["target.id"] == created.json()["id"]
        ]

    found = eventually(changes, bool)
    assert len(found) == 1
    record = found[0]
    me = audited.admin("GET", "/me").json()
    assert record["actor.id"] == f"user:{me['id']}" and record["actor.role"] == "admin"
    assert record["action"] == "team.create" and record["target.type"] == "team"
    assert record["before"] is None and record["after"]["name"] == name
    # Token events never carry a secret or its hash.
    issued = audited.admin("POST", "/tokens", json={"name": "audited-token"})
    secret = issued.json()["token"]
    token_events = eventually(
        lambda: [
            r
            for r in stored_records(audited.store_url, "admin.change")
            if r["target.id"] == issued.json()["record"]["id"]
        ],
        bool,
    )
    assert token_events and secret not in json.dumps(token_events)
    assert "token_hash" not in json.dumps(token_events)


def test_config_revision_recorded_with_its_text(audited: Audited) -> None:
    revision = audited.gateway.revision()
    found = [
        r
        for r in stored_records(audited.store_url, "config.revision")
        if r["config.revision"] == revision
    ]
    assert found and found[0]["trigger"] == "start"
    text = audited.gateway.config_path.read_text()
    assert found[0]["config.text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    rows = query(
        audited.store_url, "SELECT text FROM audit_config_texts WHERE revision = $1", revision
    )
    assert rows[0]["text"] == text


def test_reload_records_a_config_revision(mock_provider: MockProvider, tmp_path: Path) -> None:
    audited, _ = start_audited(standard_config(mock_provider.url), tmp_path, "sqlite")
    try:
        first = audited.gateway.revision()
        path = audited.gateway.config_path
        path.write_text(path.read_text().replace("max_body_bytes: 65536", "max_body_bytes: 65537"))
        audited.gateway.sighup()
        second = eventually(audited.gateway.revision, lambda r: r != first)
        assert second != first

        def revisions() -> list[dict]:
            return stored_records(audited.store_url, "config.revision")

        found = eventually(revisions, lambda rs: len(rs) >= 2)
        assert [(r["trigger"], r["config.revision"]) for r in found] == [
            ("start", first),
            ("reload", second),
        ]
        assert found[1]["config.previous_revision"] == first
        rows = query(audited.store_url, "SELECT revision FROM audit_config_texts")
        assert {r["revision"] for r in rows} == {first, second}
    finally:
        audited.gateway.stop()


def test_count_tokens_is_recorded_and_charged_to_no_limit(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    config = standard_config(mock_provider.url) + (
        "rate_limits:\n  - id: one-a-minute\n    when: {}\n    limit_to: 1\n"
        "    unit: requests_per_minute\n    applies_per: [user]\n"
    )
    audited, _ = start_audited(config, tmp_path, "sqlite")
    try:
        counts = [
            httpx.post(
                f"{audited.gateway.url}/v1/messages/count_tokens",
                headers={**audited.gateway.headers, "anthropic-version": "2023-06-01"},
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                timeout=15,
            )
            for model in ("claude-main/claude-sonnet-4.5", "openai-main/gpt-5.5")
        ]
        assert [r.status_code for r in counts] == [200, 200]
        # Counting used none of the one request a minute.
        assert audited.chat("openai-main/gpt-5.5").status_code == 200
        exact, estimated = (one_call(audited.store_url, _request_id(r)) for r in counts)
        for record in (exact, estimated):
            assert record["gen_ai.operation.name"] == "count_tokens"
            assert record["outcome"] == "served"
            assert record["cost_micros"] == 0
        assert exact["provider.account"] == "claude-main"
    finally:
        audited.gateway.stop()

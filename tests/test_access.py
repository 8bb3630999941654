"""Authenticate, identify, authorize through a real gateway process with the official SDKs.

Principals and tokens are made in the store before the gateway starts; the config declares a
team (GitOps), access rules and the metadata contract.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from custos.identity.tokens import TokenService
from custos.state.backends import open_store
from custos.state.models import Actor
from tests.conftest import (
    TOKEN_KEY,
    GatewayProcess,
    MockProvider,
    standard_config,
    without_open_access,
)

ACCESS_CONFIG = """
teams:
  support-ai:
    members: [Alice@Northwind.example]
    managers: [lead@northwind.example]
access:
  - id: support-azure
    subjects: [team:support-ai]
    models: ["azure-eu/*", chat-default]
  - id: ticket-bot-openai
    subjects: [virtualaccount:ticket-bot]
    models: [openai-main/gpt-5.5, openai-main/text-embedding-3-small]
metadata:
  required: [project]
  allowed: {environment: [production, staging]}
"""


def governed_config(mock_url: str) -> str:
    base = _standard_without_access(mock_url)
    return base + textwrap.dedent(ACCESS_CONFIG)


def _standard_without_access(mock_url: str) -> str:
    return without_open_access(standard_config(mock_url))


async def _principals(store_url: str) -> dict[str, str]:
    """alice (team member via config), bob (no team), ticket-bot (VAT), narrowed and dead tokens."""
    store = await open_store(store_url)
    tokens = TokenService(store, TOKEN_KEY)
    actor = Actor.system("tests")
    try:
        alice = await store.create_user(actor, email="alice@northwind.example")
        bob = await store.create_user(actor, email="bob@northwind.example")
        bots = await store.create_team(actor, name="bots")
        bot = await store.create_account(
            actor, name="ticket-bot", team_id=bots.id, allowed_models=("openai-main/*",)
        )

        async def pat(user_id: str, name: str, **kw: object) -> str:
            issued = await tokens.issue_token(
                actor, kind="pat", principal_id=user_id, name=name, **kw
            )
            return issued.secret

        secrets = {
            "alice": await pat(alice.id, "alice"),
            "bob": await pat(bob.id, "bob"),
            "alice_narrow": await pat(
                alice.id, "narrow", allowed_models=("azure-eu/text-embedding-3-small",)
            ),
            "expired": await pat(
                alice.id, "old", expires_at=datetime.now(UTC) + timedelta(seconds=1)
            ),
        }
        revoked = await tokens.issue_token(actor, kind="pat", principal_id=bob.id, name="gone")
        await tokens.revoke(revoked.record.id, actor)
        secrets["revoked"] = revoked.secret
        vat = await tokens.issue_token(actor, kind="vat", principal_id=bot.id, name="bot")
        secrets["bot"] = vat.secret
        return secrets
    finally:
        await store.close()


@pytest.fixture(scope="module")
def governed(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("governed")
    secrets = asyncio.run(_principals(f"sqlite:///{tmp / 'custos.db'}"))
    process = GatewayProcess(governed_config(mock_provider.url), tmp)
    yield process, secrets
    process.stop()


def _client(gw: GatewayProcess, token: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, **kw)


META = {"X-Custos-Metadata": json.dumps({"project": "helpdesk", "environment": "production"})}


def test_pat_of_a_config_team_member_calls_an_allowed_model(governed) -> None:
    gw, secrets = governed
    with _client(gw, secrets["alice"]) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="azure-eu/gpt-5.5",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=META,
        )
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content


def test_vat_calls_its_allowed_models_with_metadata_by_alias(governed) -> None:
    gw, secrets = governed
    alias = {"X-TFY-METADATA": json.dumps({"project": "tickets"})}
    with _client(gw, secrets["bot"]) as client:
        reply = client.chat.completions.create(
            model="openai-main/gpt-5.5",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=alias,
        )
        assert reply.usage is not None
        embedded = client.embeddings.create(
            model="openai-main/text-embedding-3-small", input="x", extra_headers=alias
        )
        assert embedded.data


def test_model_outside_every_grant_is_403_naming_model_and_rule_state(governed) -> None:
    gw, secrets = governed
    with (
        _client(gw, secrets["alice"]) as client,
        pytest.raises(openai.PermissionDeniedError) as err,
    ):
        client.chat.completions.create(
            model="openai-main/gpt-5.5",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=META,
        )
    body = err.value.body
    assert err.value.status_code == 403
    assert body["code"] == "model_not_allowed"
    assert "openai-main/gpt-5.5" in body["message"] and "no access rule" in body["message"]


def test_user_in_no_team_is_denied_everything(governed) -> None:
    gw, secrets = governed
    with _client(gw, secrets["bob"]) as client:
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(
                model="azure-eu/gpt-5.5",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=META,
            )
        assert [m.id for m in client.models.list()] == []


def test_virtual_account_narrowing_and_token_narrowing(governed) -> None:
    gw, secrets = governed
    # The access rule would not allow it anyway; the VA's own list says openai-main/* only.
    with _client(gw, secrets["bot"]) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="azure-eu/gpt-5.5",
            messages=[{"role": "user", "content": "x"}],
            extra_headers=META,
        )
    with _client(gw, secrets["alice_narrow"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(
                model="azure-eu/gpt-5.5",
                messages=[{"role": "user", "content": "x"}],
                extra_headers=META,
            )
        assert "token" in err.value.body["message"]
        assert [m.id for m in client.models.list()] == ["azure-eu/text-embedding-3-small"]


def test_models_lists_exactly_what_the_caller_may_call(governed) -> None:
    gw, secrets = governed
    with _client(gw, secrets["alice"]) as client:
        assert sorted(m.id for m in client.models.list()) == [
            "azure-eu/gpt-5.5",
            "azure-eu/text-embedding-3-small",
            "chat-default",
        ]
    with _client(gw, secrets["bot"]) as client:
        assert sorted(m.id for m in client.models.list()) == [
            "openai-main/gpt-5.5",
            "openai-main/text-embedding-3-small",
        ]


@pytest.mark.parametrize(
    ("token_name", "code"),
    [
        ("missing", "missing_api_key"),
        ("malformed", "malformed_token"),
        ("unknown", "unknown_token"),
        ("revoked", "revoked_token"),
        ("expired", "expired_token"),
    ],
)
def test_refused_tokens_get_401_with_distinct_codes(governed, token_name: str, code: str) -> None:
    gw, secrets = governed
    good = secrets["alice"]
    tokens = {
        "missing": None,
        "malformed": good[:-1] + ("a" if good[-1] != "a" else "b"),
        "unknown": _well_formed_unknown(),
        "revoked": secrets["revoked"],
        "expired": secrets["expired"],
    }
    if token_name == "expired":
        asyncio.run(asyncio.sleep(1.1))
    token = tokens[token_name]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for path, body in (
        ("/v1/chat/completions", {"model": "azure-eu/gpt-5.5", "messages": []}),
        ("/v1/messages", {"model": "azure-eu/gpt-5.5", "messages": [], "max_tokens": 5}),
    ):
        response = httpx.post(f"{gw.url}{path}", json=body, headers=headers)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        if path == "/v1/messages":
            assert error["type"] == "authentication_error"
        else:
            assert error["code"] == code
        assert token is None or token not in response.text
    assert httpx.get(f"{gw.base_url}/models", headers=headers).status_code == 401


def _well_formed_unknown() -> str:
    from custos.identity.tokens import generate

    return generate("pat")


def test_anthropic_clients_authenticate_with_x_api_key(governed) -> None:
    gw, secrets = governed
    response = httpx.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": secrets["alice"], **META},
        json={
            "model": "azure-eu/gpt-5.5",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"


@pytest.mark.parametrize(
    ("header", "param"),
    [
        (None, "metadata.project"),
        ("not json", "metadata"),
        ('["a"]', "metadata"),
        ('{"project": 5}', "metadata.project"),
        ('{"project": "p", "environment": "dev"}', "metadata.environment"),
        ('{"project": "' + "x" * 129 + '"}', "metadata.project"),
    ],
)
def test_bad_metadata_is_400_naming_the_key(governed, header: str | None, param: str) -> None:
    gw, secrets = governed
    headers = {"authorization": f"Bearer {secrets['alice']}"}
    if header is not None:
        headers["x-custos-metadata"] = header
    response = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers=headers,
        json={"model": "azure-eu/gpt-5.5", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_metadata"
    assert error["param"] == param


def _chat_with_headers(gw: GatewayProcess, token: str, *headers: tuple[str, str]) -> httpx.Response:
    """A chat request with these header pairs, repeated names kept (httpx sends each pair)."""
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers=[("authorization", f"Bearer {token}"), *headers],
        json={"model": "azure-eu/gpt-5.5", "messages": [{"role": "user", "content": "x"}]},
    )


@pytest.mark.parametrize("name", ["X-Custos-Metadata", "X-TFY-METADATA"])
@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({"project": "a\u0000b"}, "metadata.project"),
        ({"project": "a\u001b[31mred"}, "metadata.project"),
        ({"project": "a\r\nx-injected: 1"}, "metadata.project"),
        ({"project": "ok", "env\u0007": "x"}, "metadata"),
        ({"project": "a\u202etxt.exe"}, "metadata.project"),
        ({"project": "a\u2028b"}, "metadata.project"),
        ({"project": "a\x85b"}, "metadata.project"),
    ],
)
def test_metadata_with_control_characters_is_400_naming_the_header_sent(
    governed, name: str, metadata: dict[str, str], param: str
) -> None:
    gw, secrets = governed
    # json.dumps writes each of these characters as a \\u escape, as a client's JSON would.
    response = _chat_with_headers(gw, secrets["alice"], (name, json.dumps(metadata)))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_metadata", param)
    assert name in error["message"], error
    other = "X-TFY-METADATA" if name == "X-Custos-Metadata" else "X-Custos-Metadata"
    assert other not in error["message"], error


def test_bad_alias_header_is_reported_by_its_own_name(governed) -> None:
    gw, secrets = governed
    response = _chat_with_headers(gw, secrets["alice"], ("X-TFY-METADATA", "not json"))
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "X-TFY-METADATA" in message and "X-Custos-Metadata" not in message


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Custos-Metadata", '{"project": "a"}'), ("X-TFY-METADATA", '{"project": "b"}')],
        [("X-TFY-METADATA", '{"project": "a"}'), ("X-Custos-Metadata", '{"project": "b"}')],
        [("X-Custos-Metadata", '{"project": "a"}'), ("X-Custos-Metadata", '{"project": "b"}')],
        [("X-TFY-METADATA", '{"project": "a"}'), ("X-TFY-METADATA", '{"project": "b"}')],
    ],
)
def test_metadata_headers_that_disagree_are_400(governed, headers) -> None:
    gw, secrets = governed
    response = _chat_with_headers(gw, secrets["alice"], *headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_metadata", "metadata")
    for name, _ in headers:
        assert name in error["message"], error


@pytest.mark.parametrize(
    ("path", "second"),
    [
        ("/v1/chat/completions", "authorization"),
        ("/v1/messages", "x-api-key"),
        ("/v1/messages", "authorization"),
        ("/admin/v1/users", "authorization"),
    ],
)
def test_two_different_credentials_are_401_not_the_first_or_last(governed, path, second) -> None:
    """Which of two keys a proxy or library kept must not decide who the caller is."""
    gw, secrets = governed
    bob = f"Bearer {secrets['bob']}" if second == "authorization" else secrets["bob"]
    body = {
        "model": "azure-eu/gpt-5.5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}],
    }
    for pair in ([("authorization", f"Bearer {secrets['alice']}"), (second, bob)],
                 [(second, bob), ("authorization", f"Bearer {secrets['alice']}")]):  # fmt: skip
        response = httpx.request(
            "GET" if path.startswith("/admin") else "POST",
            f"{gw.url}{path}",
            headers=[*pair, ("anthropic-version", "2023-06-01"), *META.items()],
            json=None if path.startswith("/admin") else body,
        )
        assert response.status_code == 401, response.text
        assert "two different API keys" in response.text
        if path != "/v1/messages":  # Anthropic's error shape has no code
            assert response.json()["error"]["code"] == "ambiguous_credentials"


def test_the_same_credential_twice_is_one(governed) -> None:
    gw, secrets = governed
    response = httpx.post(
        f"{gw.url}/v1/messages",
        headers=[
            ("authorization", f"Bearer {secrets['alice']}"),
            ("x-api-key", secrets["alice"]),
            *META.items(),
        ],
        json={
            "model": "azure-eu/gpt-5.5",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert response.status_code == 200, response.text


def test_metadata_headers_that_agree_are_one(governed) -> None:
    gw, secrets = governed
    response = _chat_with_headers(
        gw,
        secrets["alice"],
        ("X-Custos-Metadata", '{"project": "same", "environment": "staging"}'),
        ("X-TFY-METADATA", '{"environment":"staging","project":"same"}'),
        ("x-custos-metadata", '{"project": "same", "environment": "staging"}'),
    )
    assert response.status_code == 200, response.text


def test_models_retrieve_and_count_tokens_see_only_what_the_caller_may_call(governed) -> None:
    gw, secrets = governed
    with _client(gw, secrets["alice"]) as client:
        assert client.models.retrieve("azure-eu/gpt-5.5").id == "azure-eu/gpt-5.5"
        # A model outside the caller's grants does not exist for it, as the list leaves it out.
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("openai-main/gpt-5.5")
        assert caught.value.body["code"] == "model_not_found"
    with anthropic.Anthropic(
        base_url=gw.url, api_key=secrets["alice"], max_retries=0, default_headers=META
    ) as claude:
        with pytest.raises(anthropic.NotFoundError):
            claude.models.retrieve("openai-main/gpt-5.5")
        assert [m.id for m in claude.models.list()] == [
            "azure-eu/gpt-5.5",
            "azure-eu/text-embedding-3-small",
            "chat-default",
        ]
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            claude.messages.count_tokens(
                model="openai-main/gpt-5.5", messages=[{"role": "user", "content": "hi"}]
            )
        assert denied.value.body["error"]["type"] == "permission_error"
        counted = claude.messages.count_tokens(
            model="azure-eu/gpt-5.5", messages=[{"role": "user", "content": "hi"}]
        )
        assert counted.input_tokens > 0
    # Metadata is checked as on the other routes.
    with anthropic.Anthropic(base_url=gw.url, api_key=secrets["alice"], max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError) as bad:
            claude.messages.count_tokens(
                model="azure-eu/gpt-5.5", messages=[{"role": "user", "content": "hi"}]
            )
        assert "project" in bad.value.body["error"]["message"]

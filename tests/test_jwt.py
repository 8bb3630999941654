"""IdP JWTs through a real gateway: a local JWKS server with keys generated here."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.audit_helpers import eventually
from tests.conftest import (
    GatewayProcess,
    MockProvider,
    free_port,
    standard_config,
    without_open_access,
)

ISSUER = "https://idp.northwind.example"
AUDIENCE = "custos-gateway"


class JWKSServer:
    """Serves whatever ``keys`` holds at /jwks.json and counts the fetches.

    ``delay_s`` makes every answer that slow; ``down`` makes the server take requests and never
    answer them (an IdP that hangs).
    """

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay_s = 0.0
        self.down = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.down.is_set():
                    time.sleep(30)
                    return
                time.sleep(server.delay_s)
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, kid: str, private_key: Any) -> None:
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[_alg(private_key)].to_jwk(
                private_key.public_key()
            )
        )
        self.keys.append({**jwk, "kid": kid, "use": "sig"})


def _alg(key: Any) -> str:
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


def sign(key: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-123",
        "email": "Carol@Northwind.example",
        "groups": ["research"],
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(payload, key, algorithm=_alg(key), headers={"kid": kid})


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[JWKSServer, Any]]:
    server = JWKSServer()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.publish("rsa-1", key)
    yield server, key
    server.httpd.shutdown()


def _with_idps(config: str, *entries: str) -> str:
    """``config`` with ``entries`` (each an IdP's YAML mapping lines, indented by 6) as its
    ``identity.idp`` list."""
    key_line = "  token_hash_key: ${env:CUSTOS_TEST_TOKEN_KEY}\n"
    assert key_line in config
    listed = "".join("    - " + entry.strip() + "\n" for entry in entries)
    return config.replace(key_line, key_line + "  idp:\n" + listed)


def _idp_entry(url: str, *extra: str, name: str = "northwind", issuer: str = ISSUER) -> str:
    lines = [f"name: {name}", f"issuer: {issuer}", f"audience: {AUDIENCE}", f"jwks_url: {url}",
             "leeway_s: 0", *extra]  # fmt: skip
    return "\n      ".join(lines)


NORTHWIND_ACCESS = """
teams:
  finance: {members: [carol@northwind.example]}
access:
  - id: research-openai
    subjects: [team:research]
    models: [openai-main/gpt-5.5]
  - id: finance-azure
    subjects: [team:finance]
    models: [azure-eu/gpt-5.5]
"""


@pytest.fixture(scope="module")
def jwt_gateway(
    mock_provider: MockProvider, idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    server, _ = idp
    config = without_open_access(standard_config(mock_provider.url)) + NORTHWIND_ACCESS
    config = _with_idps(config, _idp_entry(server.url, "jwks_min_refresh_s: 0"))
    process = GatewayProcess(config, tmp_path_factory.mktemp("jwt"))
    yield process
    process.stop()


HELLO = [{"role": "user", "content": "hi"}]


def _chat(gw: GatewayProcess, token: str, model: str = "openai-main/gpt-5.5") -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def test_valid_jwt_calls_with_teams_from_claims_and_config(jwt_gateway, idp) -> None:
    _, key = idp
    token = sign(key, "rsa-1")
    with openai.OpenAI(base_url=jwt_gateway.base_url, api_key=token, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="openai-main/gpt-5.5", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        # finance comes from the config file's team, research from the groups claim.
        assert sorted(m.id for m in client.models.list()) == [
            "azure-eu/gpt-5.5",
            "openai-main/gpt-5.5",
        ]
    assert _chat(jwt_gateway, token, "claude-main/claude-sonnet-4.5").status_code == 403


@pytest.mark.parametrize(
    ("claims", "code", "reason"),
    [
        ({"exp": int(time.time()) - 60}, "expired_token", "expired"),
        ({"aud": "someone-else"}, "invalid_jwt", "wrong audience"),
        ({"iss": "https://other.example"}, "invalid_jwt", "issuer is not configured"),
    ],
)
def test_refused_jwts(jwt_gateway, idp, claims, code: str, reason: str) -> None:
    _, key = idp
    response = _chat(jwt_gateway, sign(key, "rsa-1", **claims))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == code and reason in error["message"]


def test_tampered_signature_and_wrong_key_are_refused(jwt_gateway, idp) -> None:
    _, key = idp
    token = sign(key, "rsa-1")
    header, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    response = _chat(jwt_gateway, f"{header}.{payload}.{flipped}")
    assert response.status_code == 401 and "bad signature" in response.json()["error"]["message"]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = _chat(jwt_gateway, sign(other, "rsa-1"))
    assert response.status_code == 401 and "bad signature" in response.json()["error"]["message"]
    # A payload edited to add a team the caller is not in fails the signature too.
    forged = jwt.encode({"groups": ["finance"]}, "k" * 32, algorithm="HS256").split(".")[1]
    response = _chat(jwt_gateway, f"{header}.{forged}.{signature}")
    assert response.status_code == 401


def test_unknown_kid_refreshes_the_key_set(jwt_gateway, idp) -> None:
    server, _ = idp
    new_key = ec.generate_private_key(ec.SECP256R1())
    token = sign(new_key, "ec-2")
    assert _chat(jwt_gateway, token).status_code == 401  # not published yet
    before = server.fetches
    server.publish("ec-2", new_key)
    assert _chat(jwt_gateway, token).status_code == 200
    assert server.fetches == before + 1


# -- refreshing the key set: one fetch at a time ---------------------------------------------------


@pytest.fixture
def slow_idp(
    mock_provider: MockProvider, tmp_path: Any
) -> Iterator[tuple[JWKSServer, Any, GatewayProcess]]:
    """A JWKS server that takes 0.5 s per answer, behind a gateway that thinks its keys stale
    after 2 s and refetches on an unknown kid at any time (``jwks_min_refresh_s: 0``)."""
    server = JWKSServer()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.publish("rsa-1", key)
    server.delay_s = 0.5
    config = _with_idps(
        standard_config(mock_provider.url),
        _idp_entry(server.url, "jwks_min_refresh_s: 0", "jwks_max_age_s: 2", "jwks_timeout_s: 1"),
    )
    gateway = GatewayProcess(config, tmp_path)
    try:
        yield server, key, gateway
    finally:
        gateway.stop()
        server.down.clear()
        server.httpd.shutdown()


def _concurrently(gw: GatewayProcess, tokens: list[str]) -> list[int]:
    """Send one chat request per token, all at once; their statuses."""

    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as client:
            replies = await asyncio.gather(
                *(
                    client.post(
                        "/chat/completions",
                        headers={"authorization": f"Bearer {token}"},
                        json={"model": "openai-main/gpt-5.5", "messages": HELLO},
                    )
                    for token in tokens
                )
            )
        return [r.status_code for r in replies]

    return asyncio.run(send())


def test_stale_keys_are_fetched_once_for_all_waiting_requests(slow_idp) -> None:
    server, key, gateway = slow_idp
    assert _chat(gateway, sign(key, "rsa-1")).status_code == 200
    assert server.fetches == 1
    time.sleep(2.2)  # past jwks_max_age_s
    assert _concurrently(gateway, [sign(key, "rsa-1", jti=str(i)) for i in range(8)]) == [200] * 8
    assert server.fetches == 2


def test_an_unknown_kid_is_fetched_once_for_all_waiting_requests(slow_idp) -> None:
    server, key, gateway = slow_idp
    assert _chat(gateway, sign(key, "rsa-1")).status_code == 200
    new_key = ec.generate_private_key(ec.SECP256R1())
    server.publish("ec-2", new_key)
    tokens = [sign(new_key, "ec-2", jti=str(i)) for i in range(8)]
    assert _concurrently(gateway, tokens) == [200] * 8
    assert server.fetches == 2


def test_a_hanging_jwks_neither_holds_requests_nor_is_asked_again_at_once(slow_idp) -> None:
    server, key, gateway = slow_idp
    assert _chat(gateway, sign(key, "rsa-1")).status_code == 200
    server.down.set()
    time.sleep(2.2)  # stale: the next requests want a refresh, which never answers
    tokens = [sign(key, "rsa-1", jti=str(i)) for i in range(8)]
    # Each waits for the one fetch at most jwks_timeout_s, then goes on with the keys it has.
    assert _concurrently(gateway, tokens) == [200] * 8
    assert server.fetches == 2
    # Right after a failure nobody asks again: not the next requests, not an unknown kid.
    unknown = sign(ec.generate_private_key(ec.SECP256R1()), "ec-9")
    assert _concurrently(gateway, [*tokens, unknown]) == [200] * 8 + [401]
    assert server.fetches == 2


# -- several IdPs: each vouches only for its own --------------------------------------------------

PARTNER = "https://idp.partner.example"
ROBOTS = "https://machines.partner.example"


@pytest.fixture(scope="module")
def two_idps(
    mock_provider: MockProvider, idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Any]]:
    """northwind (users of northwind.example, group research), a partner IdP (users of
    partner.example, group partners) and the partner's machine IdP (virtual accounts ci-*)."""
    northwind, _ = idp
    partner = JWKSServer()
    partner_key = ec.generate_private_key(ec.SECP256R1())
    partner.publish("p-1", partner_key)
    config = without_open_access(standard_config(mock_provider.url)) + NORTHWIND_ACCESS
    config += """\
  - id: partners-claude
    subjects: [team:partners]
    models: [claude-main/claude-sonnet-4.5]
  - id: robots
    subjects: [virtualaccount:ci-runner, virtualaccount:prod-billing]
    models: [openai-main/gpt-5.5]
"""
    config = _with_idps(
        config,
        _idp_entry(northwind.url, "email_domains: [northwind.example]", "teams: [research]"),
        _idp_entry(partner.url, "email_domains: [partner.example]", "teams: [partners]",
                   name="partner", issuer=PARTNER),
        _idp_entry(partner.url, "principal: virtualaccount", "accounts: [ci-*]",
                   "claims: {subject: sub, teams: null}", name="robots", issuer=ROBOTS),
    )  # fmt: skip
    process = GatewayProcess(config, tmp_path_factory.mktemp("idps"))
    yield process, partner_key
    process.stop()
    partner.httpd.shutdown()


def test_an_idp_cannot_assert_another_idps_users_or_their_config_teams(two_idps, idp) -> None:
    gateway, partner_key = two_idps
    _, northwind_key = idp
    carol = sign(northwind_key, "rsa-1")  # Carol@Northwind.example, research, config finance
    assert _chat(gateway, carol, "azure-eu/gpt-5.5").status_code == 200
    # The partner's IdP says it is carol: refused, and none of her config teams come with it.
    forged = sign(partner_key, "p-1", iss=PARTNER)
    response = _chat(gateway, forged, "azure-eu/gpt-5.5")
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_jwt"
    assert "'partner' may not assert users of northwind.example" in error["message"]


def test_an_idps_teams_claim_names_only_the_teams_it_may_assert(two_idps) -> None:
    gateway, partner_key = two_idps
    dan = sign(partner_key, "p-1", iss=PARTNER, email="dan@partner.example",
               groups=["research", "partners"])  # fmt: skip
    assert _chat(gateway, dan, "claude-main/claude-sonnet-4.5").status_code == 200
    # research is northwind's group: from the partner's IdP it is dropped.
    assert _chat(gateway, dan, "openai-main/gpt-5.5").status_code == 403


def test_a_machine_idp_asserts_only_its_own_accounts(two_idps) -> None:
    gateway, partner_key = two_idps
    ci = sign(partner_key, "p-1", iss=ROBOTS, sub="ci-runner")
    assert _chat(gateway, ci).status_code == 200
    response = _chat(gateway, sign(partner_key, "p-1", iss=ROBOTS, sub="prod-billing"))
    assert response.status_code == 401, response.text
    assert "'robots' may not assert virtual account 'prod-billing'" in response.text


def test_the_audit_record_names_the_idp_that_vouched(two_idps) -> None:
    gateway, partner_key = two_idps
    dan = sign(partner_key, "p-1", iss=PARTNER, email="Dan@partner.example",
               groups=["partners"])  # fmt: skip
    reply = _chat(gateway, dan, "claude-main/claude-sonnet-4.5")
    assert reply.status_code == 200, reply.text
    url = f"{gateway.url}/admin/v1/audit/requests/{reply.headers['x-custos-request-id']}"

    def records() -> list[dict[str, Any]]:
        found = httpx.get(url, headers=gateway.headers, timeout=10)
        return found.json()["data"] if found.status_code == 200 else []

    found = eventually(records, bool)
    (record,) = [json.loads(r["record"]) for r in found if r["event_type"] == "llm.call"]
    assert record["principal.id"] == "jwt:partner:dan@partner.example"
    assert record["auth.token_id"].startswith("jwt:partner:")


def test_a_reload_that_keeps_the_idp_keeps_its_keys(slow_idp) -> None:
    server, key, gateway = slow_idp
    assert _chat(gateway, sign(key, "rsa-1")).status_code == 200
    before = gateway.revision()
    text = gateway.config_path.read_text()
    gateway.config_path.write_text(text.replace("max_body_bytes: 65536", "max_body_bytes: 65537"))
    gateway.sighup()
    assert eventually(gateway.revision, lambda revision: revision != before) != before
    # A new revision, the same IdP: its keys (and any fetch under way) carry over.
    assert _chat(gateway, sign(key, "rsa-1")).status_code == 200
    assert server.fetches == 1

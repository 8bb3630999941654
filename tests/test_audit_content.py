"""Content capture (``audit.content``) through a running gateway, with the official SDK, and
crypto-shredding erasure: what each mode stores, reading content back, erasure by team and by
principal (the content unreadable, its key's bytes gone from the SQLite files, ``verify``
passing), tampering caught on read."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from custos.audit.records.transcript import request_content, response_content
from custos.guardrails import pii
from tests.audit_helpers import eventually, one_call, query, stored_records
from tests.conftest import CUSTOS, ROOT, GatewayProcess, MockProvider, standard_config

PROMPT = "CONTENT-CANARY-7d41: summarise the refund policy for order 5521"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def start(mock: MockProvider, tmp_path: Path, mode: str, extra: str = "") -> GatewayProcess:
    audit = f"audit: {{content: {mode}{extra}}}\n"
    return GatewayProcess(standard_config(mock.url) + audit, tmp_path)


def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'custos.db'}"


def client(gateway: GatewayProcess, token: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=token or gateway.token, max_retries=0)


def chat(c: openai.OpenAI, text: str, **kw: Any) -> tuple[str, Any]:
    raw = c.chat.completions.with_raw_response.create(
        model="openai-main/gpt-5.5", messages=[{"role": "user", "content": text}], **kw
    )
    return raw.headers["x-custos-request-id"], raw


def read_content(gateway: GatewayProcess, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/admin/v1/audit/requests/{request_id}/content",
        headers=gateway.headers,
        timeout=10,
    )


def content_of(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        reply = read_content(gateway, request_id)
        return reply.json() if reply.status_code == 200 else {}

    reply = eventually(fetch, lambda r: bool(r.get("data")))
    assert len(reply["data"]) == 1, reply
    return reply["data"][0]


def cli(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTOS, "audit", *args, "--url", gateway.url, "--token", gateway.token],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def database_bytes(tmp_path: Path) -> list[tuple[str, bytes]]:
    """Every file the gateway's store and spool consist of, as bytes."""
    found = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("custos.db")]
    found += [p for p in (tmp_path / "custos-audit-spool").glob("*") if p.is_file()]
    assert any(p.name == "custos.db" for p in found)
    return [(p.name, p.read_bytes()) for p in found]


def contents_rows(tmp_path: Path) -> list[dict[str, Any]]:
    return query(store_url(tmp_path), "SELECT * FROM audit_content")


# -- hash ----------------------------------------------------------------------------------------


def test_hash_mode_records_salted_digests_and_stores_nothing(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    gateway = start(mock_provider, tmp_path, "hash")
    try:
        request_id, raw = chat(client(gateway), PROMPT)
        record = one_call(store_url(tmp_path), request_id)
        shown = content_of(gateway, request_id)
    finally:
        gateway.stop()
    assert record["content.mode"] == "hash"
    key = bytes.fromhex(record["salt"])
    body = {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": PROMPT}]}
    for part, value in [
        ("request", request_content(body)),
        ("response", response_content("openai", "chat", raw.http_response.content)),
    ]:
        message = f"custos.audit.content.{part}\x00".encode() + orjson.dumps(
            value, option=orjson.OPT_SORT_KEYS
        )
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        assert record[f"content.{part}.hmac_sha256"] == expected
        # Salted: the plain SHA-256 of the same bytes is not what the record holds.
        assert hashlib.sha256(message).hexdigest() != expected
    assert shown["state"] == "hashed"
    assert shown["digests"]["request"] == record["content.request.hmac_sha256"]
    assert contents_rows(tmp_path) == []
    assert query(store_url(tmp_path), "SELECT * FROM audit_content_keys") == []
    assert not (tmp_path / "custos.db.content-key").exists()
    for name, blob in database_bytes(tmp_path):
        assert PROMPT.split(":")[0].encode() not in blob, name


# -- full ----------------------------------------------------------------------------------------


def test_full_mode_round_trip_plain_stream_and_tool_call(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    gateway = start(mock_provider, tmp_path, "full")
    try:
        c = client(gateway)
        plain_id, raw = chat(c, PROMPT)
        answer = raw.parse().choices[0].message.content

        stream_id, stream_raw = chat(c, PROMPT + " (streamed)", stream=True)
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream_raw.parse() if chunk.choices
        )

        tool_id, tool_raw = chat(c, "What is the weather in Lyon?", tools=[WEATHER_TOOL])
        tool_call = tool_raw.parse().choices[0].message.tool_calls[0]

        stream_tool_id, stream_tool_raw = chat(
            c, "Weather in Oslo, streamed?", tools=[WEATHER_TOOL], stream=True
        )
        arguments, names = "", []
        for chunk in stream_tool_raw.parse():
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                arguments += call.function.arguments or ""
                if call.function.name:
                    names.append(call.function.name)

        plain = content_of(gateway, plain_id)
        stream = content_of(gateway, stream_id)
        tool = content_of(gateway, tool_id)
        stream_tool = content_of(gateway, stream_tool_id)
        shown = cli(gateway, "content", plain_id)
        record = one_call(store_url(tmp_path), plain_id)
    finally:
        gateway.stop()

    assert plain["state"] == "available" and plain["mode"] == "full"
    assert plain["request"] == {"messages": [{"role": "user", "content": PROMPT}]}
    assert plain["response"]["choices"][0]["content"] == answer
    assert stream["request"]["messages"][0]["content"] == PROMPT + " (streamed)"
    assert stream["response"]["choices"][0]["content"] == streamed and streamed
    assert tool["request"]["tools"] == [WEATHER_TOOL]
    captured_call = tool["response"]["choices"][0]["tool_calls"][0]
    assert captured_call["function"] == {
        "name": tool_call.function.name,
        "arguments": tool_call.function.arguments,
    }
    assert captured_call["id"] == tool_call.id
    streamed_call = stream_tool["response"]["choices"][0]["tool_calls"][0]
    assert streamed_call["function"] == {"name": names[0], "arguments": arguments}
    assert shown.returncode == 0, shown.stderr
    assert PROMPT in shown.stdout and "## response" in shown.stdout

    # The record: the ciphertext's hash, the key id and the size; never the plaintext.
    assert record["content.mode"] == "full"
    assert record["content.dek_id"].startswith("dek_")
    rows = {r["part"]: r for r in contents_rows(tmp_path) if r["event_id"] == record["event_id"]}
    assert record["content.request.sha256"] == hashlib.sha256(rows["request"]["blob"]).hexdigest()
    assert record["content.request.bytes"] == len(
        orjson.dumps({"messages": [{"role": "user", "content": PROMPT}]})
    )
    for records in stored_records(store_url(tmp_path)):
        assert "CONTENT-CANARY" not in json.dumps(records)
    for name, blob in database_bytes(tmp_path):
        assert b"CONTENT-CANARY" not in blob, name
        assert b"refund policy" not in blob, name
    key_file = tmp_path / "custos.db.content-key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_tampered_ciphertext_is_caught_on_read(mock_provider: MockProvider, tmp_path: Path):
    gateway = start(mock_provider, tmp_path, "full")
    try:
        request_id, _ = chat(client(gateway), PROMPT)
        assert content_of(gateway, request_id)["state"] == "available"
        record = one_call(store_url(tmp_path), request_id)
        import sqlite3

        with sqlite3.connect(tmp_path / "custos.db") as db:
            blob = db.execute(
                "SELECT blob FROM audit_content WHERE event_id = ? AND part = 'response'",
                (record["event_id"],),
            ).fetchone()[0]
            flipped = bytes([blob[0]]) + bytes([blob[1] ^ 1]) + blob[2:]
            db.execute(
                "UPDATE audit_content SET blob = ? WHERE event_id = ? AND part = 'response'",
                (flipped, record["event_id"]),
            )
        reply = read_content(gateway, request_id)
        shown = cli(gateway, "content", request_id)
    finally:
        gateway.stop()
    assert reply.status_code == 409
    assert "does not match the SHA-256 in its record" in reply.json()["error"]["message"]
    assert shown.returncode == 1 and "altered" in shown.stderr


# -- redacted ------------------------------------------------------------------------------------


def test_redacted_mode_stores_no_pii(mock_provider: MockProvider, tmp_path: Path) -> None:
    planted = (
        "Refund jane.doe@example.com on card 4111 1111 1111 1111 to IBAN "
        "DE89 3704 0044 0532 0130 00, ticket about the broken kettle."
    )
    gateway = start(mock_provider, tmp_path, "redacted")
    try:
        request_id, _ = chat(client(gateway), planted)
        shown = content_of(gateway, request_id)
        record = one_call(store_url(tmp_path), request_id)
    finally:
        gateway.stop()
    assert shown["mode"] == "redacted" and shown["state"] == "available"
    text = shown["request"]["messages"][0]["content"]
    assert text == "Refund [EMAIL] on card [CARD] to IBAN [IBAN], ticket about the broken kettle."
    everything = json.dumps(shown)
    for value in ("jane.doe@example.com", "4111 1111 1111 1111", "DE89 3704", "0532 0130"):
        assert value not in everything
    classes = {(d["class"], d["source"]): d["count"] for d in record["data_classes"]}
    assert classes[("pii.email", pii.DETECTOR_VERSION)] >= 1
    assert classes[("fin.pan", pii.DETECTOR_VERSION)] >= 1
    assert classes[("fin.iban", pii.DETECTOR_VERSION)] >= 1
    for name, blob in database_bytes(tmp_path):
        assert b"jane.doe@example.com" not in blob, name


# -- erasure -------------------------------------------------------------------------------------


def _account_token(gateway: GatewayProcess, team: str, account: str) -> str:
    """A virtual account of a new team, allowed every model, and a token for it."""
    admin = f"{gateway.url}/admin/v1"
    for route, body in [
        ("teams", {"name": team}),
        ("accounts", {"name": account, "team": team, "allowed_models": ["*"]}),
        ("tokens", {"name": account, "account": account}),
    ]:
        made = httpx.post(f"{admin}/{route}", headers=gateway.headers, json=body)
        assert made.status_code == 201, made.text
    return str(made.json()["token"])


def _wrapped_key(tmp_path: Path, dek_id: str) -> bytes:
    sql = "SELECT wrapped_key FROM audit_content_keys WHERE dek_id = $1"
    rows = query(store_url(tmp_path), sql, dek_id)
    assert len(rows) == 1
    return bytes(rows[0]["wrapped_key"])


def test_erase_by_team_and_by_principal(mock_provider: MockProvider, tmp_path: Path) -> None:
    gateway = start(mock_provider, tmp_path, "full")
    try:
        red = _account_token(gateway, "red", "red-bot")
        blue = _account_token(gateway, "blue", "blue-bot")
        red_id, _ = chat(client(gateway, red), "RED-SECRET-1 please help")
        blue_id, _ = chat(client(gateway, blue), "BLUE-SECRET-2 please help")
        admin_id, _ = chat(client(gateway), "ADMIN-SECRET-3 please help")
        red_record = one_call(store_url(tmp_path), red_id)
        admin_record = one_call(store_url(tmp_path), admin_id)
        for request_id in (red_id, blue_id, admin_id):
            assert content_of(gateway, request_id)["state"] == "available"
        red_wrapped = _wrapped_key(tmp_path, red_record["content.dek_id"])
        admin_wrapped = _wrapped_key(tmp_path, admin_record["content.dek_id"])
        # The search below can find key bytes: before the erasure they are in the files.
        assert any(red_wrapped in blob for _name, blob in database_bytes(tmp_path))

        erased = cli(gateway, "erase", "--team", "red")
        assert erased.returncode == 0, erased.stderr
        assert "1 key(s) destroyed, 2 encrypted content part(s) deleted" in erased.stdout
        red_after = content_of(gateway, red_id)
        shown = cli(gateway, "content", red_id)

        by_principal = httpx.post(
            f"{gateway.url}/admin/v1/audit/erase",
            headers=gateway.headers,
            json={"principal": "admin@custos.test"},
        )
        admin_after = content_of(gateway, admin_id)
        blue_after = content_of(gateway, blue_id)

        # A principal whose keys were destroyed gets a new key for what it sends next.
        again_id, _ = chat(client(gateway), "ADMIN-AGAIN-4 please help")
        again = content_of(gateway, again_id)
        again_record = one_call(store_url(tmp_path), again_id)

        # Only admins erase; auditors and members cannot.
        refused = httpx.post(
            f"{gateway.url}/admin/v1/audit/erase",
            headers={"authorization": f"Bearer {blue}"},
            json={"team": "blue"},
        )
        # The erasures are recorded, naming what was erased and never the content.
        changes = eventually(
            lambda: [
                r
                for r in stored_records(store_url(tmp_path), "admin.change")
                if r["action"] == "audit.content.erase"
            ],
            lambda found: len(found) == 2,
        )
        time.sleep(0.3)
    finally:
        gateway.stop()

    assert red_after["state"] == "erased" and red_after["request"] is None
    assert red_after["erased_at"]
    assert shown.returncode == 0 and "content erased" in shown.stdout
    assert by_principal.status_code == 200, by_principal.text
    assert by_principal.json()["scope"] == "principal"
    assert by_principal.json()["subject"] == admin_record["principal.id"]
    assert admin_after["state"] == "erased"
    assert blue_after["state"] == "available"
    assert blue_after["request"]["messages"][0]["content"] == "BLUE-SECRET-2 please help"
    assert again["state"] == "available"
    assert again_record["content.dek_id"] != admin_record["content.dek_id"]
    assert refused.status_code in (401, 403)
    assert {(c["target.type"], c["target.id"]) for c in changes} == {
        ("team", "red"),
        ("principal", admin_record["principal.id"]),
    }
    assert all(c["after"]["data_keys"] == 1 for c in changes)

    # Gone from the files: the destroyed keys' bytes, and (never there) the plaintext.
    for name, blob in database_bytes(tmp_path):
        assert red_wrapped not in blob, name
        assert admin_wrapped not in blob, name
        for secret in (b"RED-SECRET-1", b"BLUE-SECRET-2", b"ADMIN-SECRET-3"):
            assert secret not in blob, name
    # The log still verifies: records carry only hashes of what was destroyed.
    verified = subprocess.run(
        [*CUSTOS, "audit", "verify", "--store", store_url(tmp_path), "--allow-unsigned"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    erasures = query(store_url(tmp_path), "SELECT count(*) AS n FROM audit_content_erasures")
    assert erasures[0]["n"] == 2


@pytest.mark.parametrize("mode", ["none"])
def test_none_mode_adds_no_content_fields(
    mock_provider: MockProvider, tmp_path: Path, mode: str
) -> None:
    gateway = start(mock_provider, tmp_path, mode)
    try:
        request_id, _ = chat(client(gateway), PROMPT)
        record = one_call(store_url(tmp_path), request_id)
        shown = content_of(gateway, request_id)
    finally:
        gateway.stop()
    assert not [k for k in record if k.startswith("content.")]
    assert shown["state"] == "not_captured"
    assert contents_rows(tmp_path) == []


# -- PostgreSQL, two replicas --------------------------------------------------------------------


def test_postgresql_replicas_share_keys_and_hear_of_erasures(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Replica B encrypts with a key it made; an erasure made through replica A reaches B's key
    cache (PostgreSQL LISTEN/NOTIFY), so B's next call is under a new key that A can read."""
    import asyncio
    import base64
    import secrets

    from tests.store_fixtures import PG_URL, create_pg_schema, drop_pg_schema, with_search_path
    from tests.test_cluster import _bootstrap

    try:
        schema = asyncio.run(create_pg_schema())
    except OSError as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    url = with_search_path(PG_URL, schema)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = (
        standard_config(mock_provider.url).replace("sqlite:///./custos.db", url)
        + 'audit: {content: full, content_key: "${env:CUSTOS_TEST_CONTENT_KEY}"}\n'
    )
    env = {"CUSTOS_TEST_CONTENT_KEY": key}
    a = b = None
    try:
        token = asyncio.run(_bootstrap(url))
        a = GatewayProcess(config, tmp_path_factory.mktemp("replica-a"), env=env)
        b = GatewayProcess(config, tmp_path_factory.mktemp("replica-b"), env=env)
        a.token = b.token = token
        first_id, _ = chat(client(b), "PG-FIRST please help")
        first = content_of(a, first_id)  # written by B, read (decrypted) through A
        erased = cli(a, "erase", "--principal", "admin@custos.test")
        assert erased.returncode == 0, erased.stderr
        time.sleep(0.5)  # the notification reaches B within milliseconds
        second_id, _ = chat(client(b), "PG-SECOND please help")
        second = content_of(a, second_id)
        after = content_of(b, first_id)
    finally:
        for replica in (a, b):
            if replica is not None:
                replica.stop()
        asyncio.run(drop_pg_schema(schema))
    assert first["state"] == "available"
    assert first["request"]["messages"][0]["content"] == "PG-FIRST please help"
    assert after["state"] == "erased"
    assert second["state"] == "available", second
    assert second["dek_id"] != first["dek_id"]

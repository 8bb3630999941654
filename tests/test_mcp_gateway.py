"""The MCP gateway end to end: the official ``mcp`` SDK as the client (Streamable HTTP), through
``custos serve``, to tool servers built with the same SDK's FastMCP, all on loopback ports.

What is shown: the tool list is exactly what access grants; calls go through and come back;
progress passes through; a cancelled call is cancelled at the tool server; a server that dies
mid-call gives the client a clean JSON-RPC error; a denial (access, a guardrail) is an error the
SDK raises, naming the rule; PII in a result is redacted before the client sees it; a session
opened on one replica is served by another; every call is one ``mcp.tool_call`` record in the
audit log, which ``custos audit verify`` proves intact.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client

from custos.guardrails import pii
from tests.audit_helpers import eventually
from tests.conftest import CUSTOS, ROOT, GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

SERVER_SCRIPT = ROOT / "tests" / "mcp_tool_server.py"
UPSTREAM_TOKEN = "upstream-secret-token-for-tests"


class ToolServer:
    """``tests/mcp_tool_server.py`` on a free port."""

    def __init__(
        self, markers: Path, *, token: str | None = None, sse: bool = False, json: bool = False,
        users: str | None = None,
    ) -> None:  # fmt: skip
        """``users``: ``USER=TOKEN,…``, per-user tokens the server accepts (``whoami``)."""
        markers.mkdir(parents=True, exist_ok=True)
        self.markers = markers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{'sse' if sse else 'mcp'}"
        command = [sys.executable, str(SERVER_SCRIPT), "--port", str(self.port),
                   "--markers", str(markers)]  # fmt: skip
        if token:
            command += ["--token", token]
        if users:
            command += ["--user-tokens", users]
        if sse:
            command.append("--sse")
        if json:
            command.append("--json")
        self.process = subprocess.Popen(command, cwd=ROOT)
        self._wait()

    def _wait(self) -> None:
        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError("the tool server exited")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the tool server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def gateway_config(
    tools_url: str, fragile_url: str, store: str = "sqlite:///./custos.db",
    legacy_url: str = "http://127.0.0.1:9/sse",
) -> str:  # fmt: skip
    return textwrap.dedent(
        f"""\
        version: 1
        gateway: {{max_body_bytes: 65536}}
        state: {{store: "{store}"}}
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
        providers: {{}}
        access:
          - id: admin-tools
            subjects: [user:admin@custos.test]
            mcp_tools: [tools/echo, tools/lookup_customer, tools/count, tools/wait_forever,
                        tools/delete_record, fragile/*, legacy/echo, legacy/count,
                        legacy/wait_forever]
        mcp_servers:
          tools:
            url: {tools_url}
            region: eu
            auth: {{type: bearer, token: "${{env:CUSTOS_TEST_UPSTREAM_TOKEN}}"}}
            timeouts: {{call_s: 30}}
          fragile:
            url: {fragile_url}
          legacy:
            url: {legacy_url}
            transport: sse
        virtual_mcp_servers:
          desk:
            tools: [tools/echo, tools/secret_tool, fragile/echo]
        rate_limits:
          - id: deletes-per-minute
            when: {{mcp_tools: [tools/delete_record]}}
            limit_to: 2
            unit: tool_calls_per_minute
            applies_per: [user]
        guardrails:
          - id: redact-pii-in-results
            hook: mcp_tool_post_invoke
            type: pii
            operation: mutate
            when: {{mcp_tools: [tools/lookup_customer, fragile/lookup_customer]}}
          - id: no-drop-table
            hook: mcp_tool_pre_invoke
            type: keywords
            keywords: {{sql: [DROP TABLE]}}
        """
    )


@pytest.fixture(scope="module")
def tool_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ToolServer, ToolServer]]:
    root = tmp_path_factory.mktemp("tools")
    tools = ToolServer(root / "tools", token=UPSTREAM_TOKEN)
    fragile = ToolServer(root / "fragile", json=True)  # answers in plain JSON, not streams
    yield tools, fragile
    tools.stop()
    fragile.stop()


@pytest.fixture(scope="module")
def legacy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolServer]:
    legacy = ToolServer(tmp_path_factory.mktemp("legacy"), sse=True)
    yield legacy
    legacy.stop()


@pytest.fixture(scope="module")
def mcp_gateway(
    tool_servers: tuple[ToolServer, ToolServer],
    legacy_server: ToolServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    tools, fragile = tool_servers
    gateway = GatewayProcess(
        gateway_config(tools.url, fragile.url, legacy_url=legacy_server.url),
        tmp_path_factory.mktemp("mcp-gateway"),
        env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    yield gateway
    gateway.stop()


async def run_session(
    gateway: GatewayProcess, body: Any, endpoint: str = "tools", *, url: str | None = None,
    session_id: str | None = None, token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:  # fmt: skip
    """``body(session)`` in an SDK session with ``endpoint`` (initialized, unless it resumes
    ``session_id``, possibly on another replica's ``url``), as the admin or ``token``, with
    ``headers`` on every request."""
    try:
        return await _run_session(gateway, body, endpoint, url, session_id, token, headers)
    except BaseExceptionGroup as group:  # anyio's task groups wrap what the body raised
        raise _leaf(group) from None


def _leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _run_session(
    gateway: GatewayProcess, body: Any, endpoint: str, url: str | None, session_id: str | None,
    token: str | None, extra: dict[str, str] | None,
) -> Any:  # fmt: skip
    headers = {"authorization": f"Bearer {token}"} if token else dict(gateway.headers)
    headers.update(extra or {})
    if session_id is not None:
        headers["mcp-session-id"] = session_id
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=60)) as http,
        streamable_http_client(f"{url or gateway.url}/mcp/{endpoint}", http_client=http) as (
            read, write, _),
        ClientSession(read, write) as session,
    ):  # fmt: skip
        if session_id is None:
            await session.initialize()
        return await body(session)


def tool_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{gateway.url}/admin/v1/audit/events",
        params={"event_type": "mcp.tool_call", "limit": 1000},
        headers=gateway.headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return [orjson.loads(r["record"]) for r in response.json()["data"]]


def record_where(gateway: GatewayProcess, **fields: Any) -> dict[str, Any]:
    def matching() -> list[dict[str, Any]]:
        return [r for r in tool_records(gateway)
                if all(r.get(k) == v for k, v in fields.items())]  # fmt: skip

    found = eventually(matching, bool)
    assert found, f"no mcp.tool_call record with {fields}"
    return found[-1]


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


# -- listing and calling ---------------------------------------------------------------------------


def test_tools_list_shows_exactly_what_access_grants(mcp_gateway):
    async def body(s: ClientSession) -> list[str]:
        return sorted(t.name for t in (await s.list_tools()).tools)

    names = asyncio.run(run_session(mcp_gateway, body))
    assert names == ["count", "delete_record", "echo", "lookup_customer", "wait_forever"]
    assert "secret_tool" not in names  # the server has it; no grant names it


def test_a_call_goes_through_and_is_recorded(mcp_gateway):
    async def body(s: ClientSession) -> types.CallToolResult:
        return await s.call_tool("echo", {"text": "hello tools"})

    result = asyncio.run(run_session(mcp_gateway, body))
    assert not result.isError
    assert text_of(result) == "hello tools"
    record = record_where(mcp_gateway, **{"mcp.tool": "echo", "outcome": "served"})
    assert record["mcp.server"] == "tools"
    assert record["mcp.endpoint"] == "tools"
    assert record["cloud.region"] == "eu"
    assert record["principal.id"] is not None
    assert record["mcp.result.is_error"] is False
    assert len(record["mcp.arguments.hmac_sha256"]) == 64
    assert len(record["mcp.result.hmac_sha256"]) == 64
    assert "hello tools" not in orjson.dumps(record).decode()  # digests, never the content
    assert [(d["stage"], d["rule"], d["decision"]) for d in record["decisions"]][:1] == [
        ("authorize", "admin-tools", "allow")
    ]
    assert UPSTREAM_TOKEN not in mcp_gateway.log()


def test_a_tool_access_does_not_grant_is_an_error_the_sdk_raises(mcp_gateway):
    async def body(s: ClientSession) -> None:
        await s.call_tool("secret_tool", {})

    with pytest.raises(McpError) as caught:
        asyncio.run(run_session(mcp_gateway, body))
    assert "tools/secret_tool" in caught.value.error.message
    assert caught.value.error.data["code"] == "tool_not_allowed"
    request_id = caught.value.error.data["request_id"]
    record = record_where(mcp_gateway, request_id=request_id)
    assert record["outcome"] == "denied"
    assert record["stopped_at"] == "authorize"


def test_an_unknown_tool_is_refused_without_saying_whether_it_exists(mcp_gateway):
    async def body(s: ClientSession) -> None:
        await s.call_tool("no_such_tool", {})

    # On a server's endpoint access decides first: an ungranted name is refused as such.
    with pytest.raises(McpError) as caught:
        asyncio.run(run_session(mcp_gateway, body))
    assert caught.value.error.data["code"] == "tool_not_allowed"
    # A virtual server knows its tools: a name it does not offer is invalid params.
    with pytest.raises(McpError) as caught:
        asyncio.run(run_session(mcp_gateway, body, endpoint="desk"))
    assert caught.value.error.code == -32602
    assert caught.value.error.data["code"] == "tool_not_found"


def test_a_pre_invoke_guardrail_blocks_by_name(mcp_gateway):
    async def body(s: ClientSession) -> None:
        await s.call_tool("echo", {"text": "please DROP TABLE customers"})

    with pytest.raises(McpError) as caught:
        asyncio.run(run_session(mcp_gateway, body))
    assert "no-drop-table" in caught.value.error.message
    assert caught.value.error.data["code"] == "guardrail_blocked"
    record = record_where(mcp_gateway, request_id=caught.value.error.data["request_id"])
    assert record["stopped_at"] == "guardrails"
    assert record["mcp.result.hmac_sha256"] is None


def test_pii_in_a_result_is_redacted_before_the_client_sees_it(mcp_gateway):
    async def body(s: ClientSession) -> types.CallToolResult:
        return await s.call_tool("lookup_customer", {"customer_id": "CUST-000042"})

    result = asyncio.run(run_session(mcp_gateway, body))
    text = text_of(result)
    assert "ada@example.com" not in text
    assert "7946" not in text
    assert "<EMAIL_1>" in text and "Ada Lovelace" in text
    assert result.structuredContent == {"result": text}  # redacted there too, the same way
    record = record_where(mcp_gateway, **{"mcp.tool": "lookup_customer"})
    (decision,) = [d for d in record["decisions"] if d["rule"] == "redact-pii-in-results"]
    assert decision["decision"] == "mutate"
    assert decision["input"]["hook"] == "mcp_tool_post_invoke"
    # found in the text block and again in the structured content (FastMCP sends both)
    assert decision["input"]["found"] == {"pii.email": 2, "pii.phone": 2}


def test_a_plain_json_answer_is_redacted_the_same_way(mcp_gateway):
    async def body(s: ClientSession) -> types.CallToolResult:
        return await s.call_tool("lookup_customer", {"customer_id": "CUST-000043"})

    result = asyncio.run(run_session(mcp_gateway, body, endpoint="fragile"))
    text = text_of(result)
    assert "ada@example.com" not in text and "<EMAIL_1>" in text
    record = record_where(mcp_gateway, **{"mcp.server": "fragile", "mcp.tool": "lookup_customer"})
    assert record["outcome"] == "served"
    (decision,) = [d for d in record["decisions"] if d["rule"] == "redact-pii-in-results"]
    assert decision["decision"] == "mutate"


def test_progress_passes_through(mcp_gateway):
    seen: list[float] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)

    async def body(s: ClientSession) -> types.CallToolResult:
        return await s.call_tool("count", {"steps": 4}, progress_callback=progress)

    result = asyncio.run(run_session(mcp_gateway, body))
    assert text_of(result) == "counted to 4"
    assert seen == [1, 2, 3, 4]
    record = record_where(mcp_gateway, **{"mcp.tool": "count"})
    assert record["mcp.progress_notifications"] == 4


async def _cancel_wait_forever(s: ClientSession, markers: Path) -> None:
    """Start ``wait_forever``, cancel it once the server runs it, wait until it was cancelled
    there."""
    request_id = s._request_id  # the id the SDK gives its next request
    call = asyncio.ensure_future(s.call_tool("wait_forever", {}))
    for _ in range(200):
        if (markers / "started").exists():
            break
        await asyncio.sleep(0.05)
    cancel = types.CancelledNotification(
        params=types.CancelledNotificationParams(requestId=request_id, reason="test")
    )
    await s.send_notification(types.ClientNotification(cancel))
    for _ in range(200):
        if (markers / "cancelled").exists():
            break
        await asyncio.sleep(0.05)
    call.cancel()


@pytest.mark.parametrize("endpoint", ["tools", "fragile"])  # a streamed answer, a plain one
def test_a_cancelled_call_is_cancelled_at_the_tool_server(mcp_gateway, tool_servers, endpoint):
    markers = tool_servers[0 if endpoint == "tools" else 1].markers

    async def body(s: ClientSession) -> None:
        await _cancel_wait_forever(s, markers)

    asyncio.run(run_session(mcp_gateway, body, endpoint=endpoint))
    assert (markers / "cancelled").exists()
    record = record_where(mcp_gateway, **{"mcp.server": endpoint, "mcp.tool": "wait_forever"})
    assert record["outcome"] == "cancelled"
    assert record["stopped_at"] == "client"


def test_a_virtual_server_bundles_chosen_tools_of_several_servers(mcp_gateway):
    async def body(s: ClientSession) -> tuple[list[str], str]:
        names = sorted(t.name for t in (await s.list_tools()).tools)
        result = await s.call_tool("fragile__echo", {"text": "via the desk"})
        return names, text_of(result)

    names, text = asyncio.run(run_session(mcp_gateway, body, endpoint="desk"))
    # both servers have echo (prefixed); secret_tool is chosen but never granted
    assert names == ["fragile__echo", "tools__echo"]
    assert text == "via the desk"
    record = record_where(mcp_gateway, **{"mcp.endpoint": "desk"})
    assert (record["mcp.server"], record["mcp.tool"]) == ("fragile", "echo")
    assert record["mcp.tool.called_as"] == "fragile__echo"


# -- sessions and errors ---------------------------------------------------------------------------


def test_requests_without_a_valid_session_or_token_are_refused(mcp_gateway):
    url = f"{mcp_gateway.url}/mcp/tools"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"accept": "application/json, text/event-stream"}
    no_token = httpx.post(url, json=call, headers=accept)
    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == -32001
    no_session = httpx.post(url, json=call, headers={**mcp_gateway.headers, **accept})
    assert no_session.status_code == 400
    forged = httpx.post(url, json=call, headers={**mcp_gateway.headers, **accept,
                                                  "mcp-session-id": "mcs1.e30.AAAA"})  # fmt: skip
    assert forged.status_code == 404
    assert httpx.get(url, headers=mcp_gateway.headers).status_code == 405
    batch = httpx.post(url, json=[call], headers={**mcp_gateway.headers, **accept})
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    nowhere = httpx.post(f"{mcp_gateway.url}/mcp/nowhere", json=call, headers=mcp_gateway.headers)
    assert nowhere.status_code == 404
    anonymous = httpx.post(f"{mcp_gateway.url}/mcp/nowhere", json=call)
    assert anonymous.status_code == 401  # nothing said about which servers exist


def test_a_session_of_one_endpoint_is_not_accepted_by_another(mcp_gateway):
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    headers = {**mcp_gateway.headers, "accept": "application/json, text/event-stream"}
    opened = httpx.post(f"{mcp_gateway.url}/mcp/tools", json=init, headers=headers)
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    other = httpx.post(f"{mcp_gateway.url}/mcp/desk", json=listing,
                       headers={**headers, "mcp-session-id": session})  # fmt: skip
    assert other.status_code == 404
    same = httpx.post(f"{mcp_gateway.url}/mcp/tools", json=listing,
                      headers={**headers, "mcp-session-id": session})  # fmt: skip
    assert same.status_code == 200
    ended = httpx.delete(f"{mcp_gateway.url}/mcp/tools",
                         headers={**headers, "mcp-session-id": session})  # fmt: skip
    assert ended.status_code == 204


@pytest.mark.parametrize("plain", [False, True])  # mid-stream; before a plain answer
def test_a_server_that_dies_mid_call_gives_a_clean_error_and_a_record(tmp_path, plain):
    dying = ToolServer(tmp_path / "dying", json=plain)
    (tmp_path / "gw").mkdir()
    gateway = GatewayProcess(
        gateway_config(dying.url, dying.url),
        tmp_path / "gw",
        env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    try:

        async def body(s: ClientSession) -> None:
            await s.call_tool("die", {})

        with pytest.raises(McpError) as caught:
            asyncio.run(run_session(gateway, body, endpoint="fragile"))
        assert caught.value.error.code == -32002
        assert "fragile" in caught.value.error.message
        expected = "upstream_unreachable" if plain else "upstream_stream_broken"
        assert caught.value.error.data["code"] == expected
        record = record_where(gateway, request_id=caught.value.error.data["request_id"])
        assert record["outcome"] == "upstream_error"
        assert record["stopped_at"] == "provider"
        assert record["mcp.tool"] == "die"
    finally:
        gateway.stop()
        dying.stop()
    # The tool-call records are leaves of the same log: verify checks them with the rest.
    verified = subprocess.run(
        [*CUSTOS, "audit", "verify", "--store", f"sqlite:///{tmp_path / 'gw' / 'custos.db'}",
         "--allow-unsigned"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    if not plain:
        _a_tampered_tool_call_fails_verify(tmp_path / "gw" / "custos.db", record["event_id"])


def _a_tampered_tool_call_fails_verify(db: Path, event_id: str) -> None:
    """One byte of one ``mcp.tool_call`` record changed by whoever holds the file (the guard
    triggers dropped first): ``custos audit verify`` fails, naming the record."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit_guard_%'"
        ).fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(
            "UPDATE audit_events SET record = CAST(replace(CAST(record AS TEXT),"
            ' \'"outcome":"upstream_error"\', \'"outcome":"served"\') AS BLOB)'
            " WHERE event_id = ?",
            (event_id,),
        )
        assert conn.total_changes == 1
    verified = subprocess.run(
        [*CUSTOS, "audit", "verify", "--store", f"sqlite:///{db}", "--allow-unsigned"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert f"({event_id}): the record's bytes do not match its leaf hash" in (
        verified.stdout + verified.stderr)  # fmt: skip


def _serve_one_session_on_two_replicas(first: GatewayProcess, second: GatewayProcess) -> None:
    """Initialize on ``first``; list and call through ``second`` with that session."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    opened = httpx.post(f"{first.url}/mcp/tools", json=init, headers={
        **first.headers, "accept": "application/json, text/event-stream"})  # fmt: skip
    session = opened.headers["mcp-session-id"]

    async def body(s: ClientSession) -> tuple[list[str], str]:
        names = sorted(t.name for t in (await s.list_tools()).tools)
        return names, text_of(await s.call_tool("echo", {"text": "on the other replica"}))

    names, text = asyncio.run(run_session(first, body, url=second.url, session_id=session))
    assert "echo" in names and "secret_tool" not in names
    assert text == "on the other replica"
    record = record_where(first, **{"mcp.tool.called_as": "echo",
                                    "mcp.session": session_nonce(session)})  # fmt: skip
    assert record["outcome"] == "served"


def test_a_session_opened_on_one_replica_is_served_by_another(mcp_gateway, tool_servers, tmp_path):
    tools, fragile = tool_servers
    store = f"sqlite:///{mcp_gateway.config_path.parent / 'custos.db'}"
    replica = GatewayProcess(gateway_config(tools.url, fragile.url, store=store), tmp_path,
                             env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN})  # fmt: skip
    replica.token = mcp_gateway.token  # one store: the same users and tokens
    try:
        _serve_one_session_on_two_replicas(mcp_gateway, replica)
    finally:
        replica.stop()


def test_two_replicas_on_postgresql_serve_one_session(tool_servers, tmp_path):
    from tests.store_fixtures import (
        PG_URL,
        create_pg_schema,
        drop_pg_schema,
        require_pg,
        with_search_path,
    )
    from tests.test_cluster import _bootstrap

    asyncio.run(require_pg())
    schema = asyncio.run(create_pg_schema())
    try:
        store = with_search_path(PG_URL, schema)
        admin_token = asyncio.run(_bootstrap(store))
        tools, fragile = tool_servers
        config = gateway_config(tools.url, fragile.url, store=store)
        env = {"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        first = GatewayProcess(config, tmp_path / "a", env=env)
        second = GatewayProcess(config, tmp_path / "b", env=env)
        first.token = second.token = admin_token
        try:
            _serve_one_session_on_two_replicas(first, second)
            # The tool-call report of a PostgreSQL store equals its records.
            assert assert_report_equals_records(first)["totals"]["served"] >= 1
        finally:
            first.stop()
            second.stop()
    finally:
        asyncio.run(drop_pg_schema(schema))


def session_nonce(session_id: str) -> str:
    import base64

    body = session_id.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["n"]


def test_custos_mcp_tools_shows_what_a_caller_would_see(mcp_gateway):
    import os

    listed = subprocess.run(
        [*CUSTOS, "mcp", "tools", "--config", str(mcp_gateway.config_path),
         "--as", "user:admin@custos.test", "--endpoint", "tools"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CUSTOS_TEST_TOKEN_KEY": "test-token-hash-key-0123456789abcdef",
             "CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    granted = ["echo", "lookup_customer", "count", "wait_forever", "delete_record"]
    assert listed.stdout.split() == ["/mcp/tools", *(f"tools/{t}" for t in granted)]


def test_a_server_on_the_legacy_sse_transport_is_served_the_same_way(mcp_gateway, legacy_server):
    seen: list[float] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)

    async def body(s: ClientSession) -> tuple[list[str], str, str]:
        names = sorted(t.name for t in (await s.list_tools()).tools)
        echoed = text_of(await s.call_tool("echo", {"text": "old transport"}))
        counted = text_of(await s.call_tool("count", {"steps": 3}, progress_callback=progress))
        return names, echoed, counted

    names, echoed, counted = asyncio.run(run_session(mcp_gateway, body, endpoint="legacy"))
    assert names == ["count", "echo", "wait_forever"]
    assert (echoed, counted) == ("old transport", "counted to 3")
    assert seen == [1, 2, 3]
    record = record_where(mcp_gateway, **{"mcp.server": "legacy", "mcp.tool": "count"})
    assert record["mcp.progress_notifications"] == 3


def test_a_cancelled_call_on_the_legacy_transport_is_cancelled_at_the_server(
    mcp_gateway, legacy_server
):
    async def body(s: ClientSession) -> None:
        await _cancel_wait_forever(s, legacy_server.markers)

    asyncio.run(run_session(mcp_gateway, body, endpoint="legacy"))
    assert (legacy_server.markers / "cancelled").exists()
    record = record_where(mcp_gateway, **{"mcp.server": "legacy", "mcp.tool": "wait_forever"})
    assert record["outcome"] == "cancelled"


def test_a_rate_limit_counts_tool_calls(mcp_gateway):
    async def body(s: ClientSession) -> list[str]:
        texts = []
        for n in range(3):
            try:
                result = await s.call_tool("delete_record", {"record_id": str(n),
                                                             "environment": "staging"})  # fmt: skip
                texts.append(text_of(result))
            except McpError as exc:
                texts.append(f"{exc.error.code} {exc.error.data['code']}")
        return texts

    texts = asyncio.run(run_session(mcp_gateway, body))
    assert texts == ["deleted 0 in staging", "deleted 1 in staging",
                     "-32029 rate_limit_exceeded"]  # fmt: skip
    record = record_where(mcp_gateway, **{"mcp.tool": "delete_record", "outcome": "denied"})
    assert record["stopped_at"] == "rate_limit"


def test_a_reload_changes_what_a_session_may_see_and_a_bad_file_keeps_the_old(
    tool_servers, legacy_server, tmp_path
):
    tools, fragile = tool_servers
    text = gateway_config(tools.url, fragile.url, legacy_url=legacy_server.url)
    gateway = GatewayProcess(text, tmp_path, env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN})
    try:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
        opened = httpx.post(f"{gateway.url}/mcp/tools", json=init, headers={
            **gateway.headers, "accept": "application/json, text/event-stream"})  # fmt: skip
        session = opened.headers["mcp-session-id"]

        async def names(s: ClientSession) -> list[str]:
            return sorted(t.name for t in (await s.list_tools()).tools)

        assert "echo" in asyncio.run(run_session(gateway, names, session_id=session))
        before = gateway.revision()
        gateway.config_path.write_text(text.replace("mcp_tools: [tools/echo, ", "mcp_tools: ["))
        eventually(gateway.revision, lambda r: r != before)
        assert gateway.revision() != before
        now = asyncio.run(run_session(gateway, names, session_id=session))
        assert "echo" not in now and "count" in now  # the same session, the new revision
        served = gateway.revision()
        gateway.config_path.write_text(text.replace("fragile/echo]", "nowhere/echo]"))
        time.sleep(1.5)
        assert gateway.revision() == served  # refused: the old revision keeps serving
        assert "nowhere" in gateway.log()
    finally:
        gateway.stop()


def test_tool_call_content_is_captured_under_the_audit_content_setting(
    tool_servers, legacy_server, tmp_path
):
    tools, fragile = tool_servers
    text = gateway_config(tools.url, fragile.url, legacy_url=legacy_server.url)
    gateway = GatewayProcess(text + "audit: {content: redacted}\n", tmp_path,
                             env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN})  # fmt: skip
    try:

        async def body(s: ClientSession) -> str:
            return text_of(await s.call_tool("echo", {"text": "write to bob@example.com"}))

        assert asyncio.run(run_session(gateway, body)) == "write to bob@example.com"
        record = record_where(gateway, **{"mcp.tool": "echo"})
        assert record["content.mode"] == "redacted"
        assert len(record["content.request.sha256"]) == 64
        # the argument, and the result's text and structured content
        assert {"class": "pii.email", "count": 3, "source": pii.DETECTOR_VERSION} in (
            record["data_classes"]
        )
        reply = httpx.get(
            f"{gateway.url}/admin/v1/audit/requests/{record['request_id']}/content",
            headers=gateway.headers, timeout=10,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        (item,) = reply.json()["data"]
        assert item["state"] == "available"
        assert item["request"] == {"tool": "tools/echo", "arguments": {"text": "write to [EMAIL]"}}
        assert item["response"]["content"][0]["text"] == "write to [EMAIL]"
        assert b"bob@example.com" not in (tmp_path / "custos.db").read_bytes()
    finally:
        gateway.stop()


def expected_tool_report(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, int]]:
    """The tool-call report grouped by team, server, tool, outcome and stage, computed from
    the records themselves."""
    rows: dict[tuple[Any, ...], dict[str, int]] = {}
    for r in records:
        key = (r["team"], r["mcp.server"], r["mcp.tool"], r["outcome"], r["stopped_at"])
        row = rows.setdefault(key, dict.fromkeys(("calls", "served", "denied", "cancelled",
                                                   "failed", "tool_errors"), 0))  # fmt: skip
        row["calls"] += 1
        outcome = r["outcome"] if r["outcome"] in ("served", "denied", "cancelled") else "failed"
        row[outcome] += 1
        row["tool_errors"] += r["mcp.result.is_error"] is True
    return rows


def reported_tool_calls(gateway: GatewayProcess) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date()
    response = httpx.get(
        f"{gateway.url}/admin/v1/audit/report/tool-calls",
        params={"from": str(today - dt.timedelta(days=1)), "to": str(today),
                "group_by": "team,server,tool,outcome,stage"},
        headers=gateway.headers, timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def assert_report_equals_records(gateway: GatewayProcess) -> dict[str, Any]:
    """The tool-call report of ``gateway`` against its records (waiting until the records in
    flight are in both)."""

    def both() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return reported_tool_calls(gateway), tool_records(gateway)

    def agree(pair: tuple[dict[str, Any], list[dict[str, Any]]]) -> bool:
        report, records = pair
        return report["totals"]["calls"] == len(records)

    report, records = eventually(both, agree)
    rows = {tuple(r["group"][g] for g in report["group_by"]):
            {m: r[m] for m in report["totals"]} for r in report["rows"]}  # fmt: skip
    assert rows == expected_tool_report(records)
    assert report["totals"]["calls"] == len(records) == sum(r["calls"] for r in rows.values())
    return report


def test_the_audit_report_groups_tool_calls_by_team_server_and_tool(mcp_gateway):
    """Served, denied (by access and by a guardrail) and failed tool calls through the SDK; the
    tool-call report (``custos audit report --kind tool_calls``, and ``custos mcp report``,
    the same report) equals the records, group by group and in total."""

    async def body(s: ClientSession) -> None:
        await s.call_tool("echo", {"text": "count me"})
        await s.call_tool("echo", {"text": "and me"})
        for refused in (("secret_tool", {}), ("echo", {"text": "DROP TABLE t"})):
            with pytest.raises(McpError):
                await s.call_tool(*refused)

    async def declared(s: ClientSession) -> None:
        await s.call_tool("echo", {"text": "about a customer"})

    asyncio.run(run_session(mcp_gateway, body))
    classified = {"x-custos-metadata": json.dumps({"data_classification": "customer_data"})}
    asyncio.run(run_session(mcp_gateway, declared, headers=classified))
    record_where(mcp_gateway, **{"mcp.tool": "echo", "stopped_at": "guardrails"})
    record_where(mcp_gateway, data_classes=[{"class": "customer_data", "count": None,
                                             "source": "declared"}])  # fmt: skip
    report = assert_report_equals_records(mcp_gateway)
    stages = {(r["group"]["tool"], r["group"]["stage"]): r for r in report["rows"]}
    assert stages[("secret_tool", "authorize")]["denied"] >= 1
    assert stages[("echo", "guardrails")]["denied"] >= 1
    assert stages[("echo", None)]["served"] >= 2

    today = dt.datetime.now(dt.UTC).date()
    common = ["--from", str(today - dt.timedelta(days=1)), "--to", str(today),
              "--url", mcp_gateway.url, "--token", mcp_gateway.token]  # fmt: skip

    def cli(*args: str) -> str:
        done = subprocess.run([*CUSTOS, *args, *common], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    audit = json.loads(cli("audit", "report", "--kind", "tool_calls", "--format", "json"))
    assert audit["group_by"] == ["team", "server", "tool"]
    assert audit["totals"]["calls"] >= report["totals"]["calls"]
    assert json.loads(cli("mcp", "report", "--format", "json")) == audit
    table = cli("mcp", "report").splitlines()
    assert table[0].startswith("tool-call report ")
    assert table[1].split() == ["TEAM", "SERVER", "TOOL", "CALLS", "SERVED", "DENIED",
                                "CANCELLED", "FAILED", "TOOL_ERRORS"]  # fmt: skip
    assert table[-1].split()[0] == "TOTAL"
    # Which tools were called with customer data: the calls that declared it, nothing else.
    customer = json.loads(cli("audit", "report", "--kind", "tool_calls", "--data-class",
                              "customer_data", "--format", "json"))  # fmt: skip
    carrying = [r for r in tool_records(mcp_gateway)
                if "customer_data" in {c["class"] for c in r["data_classes"]}]  # fmt: skip
    assert customer["totals"]["calls"] == len(carrying) >= 1
    assert {(r["group"]["team"], r["group"]["server"], r["group"]["tool"])
            for r in customer["rows"]} == {
        (r["team"], r["mcp.server"], r["mcp.tool"]) for r in carrying}  # fmt: skip


def test_bad_input_gets_a_clear_json_rpc_error_and_changes_nothing(mcp_gateway):
    url = f"{mcp_gateway.url}/mcp/tools"
    base = {**mcp_gateway.headers, "accept": "application/json, text/event-stream",
            "content-type": "application/json"}  # fmt: skip
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    session = httpx.post(url, json=init, headers=base).headers["mcp-session-id"]
    headers = {**base, "mcp-session-id": session}
    before = len(tool_records(mcp_gateway))

    def post(body: bytes | str, **extra: str) -> httpx.Response:
        return httpx.post(url, content=body, headers={**headers, **extra}, timeout=10)

    def code(response: httpx.Response) -> int:
        return int(response.json()["error"]["code"])

    assert code(post(b"{not json")) == -32700
    assert post(b"{}", **{"content-type": "text/plain"}).status_code == 415
    assert post(b'{"x": "' + b"a" * 70_000 + b'"}').status_code == 413
    assert code(post('{"jsonrpc": "1.0", "id": 1, "method": "ping"}')) == -32600
    assert code(post('{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}')) == -32600
    assert code(post('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]}')) == (
        -32602
    )
    bad_arguments = post('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", '
                         '"params": {"name": "echo", "arguments": "text"}}')  # fmt: skip
    assert (bad_arguments.status_code, code(bad_arguments)) == (200, -32602)
    assert bad_arguments.json()["id"] == 7
    no_name = post('{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {}}')
    assert code(no_name) == -32602
    long_name = post(orjson.dumps({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
                                   "params": {"name": "x" * 5000}}))  # fmt: skip
    assert code(long_name) == -32602
    unknown = post('{"jsonrpc": "2.0", "id": 9, "method": "resources/list"}')
    assert (unknown.status_code, code(unknown)) == (200, -32601)
    old = post('{"jsonrpc": "2.0", "id": 10, "method": "ping"}', **{"mcp-protocol-version": "1999"})
    assert old.status_code == 400
    pong = post('{"jsonrpc": "2.0", "id": 11, "method": "ping"}')
    assert pong.status_code == 200 and pong.json() == {"jsonrpc": "2.0", "id": 11, "result": {}}
    # The refused tools/call requests were recorded as such; nothing reached a tool.
    refused = eventually(lambda: tool_records(mcp_gateway)[before:], lambda r: len(r) >= 3)
    assert [r["error.type"] for r in refused] == ["invalid_params"] * 3
    assert len(refused[-1]["mcp.tool.called_as"]) == 256
    assert all(r["outcome"] == "denied" and r["mcp.server"] is None for r in refused)
    for text in (b"{not json", b"a" * 70_000):
        assert text not in mcp_gateway.log().encode()


def test_passthrough_sends_the_callers_own_idp_token_to_the_server(
    tool_servers, legacy_server, tmp_path
):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.test_jwt import JWKSServer, _idp_entry, _with_idps, sign

    jwks = JWKSServer()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish("rsa-1", key)
    carol = sign(key, "rsa-1")  # Carol, team research (from the groups claim)
    federated = ToolServer(tmp_path / "federated", token=carol)  # accepts only Carol's token
    tools, fragile = tool_servers
    text = gateway_config(tools.url, fragile.url, legacy_url=legacy_server.url)
    server = f"  federated:\n    url: {federated.url}\n    auth: {{type: passthrough}}\n"
    text = text.replace("fragile/*,", "fragile/*, federated/*,")
    text = text.replace("\nmcp_servers:\n", "\nmcp_servers:\n" + server, 1)
    research = (
        "  - id: research-tools\n    subjects: [team:research]\n    mcp_tools: [federated/*]\n"
    )
    text = text.replace("access:\n", "access:\n" + research, 1)
    text = _with_idps(text, _idp_entry(jwks.url))
    (tmp_path / "gw").mkdir()
    gateway = GatewayProcess(text, tmp_path / "gw",
                             env={"CUSTOS_TEST_UPSTREAM_TOKEN": UPSTREAM_TOKEN})  # fmt: skip
    try:

        async def body(s: ClientSession) -> str:
            return text_of(await s.call_tool("echo", {"text": "as carol"}))

        assert asyncio.run(run_session(gateway, body, "federated", token=carol)) == "as carol"
        record = record_where(gateway, **{"mcp.server": "federated", "outcome": "served"})
        assert record["principal.id"].startswith("jwt:northwind:")
        # The admin's gateway token is never sent on: refused before the server is called.
        with pytest.raises(McpError) as caught:
            asyncio.run(run_session(gateway, body, "federated"))
        assert caught.value.error.data["code"] == "passthrough_needs_jwt"
        assert gateway.token not in gateway.log()
    finally:
        gateway.stop()
        federated.stop()
        jwks.httpd.shutdown()

"""Cedar and OPA at the MCP tool boundary, end to end: the official ``mcp`` SDK through ``custos
serve`` to a FastMCP tool server, with ``cedar`` and ``opa`` guardrails at
``mcp_tool_pre_invoke`` deciding on the tool's arguments and the request's metadata.

What is shown: an allowed call reaches the tool; a call a policy forbids is a JSON-RPC error the
SDK raises naming the guardrail and the policy rule, never reaches the tool server, and its
``mcp.tool_call`` record holds the decision with the policy's revision.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, McpError
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import GatewayProcess
from tests.test_mcp_gateway import ToolServer, record_where

pytestmark = pytest.mark.timeout(120)

CEDAR = """\
@id("admins-call-tools")
permit(principal, action == Action::"call_tool", resource);

@id("delete-only-in-staging")
forbid(principal, action == Action::"call_tool", resource)
when { resource.name like "delete_*" }
unless { resource.arguments has environment && resource.arguments.environment == "staging" };
"""

REGO = """\
package custos

default decision := {"allow": true}

decision := {"allow": false, "rule": "no-project-names", "reason": "a code name"} if {
    input.resource.name == "echo"
    contains(lower(input.resource.arguments.text), "bluebird")
}
"""


def config() -> str:
    return textwrap.dedent(
        """\
        version: 1
        state: {store: "sqlite:///./custos.db"}
        identity:
          token_hash_key: ${env:CUSTOS_TEST_TOKEN_KEY}
        providers: {}
        access:
          - id: admin-tools
            subjects: [user:admin@custos.test]
            mcp_tools: [tools/echo, tools/delete_record]
        mcp_servers:
          tools:
            url: ${env:CUSTOS_TEST_TOOLS_URL}
            auth: {type: bearer, token: "${env:CUSTOS_TEST_UPSTREAM_TOKEN}"}
        guardrails:
          - id: tools-cedar
            hook: mcp_tool_pre_invoke
            type: cedar
            policies: tools.cedar
            when: {metadata: {suite: policy}}
          - id: tools-rego
            hook: mcp_tool_pre_invoke
            type: opa
            policy: tools.rego
            query: data.custos.decision
            when: {metadata: {suite: policy}}
        """
    )


@pytest.fixture(scope="module")
def policy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    base = tmp_path_factory.mktemp("mcp-policy")
    server = ToolServer(base / "markers", token="upstream-token-for-policy-tests")
    home = base / "gateway"
    home.mkdir()
    (home / "tools.cedar").write_text(CEDAR)
    (home / "tools.rego").write_text(REGO)
    env = {"CUSTOS_TEST_TOOLS_URL": server.url,
           "CUSTOS_TEST_UPSTREAM_TOKEN": "upstream-token-for-policy-tests"}  # fmt: skip
    gateway = GatewayProcess(config(), home, env=env)
    gateway.markers = server.markers  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()
    server.stop()


def call(gateway: GatewayProcess, tool: str, arguments: dict[str, Any]) -> str:
    """One ``tools/call`` in an SDK session carrying the metadata the guardrails match on."""

    async def run() -> str:
        headers = {**gateway.headers, "x-custos-metadata": json.dumps({"suite": "policy"})}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(f"{gateway.url}/mcp/tools", http_client=http) as (r, w, _),
            ClientSession(r, w) as session,
        ):
            await session.initialize()
            result = await session.call_tool(tool, arguments)
            return "".join(getattr(c, "text", "") for c in result.content)

    try:
        return asyncio.run(run())
    except BaseExceptionGroup as group:  # anyio wraps what the session raised
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def deleted(gateway: GatewayProcess, record_id: str) -> bool:
    markers: Path = gateway.markers  # type: ignore[attr-defined]
    return any(record_id in p.read_text() for p in markers.glob("*") if p.is_file())


def test_cedar_allows_a_delete_in_staging(policy_gateway):
    out = call(policy_gateway, "delete_record", {"record_id": "r-1", "environment": "staging"})
    assert "r-1" in out


def test_cedar_forbids_a_delete_outside_staging_by_its_rule(policy_gateway):
    with pytest.raises(McpError) as caught:
        call(policy_gateway, "delete_record", {"record_id": "r-2", "environment": "production"})
    error = caught.value.error
    assert error.data["code"] == "policy_denied"
    assert "tools-cedar" in error.message and "delete-only-in-staging" in error.message
    record = record_where(policy_gateway, request_id=error.data["request_id"])
    assert record["outcome"] == "denied" and record["stopped_at"] == "guardrails"
    (decision,) = [d for d in record["decisions"] if d["rule"] == "tools-cedar"]
    assert decision["decision"] == "deny"
    assert decision["input"]["policy_rule"] == "delete-only-in-staging"
    assert decision["input"]["engine"] == "cedar" and decision["input"]["policy_revision"]
    assert not deleted(policy_gateway, "r-2")


def test_opa_allows_an_ordinary_echo(policy_gateway):
    assert "hello" in call(policy_gateway, "echo", {"text": "hello"})


def test_opa_denies_by_a_rule_on_the_arguments(policy_gateway):
    with pytest.raises(McpError) as caught:
        call(policy_gateway, "echo", {"text": "status of Project Bluebird?"})
    error = caught.value.error
    assert error.data["code"] == "policy_denied"
    assert "tools-rego" in error.message and "no-project-names" in error.message
    record = record_where(policy_gateway, request_id=error.data["request_id"])
    (decision,) = [d for d in record["decisions"] if d["rule"] == "tools-rego"]
    assert (decision["decision"], decision["input"]["policy_rule"]) == ("deny", "no-project-names")

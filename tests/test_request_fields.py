"""Every documented request field of both client protocols, sent to every provider type: each
either reaches the provider in some form (the request the mock received differs from the one
without the field) or is refused with a 400 that names it. A field that does neither was dropped
silently, and fails the test.

The field tables are the request parameters of OpenAI's ``POST /v1/chat/completions`` and
Anthropic's ``POST /v1/messages`` API references (Anthropic's beta parameters included, and the
sampling parameters older Anthropic clients still send), each with a value that asks for
something. ``test_the_tables_cover_the_sdks`` keeps them level with the installed SDKs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anthropic.types.beta.message_create_params import MessageCreateParamsBase
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from tests.conftest import GatewayProcess, MockProvider, serve_gateway
from tests.sdk_helpers import (
    ANTHROPIC_WEATHER_TOOL,
    OPENAI_WEATHER_TOOL,
    WEATHER_SCHEMA,
    add_every_provider_type,
    config_with,
)

#: One model per provider type, and a part of the path its requests arrive on (a streamed
#: request to Gemini or Bedrock goes to another method, so the part is what both share).
PROVIDER_TYPES = {
    "openai": ("openai-main/gpt-5.5", "/v1/chat/completions"),
    "azure_openai": ("azure-eu/gpt-5.5", "/chat/completions"),
    "openai_compatible": ("local-vllm/llama-3.1-8b", "/v1/chat/completions"),
    "anthropic": ("claude-main/claude-sonnet-4.5", "/v1/messages"),
    "gemini": ("gemini-main/gemini-2.5-flash", "/models/gemini-2.5-flash:"),
    "vertex": ("vertex-eu/gemini-2.5-pro", "/models/gemini-2.5-pro:"),
    "bedrock": ("aws-us/claude", "/model/anthropic.claude-sonnet-4-5-v1:0/converse"),
}

OPENAI_FIELDS: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "max_completion_tokens": 77,
    "max_tokens": 77,
    "metadata": {"team": "search"},
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "Paris"},
    "presence_penalty": 0.5,
    "prompt_cache_key": "weather-bot",
    "prompt_cache_options": {"ttl": "1h"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA},
    },
    "safety_identifier": "user-7",
    "seed": 7,
    "service_tier": "default",
    "stop": ["END"],
    "store": True,
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.5,
    "tool_choice": "required",
    "tools": [OPENAI_WEATHER_TOOL],
    "top_logprobs": 2,
    "top_p": 0.5,
    "user": "user-7",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
}

ANTHROPIC_FIELDS: dict[str, Any] = {
    "billing_policy": {"type": "standard"},
    "cache_control": {"type": "ephemeral"},
    "compaction": {"enabled": True},
    "container": "container_1",
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "diagnostics": {"enabled": True},
    "fallback_credit_token": "token_1",
    "fallbacks": [{"model": "claude-haiku-4-5"}],
    "inference_geo": "us",
    "max_tokens": 77,
    "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "docs"}],
    "metadata": {"user_id": "user-7"},
    "output_config": {"effort": "low"},
    "service_tier": "standard_only",
    "speed": "fast",
    "stop_sequences": ["END"],
    "stream": True,
    "system": "Be brief.",
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "thread": {"id": "thread_1"},
    "tool_choice": {"type": "any"},
    "tools": [ANTHROPIC_WEATHER_TOOL],
    "user_profile_id": "profile_1",
    "workspace_id": "workspace_1",
    # Older references, and the clients written against them:
    "output_format": {"type": "json_schema", "schema": WEATHER_SCHEMA},
    "temperature": 0.5,
    "top_k": 5,
    "top_p": 0.5,
}

#: Fields the gateway itself carries out, seen in the response rather than upstream: the usage
#: chunk at the end of an OpenAI stream. Sent with ``stream: true`` on both sides.
ANSWERED_BY_THE_GATEWAY = {"stream_options"}
#: Every request has these; they are what the base request is made of.
REQUIRED = {"openai": {"model", "messages"}, "anthropic": {"model", "messages"}}
#: (protocol, provider type) -> fields accepted and deliberately not sent, each documented as
#: such in docs/architecture.md: end-user ids for OpenAI's abuse monitoring, which Gemini has no
#: field for (the record names the caller); caching hints, since Gemini caches repeated prefixes
#: by itself; and the standard service tier (the tables ask for ``default`` and
#: ``standard_only``), which is what Gemini serves a request that names none. The walk checks
#: that these reach the provider as nothing at all (the request is the one without them), so
#: that one mapped later is taken off this list.
NOT_SENT = {
    **{
        ("openai", google): {"user", "safety_identifier", "prompt_cache_key", "service_tier"}
        for google in ("gemini", "vertex")
    },
    **{
        ("anthropic", google): {"metadata", "cache_control", "service_tier"}
        for google in ("gemini", "vertex")
    },
}
ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def fields_gateway(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The standard gateway, with a key for the OpenAI-compatible account (the mock wants one),
    and a Gemini, a Vertex AI and a Bedrock account, so that every provider type answers."""
    tmp = tmp_path_factory.mktemp("fields")

    config = config_with(
        mock_provider.url, lambda c: add_every_provider_type(c, mock_provider.url, tmp)
    )
    yield from serve_gateway(config, tmp)


#: (protocol, provider type, stream) -> the response and upstream body of the base request.
_BASELINES: dict[tuple[str, str, bool], tuple[str, dict[str, Any] | None]] = {}


def test_the_tables_cover_the_sdks() -> None:
    assert set(CompletionCreateParamsBase.__annotations__) - REQUIRED["openai"] <= set(
        OPENAI_FIELDS
    )
    assert set(MessageCreateParamsBase.__annotations__) - REQUIRED["anthropic"] - {
        "betas"  # a header (anthropic-beta), not a body field
    } <= set(ANTHROPIC_FIELDS)


def base_body(protocol: str, model: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if protocol == "anthropic":
        return {"model": model, "max_tokens": 50, "messages": messages}
    return {"model": model, "messages": messages}


def send(gateway: GatewayProcess, protocol: str, body: dict[str, Any]) -> httpx.Response:
    path = "/v1/messages" if protocol == "anthropic" else "/v1/chat/completions"
    return httpx.post(f"{gateway.url}{path}", json=body, headers=gateway.headers, timeout=10)


def upstream_request(mock: MockProvider, path: str) -> dict[str, Any] | None:
    """The method (path and query) and body of the one request the provider got, if any."""
    sent = [r for r in mock.requests() if path in r["path"]]
    assert len(sent) <= 1
    return {key: sent[0][key] for key in ("path", "query", "body")} if sent else None


def cases() -> list[Any]:
    tables = {"openai": OPENAI_FIELDS, "anthropic": ANTHROPIC_FIELDS}
    return [
        pytest.param(protocol, provider, field, id=f"{protocol}-{field}-to-{provider}")
        for protocol, table in tables.items()
        for field in table
        for provider in PROVIDER_TYPES
    ]


@pytest.mark.parametrize(("protocol", "provider", "field"), cases())
def test_every_field_is_mapped_or_refused(
    fields_gateway: GatewayProcess,
    mock_provider: MockProvider,
    protocol: str,
    provider: str,
    field: str,
) -> None:
    gateway = fields_gateway
    model, path = PROVIDER_TYPES[provider]
    value = (OPENAI_FIELDS if protocol == "openai" else ANTHROPIC_FIELDS)[field]
    base = base_body(protocol, model)
    stream = field in ANSWERED_BY_THE_GATEWAY
    if stream:
        base["stream"] = True
    key = (protocol, provider, stream)
    if key not in _BASELINES:
        mock_provider.clear()
        answer = send(gateway, protocol, base)
        assert answer.status_code == 200, answer.text
        _BASELINES[key] = (answer.text, upstream_request(mock_provider, path))
    without, baseline = _BASELINES[key]
    mock_provider.clear()
    response = send(gateway, protocol, {**base, field: value})
    sent = upstream_request(mock_provider, path)
    if sent is None:  # refused at the gateway: a 400 in the caller's protocol, naming the field
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        if protocol == "openai":
            assert error["param"] == field or error["param"].startswith(field + "."), error
        assert field in error["message"], error
    elif field in ANSWERED_BY_THE_GATEWAY:
        assert '"choices":[]' in response.text and '"choices":[]' not in without
    elif field in NOT_SENT.get((protocol, provider), ()):
        assert response.status_code == 200, response.text
        assert sent == baseline, f"{field} now reaches {provider}: take it off NOT_SENT"
    else:
        assert sent != baseline, f"{field} reached {provider} as nothing"


def test_what_is_not_sent_is_documented() -> None:
    """Each field the walk lets through unsent is named in the provider's table, which says why."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("| OpenAI chat | Gemini |") : text.index("Vertex's access token")]
    for (_protocol, _provider), fields in NOT_SENT.items():
        for field in fields:
            documented = field if field != "metadata" else "metadata.user_id"
            assert f"`{documented}`" in table and "not sent" in table, field

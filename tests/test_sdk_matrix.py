"""The Anthropic SDK's calls that agent-style clients make on every turn, against every provider
type on one gateway: ``messages.count_tokens`` (exact from Anthropic accounts, the gateway's
estimate marked ``x-custos-estimated`` elsewhere) and ``beta.messages.create`` with betas (passed
on to Anthropic accounts only: a translated target has no use for them and still answers).
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from custos.mock import PER_MESSAGE_TOKENS, count_tokens
from tests.conftest import GatewayProcess, MockProvider, serve_gateway
from tests.sdk_helpers import (
    TRANSLATED_MODELS,
    add_every_provider_type,
    assert_text_reply,
    config_with,
    last_request,
    user,
)

#: One model of each provider type, by type.
EVERY_TYPE = {
    "openai": "openai-main/gpt-5.5",
    "azure_openai": "azure-eu/gpt-5.5",
    "anthropic": "claude-main/claude-sonnet-4.5",
    "openai_compatible": "local-vllm/llama-3.1-8b",
    **TRANSLATED_MODELS,
}
PROMPT = "How many tokens is this?"
BETA = "interleaved-thinking-2025-05-14"


@pytest.fixture(scope="module")
def claude(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[anthropic.Anthropic]:
    tmp = tmp_path_factory.mktemp("sdk-matrix")
    config = config_with(
        mock_provider.url, lambda c: add_every_provider_type(c, mock_provider.url, tmp)
    )
    for gateway in serve_gateway(config, tmp):
        yield _client(gateway)


def _client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)


@pytest.mark.parametrize(("kind", "model"), EVERY_TYPE.items(), ids=list(EVERY_TYPE))
def test_count_tokens_on_every_provider_type(
    claude: anthropic.Anthropic, mock_provider: MockProvider, kind: str, model: str
) -> None:
    raw = claude.messages.with_raw_response.count_tokens(model=model, messages=user(PROMPT))
    counted = raw.parse().input_tokens
    if kind == "anthropic":  # the account's own count: the mock's formula, not an estimate
        assert "x-custos-estimated" not in raw.headers
        assert counted == PER_MESSAGE_TOKENS + count_tokens(PROMPT)
        assert last_request(mock_provider, "/v1/messages/count_tokens")["body"]["model"] == (
            "claude-sonnet-4.5"
        )
    else:
        assert raw.headers["x-custos-estimated"] == "true"
        assert counted > 0
    assert raw.headers["x-custos-served-by"] == model


@pytest.mark.parametrize(("kind", "model"), EVERY_TYPE.items(), ids=list(EVERY_TYPE))
def test_beta_messages_with_betas_on_every_provider_type(
    claude: anthropic.Anthropic, mock_provider: MockProvider, kind: str, model: str
) -> None:
    mock_provider.clear()
    raw = claude.beta.messages.with_raw_response.create(
        model=model, max_tokens=64, messages=user(PROMPT), betas=[BETA]
    )
    assert_text_reply(raw.parse().content[0].text, PROMPT)
    assert raw.headers["x-custos-served-by"] == model
    if kind == "anthropic":
        sent = last_request(mock_provider, "/v1/messages")
        assert BETA in sent["headers"].get("anthropic-beta", "")
    else:  # no provider request of a translated target carries an Anthropic header
        assert all(
            "anthropic-beta" not in request["headers"] for request in mock_provider.requests()
        )

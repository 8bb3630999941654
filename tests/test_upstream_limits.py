"""A provider's body is read within a bound: an error body for its message only, a success body up
to the account's ``max_response_bytes``, past which the caller gets a clear 502.

The provider here is a small ASGI app that answers with a body of any size, generated as it is
sent, so a 100 MB answer costs the test little; the gateway's peak memory is read from /proc.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import GatewayProcess, MockProvider
from tests.sdk_helpers import ASGIThread, config_with

HUGE = 100 * 1024 * 1024
RESPONSE_LIMIT = 1024 * 1024
#: What one call may add to the gateway's RSS; reading a 100 MB body whole added over 200 MB.
RSS_GROWTH_BOUND = 30 * 1024 * 1024


class HugeBodies:
    """POST .../chat/completions answers ``HUGE`` bytes: a 500 for the model ``error``, a 200
    (one JSON object with a long content) for ``success``, a 200 of exactly ``RESPONSE_LIMIT``
    bytes for ``limit``."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        body = b""
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        model = "error" if b'"error"' in body else "limit" if b'"limit"' in body else "success"
        status = 500 if model == "error" else 200
        size = RESPONSE_LIMIT if model == "limit" else HUGE
        head, tail = _reply(model)
        headers = [(b"content-type", b"application/json")]
        if model != "success":  # the success body is chunked: no length declared up front
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        left = size - len(head) - len(tail)
        while left > 0:
            piece = min(left, 1 << 20)
            await send({"type": "http.response.body", "body": b"x" * piece, "more_body": True})
            left -= piece
        await send({"type": "http.response.body", "body": tail})


def _reply(model: str) -> tuple[bytes, bytes]:
    if model == "error":
        return b'{"error": {"message": "', b'"}}'
    usage = b'"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}'
    head = (
        b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", '
        + usage
        + b', "choices": [{"index": 0, "finish_reason": "stop", '
        b'"message": {"role": "assistant", "content": "'
    )
    return head, b'"}}]}'


@pytest.fixture(scope="module")
def huge(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    provider = ASGIThread(HugeBodies())

    def point_vllm_at_it(config: dict[str, Any]) -> None:
        vllm = config["providers"]["local-vllm"]
        vllm["base_url"] = f"{provider.url}/v1"
        vllm["max_response_bytes"] = RESPONSE_LIMIT
        vllm["models"] = {name: {"input_per_mtok": 1} for name in ("error", "success", "limit")}

    process = GatewayProcess(
        config_with(mock_provider.url, point_vllm_at_it), tmp_path_factory.mktemp("huge")
    )
    yield process
    process.stop()
    provider.stop()


def peak_rss_bytes(pid: int) -> int:
    """The most the process has held (VmHWM): a body read whole and freed still shows here."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if "VmHWM" in line)


def chat(gateway: GatewayProcess, model: str) -> openai.APIStatusError | Any:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=60
    ) as sdk:
        try:
            return sdk.chat.completions.create(
                model=f"local-vllm/{model}", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIStatusError as exc:
            return exc


@pytest.mark.parametrize(
    ("model", "code"), [("error", "upstream_error"), ("success", "upstream_response_too_large")]
)
def test_a_huge_provider_body_is_not_read_whole(huge, model: str, code: str) -> None:
    before = peak_rss_bytes(huge.process.pid)
    failed = chat(huge, model)
    after = peak_rss_bytes(huge.process.pid)
    assert isinstance(failed, openai.APIStatusError)
    assert failed.status_code == 502
    assert failed.body["code"] == code, failed.body
    assert "local-vllm" in failed.body["message"]
    assert after - before < RSS_GROWTH_BOUND, (before, after)


def test_a_body_of_exactly_the_limit_is_served(huge) -> None:
    completion = chat(huge, "limit")
    assert not isinstance(completion, openai.APIStatusError), completion
    assert completion.choices[0].message.content.startswith("xxx")

"""The mock provider's Bedrock routes on their own: the SigV4 check, AWS's error shape and the
knobs, spoken to with the adapter's signed requests over httpx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from custos.config.schema import ProviderSettings
from custos.mock import serve_in_background
from custos.mock.server import BackgroundMock
from custos.providers.base import ProviderCall, UpstreamMalformed
from custos.providers.bedrock import BedrockAdapter
from custos.providers.eventstream import EventStreamDecoder
from custos.providers.registry import adapter_for

SECRET = "mock-secret-for-bedrock"
BODY = {"model": "aws/m", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello mock"}]}


@pytest.fixture(scope="module")
def mock() -> Iterator[BackgroundMock]:
    server = serve_in_background(api_key=SECRET)
    yield server
    server.stop()


def signed(mock: BackgroundMock, model: str, *, stream: bool = False, secret: str = SECRET):
    settings = ProviderSettings.model_validate(
        {
            "type": "bedrock",
            "base_url": mock.url,
            "region": "us-west-2",
            "access_key_id": "AKIDMOCK",
            "secret_access_key": secret,
            "models": {"m": {"input_per_mtok": 1}},
        }
    )
    adapter = adapter_for("aws", settings)
    assert isinstance(adapter, BedrockAdapter)
    body = {
        "model": "aws/m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello mock"}],
    }
    call = ProviderCall(
        "anthropic", "messages", body, orjson.dumps(body), "aws/m", model, stream, True
    )
    return adapter.build_request(call)


def test_a_signed_converse_request_is_answered(mock):
    request = signed(mock, "anthropic.claude-v1:0")
    response = httpx.post(request.url, headers=request.headers, content=request.body)
    assert response.status_code == 200
    data = response.json()
    assert data["stopReason"] == "end_turn"
    assert data["output"]["message"]["content"][0]["text"].startswith("Mock reply to Hello mock")
    assert data["usage"] == {"inputTokens": 6, "outputTokens": 20, "totalTokens": 26}


@pytest.mark.parametrize(
    "spoil",
    [
        lambda r: (r.headers, b'{"messages": []}'),  # the body changed after signing
        lambda r: ({k: v for k, v in r.headers.items() if k != "Authorization"}, r.body),
        lambda r: ({**r.headers, "X-Amz-Date": "20200101T000000Z"}, r.body),
        lambda r: ({**r.headers, "content-type": "text/plain"}, r.body),  # a signed header
    ],
)
def test_a_request_not_signed_with_the_secret_is_refused(mock, spoil):
    request = signed(mock, "anthropic.claude-v1:0")
    headers, body = spoil(request)
    response = httpx.post(request.url, headers=headers, content=body)
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert set(response.json()) == {"message"}


def test_the_wrong_secret_is_refused(mock):
    request = signed(mock, "anthropic.claude-v1:0", secret="wrong")
    response = httpx.post(request.url, headers=request.headers, content=request.body)
    assert response.status_code == 403
    assert "signature we calculated does not match" in response.json()["message"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "ValidationException"),
        (408, "ModelTimeoutException"),
        (429, "ThrottlingException"),
        (503, "ServiceUnavailableException"),
    ],
)
def test_errors_in_aws_shape(mock, status, kind):
    request = signed(mock, f"anthropic.claude-v1:0+status={status}")
    response = httpx.post(request.url, headers=request.headers, content=request.body)
    assert response.status_code == status
    assert response.headers["x-amzn-errortype"] == kind
    assert isinstance(response.json()["message"], str)


def test_a_stream_is_aws_event_stream_framing(mock):
    request = signed(mock, "anthropic.claude-v1:0+chunks=4+cache_write_tokens=2", stream=True)
    response = httpx.post(request.url, headers=request.headers, content=request.body)
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    events = EventStreamDecoder().feed(response.content)
    assert [e.event for e in events] == [
        "messageStart",
        *["contentBlockDelta"] * 4,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert orjson.loads(events[-1].data)["usage"] == {
        "inputTokens": 4,
        "outputTokens": 20,
        "totalTokens": 26,
        "cacheReadInputTokens": 0,
        "cacheWriteInputTokens": 2,
    }


def test_knobs_corrupt_cut_and_interrupt_the_stream(mock):
    request = signed(mock, "anthropic.claude-v1:0+malformed", stream=True)
    content = httpx.post(request.url, headers=request.headers, content=request.body).content
    with pytest.raises(UpstreamMalformed):
        EventStreamDecoder().feed(content)

    request = signed(mock, "anthropic.claude-v1:0+stream_exception", stream=True)
    content = httpx.post(request.url, headers=request.headers, content=request.body).content
    events = EventStreamDecoder().feed(content)
    assert [e.event for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "exception:throttlingException",
    ]

    request = signed(mock, "anthropic.claude-v1:0+drop_after=2", stream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(request.url, headers=request.headers, content=request.body)

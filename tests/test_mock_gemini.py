"""The mock provider's Gemini routes (AI Studio and Vertex AI) and its token endpoint, over real
HTTP: authentication, the published token formula, streams, and the knobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from custos.mock import (
    PER_MESSAGE_TOKENS,
    BackgroundMock,
    count_tokens,
    serve_in_background,
)
from custos.mock.gemini_wire import prompt_tokens_gemini
from custos.providers.sse import SSEDecoder

KEY = "mock-key"
BODY: dict[str, Any] = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [{"role": "user", "parts": [{"text": "Hello, how are you today?"}]}],
}
#: Two contents (the system instruction counts as one) of 4 tokens each plus their texts.
BODY_TOKENS = (
    2 * PER_MESSAGE_TOKENS + count_tokens("Be brief.") + count_tokens("Hello, how are you today?")
)


@pytest.fixture(scope="module")
def mock() -> Iterator[BackgroundMock]:
    server = serve_in_background()
    yield server
    server.stop()


def generate(
    mock: BackgroundMock, model: str, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{mock.url}/v1beta/models/{model}:generateContent",
        headers={"x-goog-api-key": KEY, **headers},
        json=body or BODY,
    )


def stream_events(response: httpx.Response) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    events = decoder.feed(response.content) + decoder.close()
    return [orjson.loads(e.data) for e in events]


def test_generate_content_reply_and_usage(mock: BackgroundMock) -> None:
    response = generate(mock, "gemini-x")
    assert response.status_code == 200
    data = response.json()
    candidate = data["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    text = candidate["content"]["parts"][0]["text"]
    assert text.startswith("Mock reply to Hello how are you today")
    assert data["usageMetadata"] == {
        "promptTokenCount": BODY_TOKENS,
        "candidatesTokenCount": 20,
        "totalTokenCount": BODY_TOKENS + 20,
    }
    assert prompt_tokens_gemini(BODY) == BODY_TOKENS
    assert data["modelVersion"] == "gemini-x" and data["responseId"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"x-goog-api-key": "wrong"}, 400), ({"x-goog-api-key": ""}, 400)],
)
def test_the_api_key_header_is_checked(mock: BackgroundMock, headers, status) -> None:
    response = generate(mock, "gemini-x", **headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


def test_a_key_in_the_url_is_not_accepted(mock: BackgroundMock) -> None:
    response = httpx.post(f"{mock.url}/v1beta/models/gemini-x:generateContent?key={KEY}", json=BODY)
    assert response.status_code == 400


def test_stream_needs_alt_sse_and_ends_with_the_finish_reason(mock: BackgroundMock) -> None:
    url = f"{mock.url}/v1beta/models/gemini-x+chunks=4:streamGenerateContent"
    headers = {"x-goog-api-key": KEY}
    assert httpx.post(url, headers=headers, json=BODY).status_code == 400
    response = httpx.post(url + "?alt=sse", headers=headers, json=BODY)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"\r\n\r\n" in response.content
    events = stream_events(response)
    assert len(events) == 4
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert len(text.split(" ")) == 20
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 20


def test_function_calling(mock: BackgroundMock) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        **BODY,
        "tools": [{"functionDeclarations": [{"name": "w", "parametersJsonSchema": schema}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["w"]}},
    }
    part = generate(mock, "gemini-x", body).json()["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "w", "args": {"city": "mock"}}}
    answered = {
        "contents": [
            *body["contents"],
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "w", "response": {"r": 1}}}]},
        ],
        "tools": body["tools"],
    }
    data = generate(mock, "gemini-x", answered).json()
    assert data["candidates"][0]["content"]["parts"][0]["text"].startswith(
        "Mock reply to tool result"
    )
    expected = (
        3 * PER_MESSAGE_TOKENS
        + count_tokens("Hello, how are you today?")
        + count_tokens("w")
        + count_tokens('{"city":"mock"}')
        + count_tokens("w")
        + count_tokens('{"r":1}')
    )
    assert data["usageMetadata"]["promptTokenCount"] == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (503, "UNAVAILABLE")],
)
def test_injected_errors_are_googles(mock: BackgroundMock, status: int, kind: str) -> None:
    response = generate(mock, f"gemini-x+status={status}")
    assert response.status_code == status
    assert response.json()["error"]["status"] == kind
    if status != 500:
        assert response.headers["retry-after"] == "1"


def test_usage_knobs_and_a_blocked_prompt(mock: BackgroundMock) -> None:
    usage = generate(mock, "gemini-x+cached_tokens=5+thoughts_tokens=7").json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == 5
    assert usage["thoughtsTokenCount"] == 7
    assert usage["totalTokenCount"] == BODY_TOKENS + 20 + 7
    blocked = generate(mock, "gemini-x+blocked").json()
    assert blocked["promptFeedback"] == {"blockReason": "SAFETY"}
    assert "candidates" not in blocked


def test_a_dropped_stream_has_no_finish_reason(mock: BackgroundMock) -> None:
    url = f"{mock.url}/v1beta/models/gemini-x+drop_after=2:streamGenerateContent?alt=sse"
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, headers={"x-goog-api-key": KEY}, json=BODY) as response,
    ):
        response.read()


# -- Vertex AI and the token endpoint ---------------------------------------------------------


def assertion(token_url: str, **claims: Any) -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    payload = {
        "iss": "sa@p.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": token_url,
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return jwt.encode(payload, private, algorithm="RS256")


def vertex_url(mock: BackgroundMock) -> str:
    return (
        f"{mock.url}/v1/projects/p/locations/europe-west4/publishers/google/models/"
        "gemini-x:generateContent"
    )


def test_vertex_needs_a_token_from_the_token_endpoint(mock: BackgroundMock) -> None:
    assert httpx.post(vertex_url(mock), json=BODY).status_code == 401
    token_url = f"{mock.url}/token?expires_in=1"
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion(token_url),
    }
    issued = httpx.post(token_url, data=form)
    assert issued.status_code == 200
    token = issued.json()
    assert token["expires_in"] == 1 and token["token_type"] == "Bearer"
    headers = {"authorization": f"Bearer {token['access_token']}"}
    assert httpx.post(vertex_url(mock), headers=headers, json=BODY).status_code == 200
    time.sleep(1.1)
    assert httpx.post(vertex_url(mock), headers=headers, json=BODY).status_code == 401


@pytest.mark.parametrize(
    ("grant", "claims", "message"),
    [
        ("password", {}, "unsupported grant_type"),
        (None, {"aud": "https://elsewhere/token"}, "audience"),
        (None, {"exp": int(time.time()) + 7200}, "more than an hour"),
    ],
)
def test_the_token_endpoint_checks_the_grant(mock: BackgroundMock, grant, claims, message) -> None:
    token_url = f"{mock.url}/token"
    form = {
        "grant_type": grant or "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion(token_url, **claims),
    }
    response = httpx.post(token_url, data=form)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_the_token_endpoint_takes_knobs_from_its_query(mock: BackgroundMock) -> None:
    response = httpx.post(f"{mock.url}/token?status=503", data={})
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"

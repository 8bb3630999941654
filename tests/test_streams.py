"""Streams that end early: a client that goes away, and a provider that drops the connection.

A client leaving mid-stream must cancel the upstream request (the mock counts it as
``streams_cancelled``), the call must still be settled, ``custos_active_streams`` must return to 0,
and the gateway must keep serving. A provider that drops mid-stream must end the client's stream
with an error event in the client's protocol (OpenAI ``data: {"error": ...}``, Anthropic
``event: error``), which the official SDKs raise as errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import GatewayProcess, MockProvider, standard_config

#: 200 words, one every 50 ms: a 10 s stream, so a cancelled one cannot pass for a finished one.
LONG = "+chunks=200+chunk_delay_ms=50+words=200"
LONG_GPT = f"openai-main/gpt-5.5{LONG}"
LONG_AZURE = f"azure-eu/gpt-5.5{LONG}"
LONG_CLAUDE = f"claude-main/claude-sonnet-4.5{LONG}"
DROP_GPT = "openai-main/gpt-5.5+drop_after=3"
DROP_CLAUDE = "claude-main/claude-sonnet-4.5+drop_after=3"
CANCEL_WITHIN_S = 2.0

_OPENAI_EXTRAS = f"      gpt-5.5{LONG}: {{input_per_mtok: 1, output_per_mtok: 1}}\n"
_CLAUDE_EXTRAS = (
    f"      claude-sonnet-4.5{LONG}: {{input_per_mtok: 3, output_per_mtok: 15}}\n"
    "      claude-sonnet-4.5+drop_after=3: {input_per_mtok: 3, output_per_mtok: 15}\n"
)
_AZURE_EXTRAS = (
    f"      gpt-5.5{LONG}: {{input_per_mtok: 2.5, output_per_mtok: 20.0}}\n"
    "      gpt-5.5+drop_after=3: {input_per_mtok: 2.5, output_per_mtok: 20.0}\n"
)


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """standard_config plus long and dropping streams on the Anthropic and Azure accounts."""
    text = standard_config(mock_provider.url)
    text = text.replace(
        "      text-embedding-3-small: {input",
        _OPENAI_EXTRAS + "      text-embedding-3-small: {input",
    )
    text = text.replace(
        "      claude-sonnet-4.5+no_usage:", _CLAUDE_EXTRAS + "      claude-sonnet-4.5+no_usage:"
    )
    text = text.replace(
        "      text-embedding-3-small: {deployment",
        _AZURE_EXTRAS + "      text-embedding-3-small: {deployment",
    )
    assert text.count("drop_after=3") == 3 and text.count(LONG) == 3
    process = GatewayProcess(text, tmp_path_factory.mktemp("streams"))
    yield process
    process.stop()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until ``condition`` holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def body(path: str, model: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": True,
        "max_tokens": 1000,
    }
    if path == "/v1/chat/completions":
        payload["stream_options"] = {"include_usage": True}
    return payload


class Watch:
    """Counters before a stream, to compare with after it (the suites run sequentially)."""

    def __init__(self, gateway: GatewayProcess, mock: MockProvider, code: str) -> None:
        self.gateway, self.mock, self.code = gateway, mock, code
        self.mock_before = mock.stats()
        self.errors_before = self.errors()

    def errors(self) -> float:
        return self.gateway.metric("custos_errors_total", code=self.code)

    def mock_delta(self, name: str) -> int:
        return self.mock.stats()[name] - self.mock_before[name]

    def settled(self) -> bool:
        return self.errors() == self.errors_before + 1

    def assert_gateway_healthy(self) -> None:
        wait_until(
            lambda: self.gateway.metric("custos_active_streams") == 0, 5, "active streams back to 0"
        )
        assert self.gateway.process.poll() is None, self.gateway.log()
        assert httpx.get(f"{self.gateway.url}/healthz").status_code == 200
        response = httpx.post(
            f"{self.gateway.base_url}/chat/completions",
            headers=self.gateway.headers,
            json={"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200, response.text
        assert "Traceback" not in self.gateway.log(), self.gateway.log()


# -- a client that goes away ---------------------------------------------------------------------

DISCONNECTS = [
    (
        "/v1/chat/completions",
        "openai-main/gpt-5.5+chunks=200+chunk_delay_ms=50",
    ),  # standard_config's
    ("/v1/chat/completions", LONG_GPT),
    ("/v1/chat/completions", LONG_AZURE),
    ("/v1/messages", LONG_CLAUDE),
    ("/v1/chat/completions", LONG_CLAUDE),  # translated both ways
    ("/v1/messages", LONG_GPT),
]


@pytest.mark.parametrize(("path", "model"), DISCONNECTS)
def test_client_disconnect_mid_stream_cancels_the_upstream(gw, mock_provider, path, model):
    watch = Watch(gw, mock_provider, "client_disconnected")
    with (
        httpx.Client(base_url=gw.url, headers=gw.headers, timeout=10) as client,
        client.stream("POST", path, json=body(path, model)) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()  # kept referenced: dropping it would close the stream
        data = 0
        while data < 5:
            data += next(lines).startswith("data: ")
        assert gw.metric("custos_active_streams") == 1
        assert mock_provider.stats()["active_streams"] == 1
    # leaving the block closed the response and its connection, long before the end
    took = wait_until(
        lambda: watch.mock_delta("streams_cancelled") == 1, CANCEL_WITHIN_S, "upstream cancelled"
    )
    assert took < CANCEL_WITHIN_S
    assert watch.mock_delta("streams_started") == 1
    assert watch.mock_delta("streams_completed") == 0
    wait_until(lambda: mock_provider.stats()["active_streams"] == 0, 2, "the mock's stream to end")
    wait_until(watch.settled, 2, "the call to be settled as client_disconnected")
    watch.assert_gateway_healthy()


def test_many_clients_disconnecting_at_once(gw, mock_provider):
    """Twenty streams in flight, all abandoned together: every upstream request is cancelled."""
    watch = Watch(gw, mock_provider, "client_disconnected")
    count = 20

    async def abandon(client: httpx.AsyncClient, index: int, ready: asyncio.Barrier) -> None:
        path, model = DISCONNECTS[index % len(DISCONNECTS)]
        async with client.stream("POST", path, json=body(path, model)) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break
            await ready.wait()  # every stream is live before any leaves

    async def main() -> None:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=gw.url, headers=gw.headers, timeout=10, limits=limits
        ) as client:
            ready = asyncio.Barrier(count)
            await asyncio.gather(*(abandon(client, i, ready) for i in range(count)))

    asyncio.run(main())
    wait_until(
        lambda: watch.mock_delta("streams_cancelled") == count, CANCEL_WITHIN_S * 2, "all cancelled"
    )
    assert watch.mock_delta("streams_completed") == 0
    wait_until(lambda: watch.errors() == watch.errors_before + count, 2, "all settled")
    watch.assert_gateway_healthy()


def test_openai_sdk_breaking_out_of_a_stream_cancels_the_upstream(gw, mock_provider):
    watch = Watch(gw, mock_provider, "client_disconnected")
    with openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=LONG_GPT,
            messages=[{"role": "user", "content": "tell me a long story"}],
            stream=True,
        )
        texts = []
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content if chunk.choices else None)
            if len(texts) == 4:
                break
        stream.close()
    assert texts[1:] == ["Mock", " reply", " to"], texts
    wait_until(
        lambda: watch.mock_delta("streams_cancelled") == 1, CANCEL_WITHIN_S, "upstream cancelled"
    )
    assert watch.mock_delta("streams_completed") == 0
    wait_until(watch.settled, 2, "the call to be settled")
    watch.assert_gateway_healthy()


def test_anthropic_sdk_breaking_out_of_a_stream_cancels_the_upstream(gw, mock_provider):
    watch = Watch(gw, mock_provider, "client_disconnected")
    messages = [{"role": "user", "content": "tell me a long story"}]
    pieces = []
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0) as client,
        client.messages.stream(model=LONG_CLAUDE, max_tokens=1000, messages=messages) as stream,
    ):
        for text in stream.text_stream:
            pieces.append(text)
            if len(pieces) == 3:
                break
    assert "".join(pieces).startswith("Mock reply"), pieces
    wait_until(
        lambda: watch.mock_delta("streams_cancelled") == 1, CANCEL_WITHIN_S, "upstream cancelled"
    )
    wait_until(watch.settled, 2, "the call to be settled")
    watch.assert_gateway_healthy()


# -- a provider that drops the connection --------------------------------------------------------

DROPS = [
    ("/v1/chat/completions", DROP_GPT, "openai-main"),
    ("/v1/chat/completions", "azure-eu/gpt-5.5+drop_after=3", "azure-eu"),
    ("/v1/chat/completions", DROP_CLAUDE, "claude-main"),
    ("/v1/messages", DROP_CLAUDE, "claude-main"),
    ("/v1/messages", DROP_GPT, "openai-main"),
]


@pytest.mark.parametrize(("path", "model", "account"), DROPS)
def test_upstream_drop_mid_stream_ends_with_an_error_event(gw, mock_provider, path, model, account):
    watch = Watch(gw, mock_provider, "upstream_stream_broken")
    response = httpx.post(f"{gw.url}{path}", headers=gw.headers, json=body(path, model), timeout=10)
    assert response.status_code == 200  # the status went out before the drop
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "x-custos-request-id" in response.headers
    text = response.text
    assert "Traceback" not in text and "Exception" not in text
    events = [e for e in text.split("\n\n") if e.strip()]
    if path == "/v1/chat/completions":
        assert all(e.startswith("data: ") for e in events), events
        payloads = [orjson.loads(e[len("data: ") :]) for e in events]
        assert "data: [DONE]" not in text  # the stream did not finish
        first = next(p for p in payloads if p.get("choices"))  # (Azure leads with choices: [])
        assert first["choices"][0]["delta"]["role"] == "assistant"
        errors = [p for p in payloads if "error" in p]
        assert errors == [payloads[-1]], payloads  # one error, and it is the last event
        error = payloads[-1]["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "upstream_stream_broken" and error["type"] == "api_error"
        assert account in error["message"]
    else:
        names = [e.split("\n", 1)[0] for e in events]
        assert names[0] == "event: message_start", names
        assert names[-1] == "event: error" and names.count("event: error") == 1, names
        assert "event: message_stop" not in names
        error = orjson.loads(events[-1].split("\n", 1)[1][len("data: ") :])
        assert error["type"] == "error" and error["error"]["type"] == "api_error", error
        assert account in error["error"]["message"]
    assert watch.mock_delta("streams_dropped") == 1
    wait_until(watch.settled, 2, "the call to be settled as upstream_stream_broken")
    watch.assert_gateway_healthy()


def test_openai_sdk_raises_on_a_dropped_stream(gw, mock_provider):
    watch = Watch(gw, mock_provider, "upstream_stream_broken")
    received = []
    with openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=DROP_GPT, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="openai-main ended the stream early"):
            for chunk in stream:
                received.append(chunk)
    assert len(received) == 3  # what arrived before the drop was delivered
    wait_until(watch.settled, 2, "the call to be settled")
    watch.assert_gateway_healthy()


def test_anthropic_sdk_raises_on_a_dropped_stream(gw, mock_provider):
    watch = Watch(gw, mock_provider, "upstream_stream_broken")
    messages = [{"role": "user", "content": "hi"}]
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError, match="claude-main ended the stream early"),
        client.messages.stream(model=DROP_CLAUDE, max_tokens=100, messages=messages) as stream,
    ):
        for _ in stream:
            pass
    wait_until(watch.settled, 2, "the call to be settled")
    watch.assert_gateway_healthy()

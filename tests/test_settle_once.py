"""Every way a request can end settles it exactly once and writes its one ``llm.call`` record.

The gateway runs in this process (its ASGI app driven directly), so that a client can leave at
exact points: before the stream's first chunk, mid-stream, or between the answer and the first
read (a stream that is never iterated). A counting stage at the head of the chain (it settles
last) sees every settlement; the store is read for the records.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import custos.gateway
import custos.policy.stages
from custos.context import RequestContext
from custos.errors import GatewayError
from custos.gateway import Gateway
from custos.http.app import GatewayApp, fill_request
from custos.runtime import Runtime
from tests.audit_helpers import call_records
from tests.conftest import MOCK_KEY, TOKEN_KEY, MockProvider, issue_admin_token, standard_config

CHAT = [{"role": "user", "content": "hello there"}]
LONG = "openai-main/gpt-5.5+chunks=200+chunk_delay_ms=50"


class SettleCounter:
    """First in the chain, so it settles after every other stage: counts settlements."""

    name = "gateway"

    def __init__(self) -> None:
        self.settled: Counter[str] = Counter()
        self.outcomes: dict[str, tuple[int, str | None, str | None]] = {}

    def settle(self, ctx: RequestContext) -> None:
        self.settled[ctx.request_id] += 1
        self.outcomes[ctx.request_id] = (ctx.status, ctx.error_code, ctx.stopped_at)


class CountingGateway(Gateway):
    counter = SettleCounter()

    def build_chain(self, runtime: Runtime) -> list[object]:
        return [self.counter, *super().build_chain(runtime)]


def _config(mock_url: str, tmp: Path) -> str:
    text = standard_config(mock_url)
    text = text.replace("sqlite:///./custos.db", f"sqlite:///{tmp / 'custos.db'}")
    text = text.replace('models: ["*"]', 'models: ["openai-main/*", "claude-main/*"]')
    return text + textwrap.dedent(
        f"""\
        audit:
          spool: {{path: {tmp / "spool"}}}
        budgets:
          - id: poor
            when: {{metadata: {{project: poor}}}}
            limit_usd: 0.000001
            period: month
        rate_limits:
          - id: one-a-minute
            when: {{metadata: {{project: limited}}}}
            limit_to: 1
            unit: requests_per_minute
        """
    )


@pytest.fixture(scope="module")
def setup(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("settle")
    os.environ.setdefault("CUSTOS_TEST_MOCK_KEY", MOCK_KEY)
    os.environ.setdefault("CUSTOS_TEST_TOKEN_KEY", TOKEN_KEY)
    store_url = f"sqlite:///{tmp / 'custos.db'}"
    token = issue_admin_token(store_url)
    path = tmp / "custos.yaml"
    path.write_text(_config(mock_provider.url, tmp))
    return {"path": path, "token": token, "store": store_url}


@pytest.fixture(scope="module")
async def gateway(setup: dict[str, Any]) -> AsyncIterator[CountingGateway]:
    tune = custos.gateway.tune_collector
    custos.gateway.tune_collector = lambda: None  # the test process's collector stays as is
    gw = CountingGateway.from_file(setup["path"], watch=False)
    try:
        await gw.start()
        yield gw
        await gw.stop()
    finally:
        custos.gateway.tune_collector = tune


class Client:
    """One request through the ASGI app, as a client that may leave at a chosen moment."""

    def __init__(self, app: GatewayApp, token: str) -> None:
        self.app, self.token = app, token

    async def post(
        self,
        path: str,
        body: bytes | dict[str, Any],
        *,
        token: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        leave_after_chunks: int | None = None,
    ) -> list[dict[str, Any]]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        sent: list[dict[str, Any]] = []
        chunks = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            if leave_after_chunks is None:
                await asyncio.Event().wait()  # stays until the response is sent
            elif leave_after_chunks > 0:
                await chunks.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            bodies = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
            if leave_after_chunks and len(bodies) >= leave_after_chunks:
                chunks.set()

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "query_string": b"",
            "client": ("127.0.0.1", 5555),
            "headers": [
                (b"authorization", f"Bearer {token or self.token}".encode()),
                (b"content-type", b"application/json"),
                *headers,
            ],
        }
        await self.app(scope, receive, send)
        return sent


def status_of(sent: list[dict[str, Any]]) -> int | None:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    return starts[0]["status"] if starts else None


@pytest.fixture
async def client(gateway: CountingGateway, setup: dict[str, Any]) -> Client:
    return Client(GatewayApp(gateway), setup["token"])


async def settled_once(gateway: CountingGateway, before: Counter[str], store_url: str) -> str:
    """The one request settled since ``before``: settled exactly once, with one record."""
    counter = gateway.counter
    for _ in range(100):  # a relayed stream settles when its relay ends
        new = counter.settled - before
        if new:
            break
        await asyncio.sleep(0.02)
    assert len(new) == 1, f"requests settled: {dict(new)}"
    ((request_id, _),) = new.items()
    await asyncio.sleep(0.1)  # a second settlement, if there were one, would have happened
    assert counter.settled[request_id] == 1, f"{request_id} settled {counter.settled[request_id]}x"
    records: list[dict[str, Any]] = []
    for _ in range(100):
        records = await asyncio.to_thread(call_records, store_url, request_id)
        if records:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    records = await asyncio.to_thread(call_records, store_url, request_id)
    assert len(records) == 1, f"{len(records)} records for {request_id}"
    record = records[0]
    assert (record["http.response.status_code"], record["error.type"], record["stopped_at"]) == (
        counter.outcomes[request_id]
    )
    return request_id


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": CHAT, **extra}


STREAM = {"stream": True, "stream_options": {"include_usage": True}}

EXITS: list[tuple[str, dict[str, Any], int, str | None]] = [
    # (what, request, status, stopped_at)
    ("served", {"body": chat("openai-main/gpt-5.5")}, 200, None),
    ("served stream", {"body": chat("openai-main/gpt-5.5", **STREAM)}, 200, None),
    ("authenticate", {"body": chat("openai-main/gpt-5.5"), "token": "cst_pat_" + "B" * 40},
     401, "authenticate"),
    ("read_request", {"body": b"{not json"}, 400, "read_request"),
    ("identify", {"body": chat("openai-main/gpt-5.5"),
                  "headers": ((b"x-custos-metadata", b"{broken"),)}, 400, "identify"),
    ("authorize", {"body": chat("local-vllm/llama-3.1-8b")}, 403, "authorize"),
    ("route", {"body": chat("openai-main/no-such-model")}, 404, "route"),
    ("budget", {"body": chat("openai-main/gpt-5.5", max_tokens=50),
                "headers": ((b"x-custos-metadata", b'{"project": "poor"}'),)}, 429, "budget"),
    ("upstream error", {"body": chat("openai-main/gpt-5.5+status=500")}, 502, "provider"),
    ("timeout", {"body": chat("openai-main/gpt-5.5+latency_ms=5000")}, 504, "provider"),
    ("stream broken", {"body": chat("openai-main/gpt-5.5+drop_after=3", **STREAM)}, 200,
     "provider"),
    # The client's disconnect is already waiting when the relay starts.
    ("client gone before the first chunk", {"body": chat(LONG, **STREAM),
                                            "leave_after_chunks": 0}, 200, "client"),
    ("client gone mid-stream", {"body": chat(LONG, **STREAM), "leave_after_chunks": 3}, 200,
     "client"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "request_", "status", "stage"), EXITS, ids=[e[0] for e in EXITS])
async def test_every_exit_settles_once(
    gateway: CountingGateway,
    client: Client,
    setup: dict[str, Any],
    what: str,
    request_: dict[str, Any],
    status: int | None,
    stage: str | None,
) -> None:
    before = gateway.counter.settled.copy()
    sent = await client.post("/v1/chat/completions", **request_)
    assert status_of(sent) == status, sent[:1]
    request_id = await settled_once(gateway, before, setup["store"])
    assert gateway.counter.outcomes[request_id][2] == stage


async def test_rate_limit_refusal_settles_once(
    gateway: CountingGateway, client: Client, setup: dict[str, Any]
) -> None:
    limited = ((b"x-custos-metadata", b'{"project": "limited"}'),)
    first = await client.post("/v1/chat/completions", chat("openai-main/gpt-5.5"), headers=limited)
    assert status_of(first) == 200
    await asyncio.sleep(0.1)
    before = gateway.counter.settled.copy()
    sent = await client.post("/v1/chat/completions", chat("openai-main/gpt-5.5"), headers=limited)
    assert status_of(sent) == 429
    request_id = await settled_once(gateway, before, setup["store"])
    assert gateway.counter.outcomes[request_id] == (429, "rate_limit_exceeded", "rate_limit")


async def test_audit_refusal_settles_once(
    gateway: CountingGateway, client: Client, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gateway.audit is not None
    monkeypatch.setattr(gateway.audit.writer, "admit", lambda: "the spool is full")
    before = gateway.counter.settled.copy()
    sent = await client.post("/v1/chat/completions", chat("openai-main/gpt-5.5"))
    assert status_of(sent) == 503
    monkeypatch.undo()
    request_id = await settled_once(gateway, before, setup["store"])
    assert gateway.counter.outcomes[request_id] == (503, "audit_unavailable", "audit")


async def test_a_stage_that_fails_settles_once(
    gateway: CountingGateway, client: Client, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: RequestContext) -> None:
        raise RuntimeError("a defect in a stage")

    monkeypatch.setattr(custos.policy.stages.Identify, "enter", lambda self, ctx: broken(ctx))
    monkeypatch.setattr(gateway, "_chain", None)  # rebuilt with the broken stage
    before = gateway.counter.settled.copy()
    sent = await client.post("/v1/chat/completions", chat("openai-main/gpt-5.5"))
    assert status_of(sent) == 500
    monkeypatch.undo()
    gateway._chain = None
    request_id = await settled_once(gateway, before, setup["store"])
    assert gateway.counter.outcomes[request_id] == (500, "internal_error", "gateway")


async def test_a_stream_never_iterated_settles_on_close(
    gateway: CountingGateway, setup: dict[str, Any], mock_provider: MockProvider
) -> None:
    """The chain answers a stream; nobody ever reads it; closing it closes the provider's
    stream and settles the request once."""
    stats = await asyncio.to_thread(mock_provider.stats)
    ctx = RequestContext("never-iterated", "openai", "chat", gateway.runtime, token=setup["token"])
    raw = orjson.dumps(chat(LONG, **STREAM))

    async def read(ctx: RequestContext) -> None:
        fill_request(ctx, raw)

    before = gateway.counter.settled.copy()
    response = await gateway.chain.handle(ctx, read)
    assert response.stream is not None and not ctx.settled
    await response.stream.aclose()  # type: ignore[attr-defined]
    assert ctx.settled and (ctx.status, ctx.stopped_at) == (499, "client")
    await response.stream.aclose()  # type: ignore[attr-defined]  # closing twice is harmless
    assert await settled_once(gateway, before, setup["store"]) == "never-iterated"

    def cancelled() -> int:
        return mock_provider.stats()["streams_cancelled"] - stats["streams_cancelled"]

    for _ in range(100):
        if await asyncio.to_thread(cancelled) == 1:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(cancelled) == 1  # the provider's stream was closed


async def test_a_refusal_carries_the_stage_that_raised(
    gateway: CountingGateway, setup: dict[str, Any]
) -> None:
    """A ``GatewayError`` without a stage is attributed to the stage that raised it."""
    ctx = RequestContext("no-body", "openai", "chat", gateway.runtime, token=setup["token"])

    async def read(ctx: RequestContext) -> None:
        raise GatewayError(400, "invalid_request", "no body")

    with pytest.raises(GatewayError) as raised:
        await gateway.chain.handle(ctx, read)
    assert raised.value.code == "invalid_request"
    assert ctx.settled and ctx.stopped_at == "read_request"

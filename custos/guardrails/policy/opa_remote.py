"""The ``opa`` guardrail against a remote OPA: its REST Data API.

``POST <url>/v1/data/<query as a path>`` with ``{"input": <the PolicyRequest>}``; OPA answers
``200 {"result": ...}`` (no ``result``: the document is undefined, a denial), read as the
in-process engine reads a query's result (``custos.guardrails.policy.rego.verdict_of``). No
answer within ``timeout_ms``, a connection refused, another status or a body that is not that
JSON is the engine failing: the guardrail's ``enforcing`` decides.
"""

from __future__ import annotations

import asyncio

import orjson

from custos.config.guardrails import GuardrailSettings
from custos.guardrails.policy.decision import PolicyFailed, PolicyRequest, PolicyVerdict
from custos.guardrails.policy.rego import UNDEFINED, verdict_of
from custos.providers.transport import (
    Transport,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from custos.providers.upstream import UpstreamRequest

MAX_ANSWER_BYTES = 1024 * 1024


class RemoteOpa:
    engine = "opa-remote"

    def __init__(self, settings: GuardrailSettings, transport: Transport | None) -> None:
        assert settings.url is not None
        self.query = settings.opa_query
        path = self.query.removeprefix("data.").replace(".", "/")
        self.url = f"{settings.url.rstrip('/')}/v1/data/{path}"
        self.revision = f"{self.url}"
        self.headers = {"content-type": "application/json", **settings.headers}
        self.timeout_s = settings.timeout_ms / 1000
        self._transport = transport
        self._own: Transport | None = None

    async def evaluate(self, request: PolicyRequest) -> PolicyVerdict:
        body = orjson.dumps({"input": request.as_input()})
        upstream = UpstreamRequest("POST", self.url, self.headers, body)
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._send(upstream)
        except TimeoutError:
            raise PolicyFailed("timeout") from None
        try:
            document = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise PolicyFailed("bad_answer") from None
        if not isinstance(document, dict):
            raise PolicyFailed("bad_answer")
        return verdict_of(document.get("result", UNDEFINED), self.query)

    async def _send(self, request: UpstreamRequest) -> bytes:
        transport = await self._client()
        try:
            response = await transport.open(
                request, connect_s=self.timeout_s, read_s=self.timeout_s, total_s=None
            )
        except (UpstreamUnreachable, UpstreamTimeout):
            raise PolicyFailed("unreachable") from None
        try:
            body = await response.read(MAX_ANSWER_BYTES)
        except (UpstreamTooLarge, UpstreamUnreachable, UpstreamTimeout):
            raise PolicyFailed("bad_answer") from None
        if response.status != 200:
            raise PolicyFailed(f"status_{response.status}")
        return body

    async def _client(self) -> Transport:
        if self._transport is not None:
            return self._transport
        if self._own is None:
            self._own = Transport(max_connections=100)
            await self._own.start()
        return self._own

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

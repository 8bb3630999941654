"""The ``webhook`` guardrail: a guardrail service of your own, called over HTTP.

The contract (docs/guardrails.md has it with examples). The gateway POSTs JSON::

    {"guardrail": "moderation", "hook": "llm_input", "operation": "validate",
     "request_id": "…", "model": "chat-default", "api": {"protocol": "openai", "operation": "chat"},
     "principal": {"kind": "user", "id": "…", "teams": ["support"]}, "metadata": {…},
     "texts": ["the text of each slot, in order", …]}

and expects ``200`` with::

    {"verdict": "allow"}                       # or "block"
    {"verdict": "block", "reason": "…"}        # the reason is recorded, never shown the caller
    {"verdict": "allow", "texts": [ … ]}       # mutate only: the same number of strings

Anything else — another status, a body that is not that JSON, a ``texts`` of the wrong length,
no answer within ``timeout_ms`` — is the guardrail failing: its ``enforcing`` decides what the
call does. Connection failures and 5xx answers are retried ``retries`` times. The request
carries the configured headers (secret references resolved when the config loads).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from custos.config.guardrails import GuardrailSettings
from custos.guardrails.rules import GuardrailFailed
from custos.providers.transport import (
    Transport,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from custos.providers.upstream import UpstreamRequest

#: The most of an answer read: verdicts are small, mutated texts are bounded by the request.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class WebhookCheck:
    """One webhook guardrail's calls, through the gateway's own HTTP client."""

    def __init__(self, settings: GuardrailSettings, transport: Transport) -> None:
        assert settings.webhook is not None
        self.url = settings.webhook.url
        self.headers = {"content-type": "application/json", **settings.webhook.headers}
        self.retries = settings.webhook.retries
        self.timeout_s = settings.timeout_ms / 1000
        self.mutates = settings.operation == "mutate"
        self.transport = transport

    async def __call__(self, payload: dict[str, Any], texts: int) -> tuple[bool, list[str] | None]:
        """(blocked, new texts or ``None``); raises ``GuardrailFailed``."""
        request = UpstreamRequest("POST", self.url, self.headers, orjson.dumps(payload))
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._send(request)
        except TimeoutError:
            raise GuardrailFailed("timeout") from None
        return self._verdict(body, texts)

    async def _send(self, request: UpstreamRequest) -> bytes:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.transport.open(
                    request, connect_s=self.timeout_s, read_s=self.timeout_s, total_s=None
                )
            except (UpstreamUnreachable, UpstreamTimeout):
                if last:
                    raise GuardrailFailed("unreachable") from None
                continue
            if response.status >= 500 and not last:
                response.close()
                continue
            try:
                body = await response.read(MAX_ANSWER_BYTES)
            except (UpstreamTooLarge, UpstreamUnreachable, UpstreamTimeout):
                raise GuardrailFailed("bad_answer") from None
            if response.status != 200:
                raise GuardrailFailed(f"status_{response.status}")
            return body
        raise GuardrailFailed("unreachable")  # not reached: the loop returns or raises

    def _verdict(self, body: bytes, texts: int) -> tuple[bool, list[str] | None]:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise GuardrailFailed("bad_answer") from None
        if not isinstance(answer, dict) or answer.get("verdict") not in ("allow", "block"):
            raise GuardrailFailed("bad_answer")
        new = answer.get("texts")
        if new is not None:
            valid = isinstance(new, list) and len(new) == texts
            if not (self.mutates and valid and all(isinstance(t, str) for t in new)):
                raise GuardrailFailed("bad_answer")
        return answer["verdict"] == "block", new

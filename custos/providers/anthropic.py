"""The Anthropic Messages wire format (``POST /v1/messages``).

Anthropic clients are forwarded as received, with only the model renamed; OpenAI clients are
translated both ways by ``custos.providers.translate``. Anthropic has no embeddings API.
"""

from __future__ import annotations

import orjson

from custos.errors import bad_request
from custos.providers import responses, translate
from custos.providers.base import (
    ParsedResponse,
    ProviderAdapter,
    ProviderCall,
    StreamTranslator,
    UpstreamMalformed,
    renamed_model,
    usage_from_anthropic,
    with_model,
)
from custos.providers.client_headers import provider_headers
from custos.providers.sse import SSEEvent, encode_event
from custos.providers.upstream import UpstreamRequest
from custos.wire import Operation, Usage

#: The Messages API version the translations are written against.
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(ProviderAdapter):
    wire = "anthropic"
    counts_tokens = True

    def url(self, operation: Operation = "messages") -> str:
        # Operators write either https://api.anthropic.com or .../v1; accept both.
        base = self.base_url.rstrip("/")
        path = "/messages/count_tokens" if operation == "count_tokens" else "/messages"
        return base + (path if base.endswith("/v1") else "/v1" + path)

    def supports(self, operation: Operation) -> bool:
        return operation != "embeddings"

    def build_request(self, call: ProviderCall) -> UpstreamRequest:
        if not self.supports(call.operation):
            raise bad_request(f"provider {self.account} (Anthropic) has no {call.operation} API")
        headers = self.common_headers()
        provider_headers(headers, call.client_headers, "anthropic", call.protocol)
        if not any(name.lower() == "anthropic-version" for name in headers):
            headers["anthropic-version"] = ANTHROPIC_VERSION
        headers["x-api-key"] = self.settings.api_key or ""
        if call.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", self.url(call.operation), headers, self.request_body(call))

    def request_body(self, call: ProviderCall) -> bytes:
        if call.protocol == "anthropic":
            return with_model(call, call.upstream_model)
        if call.operation == "responses":
            return orjson.dumps(responses.request_to_anthropic(call.body, call.upstream_model))
        return orjson.dumps(translate.openai_request_to_anthropic(call.body, call.upstream_model))

    def parse_response(self, call: ProviderCall, body: bytes) -> ParsedResponse:
        data = translate.load_object(body)
        if call.operation == "count_tokens":
            if not translate.is_count(data.get("input_tokens")):
                raise UpstreamMalformed("the provider's count has no input_tokens")
            return ParsedResponse(body, None)
        usage = usage_from_anthropic(data.get("usage"))
        if call.protocol == "anthropic":
            return ParsedResponse(renamed_model(body, data, call.requested_model), usage)
        if call.operation == "responses":
            answer = responses.response_from_anthropic(data, call.body, call.requested_model)
            return ParsedResponse(orjson.dumps(answer), usage)
        translated = translate.anthropic_response_to_openai(
            data, call.requested_model, structured=translate.structured_output_name(call.body)
        )
        return ParsedResponse(orjson.dumps(translated), usage)

    def stream_translator(self, call: ProviderCall) -> StreamTranslator:
        if call.protocol == "anthropic":
            return AnthropicPassthroughStream(call.requested_model)
        if call.operation == "responses":
            return responses.AnthropicToResponsesStream(call.body, call.requested_model)
        return translate.AnthropicToOpenAIStream(
            call.requested_model,
            call.client_wants_usage,
            structured=translate.structured_output_name(call.body),
        )

    def error_message(self, body: bytes) -> str | None:
        """Anthropic errors are ``{"type": "error", "error": {"type": ..., "message": ...}}``;
        the type (``overloaded_error``, ``rate_limit_error``...) says more than the text alone."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            return f"{kind}: {error['message']}" if isinstance(kind, str) else error["message"]
        return super().error_message(body)


class AnthropicPassthroughStream(StreamTranslator):
    """Forwards Anthropic events as they come, noting usage and generated characters; the
    message is named for the model the client asked for."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.output_chars = 0
        self._totals: dict[str, int] = {}
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        data = translate.load_object(event.data)
        kind = data.get("type")
        raw = event.data
        if kind == "message_start":
            message = data.get("message")
            reported = message.get("usage") if isinstance(message, dict) else None
            self.usage = translate.merge_anthropic_usage(self._totals, reported)
            if isinstance(message, dict):
                raw = renamed_model(raw, message, self.model, data)
        elif kind == "message_delta":
            self.usage = translate.merge_anthropic_usage(self._totals, data.get("usage"))
        elif kind == "content_block_delta":
            self.output_chars += translate.anthropic_delta_chars(data.get("delta"))
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self.upstream_error = True
        # Anthropic names every event; keep its name, or take the type when a server omits it.
        name = event.event or (kind if isinstance(kind, str) else None)
        return encode_event(raw, name)

    def finish(self) -> bytes:
        return b""

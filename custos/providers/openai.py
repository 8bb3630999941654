"""The OpenAI wire format: OpenAI itself, and servers that speak it (``openai_compatible``).

Azure OpenAI speaks the same bodies at other URLs with another auth header; see
``custos.providers.azure_openai``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from custos.providers import responses, translate
from custos.providers.base import (
    ParsedResponse,
    ProviderAdapter,
    ProviderCall,
    StreamTranslator,
    UpstreamMalformed,
    renamed_model,
    usage_from_openai,
    with_model,
)
from custos.providers.client_headers import provider_headers
from custos.providers.estimate import estimate_prompt_tokens
from custos.providers.sse import SSEEvent, encode_event
from custos.providers.upstream import UpstreamRequest
from custos.wire import Usage

if TYPE_CHECKING:
    from custos.config.schema import ProviderSettings

_PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "messages": "/chat/completions",
    "responses": "/responses",
}


class OpenAIAdapter(ProviderAdapter):
    wire = "openai"

    def __init__(self, account: str, settings: ProviderSettings) -> None:
        super().__init__(account, settings)
        #: Upstream model name -> the field a translated request sets its output limit by.
        self.max_tokens_fields = {
            model.deployment or model.upstream_model or name: model.max_tokens_field
            for name, model in settings.models.items()
        }

    def url(self, call: ProviderCall) -> str:
        return self.base_url + _PATHS[call.operation]

    def auth_headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def build_request(self, call: ProviderCall) -> UpstreamRequest:
        headers = self.common_headers()
        provider_headers(headers, call.client_headers, "openai", call.protocol)
        headers.update(self.auth_headers())
        if call.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", self.url(call), headers, self.request_body(call))

    def request_body(self, call: ProviderCall) -> bytes:
        if call.protocol == "anthropic":
            field = self.max_tokens_fields.get(call.upstream_model, "max_completion_tokens")
            return orjson.dumps(
                translate.anthropic_request_to_openai(call.body, call.upstream_model, field)
            )
        if call.stream and not call.client_wants_usage:
            # Usage is only sent on streams that ask for it; ask, and strip it on the way back.
            body = dict(call.body)
            body["model"] = call.upstream_model
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            return orjson.dumps(body)
        return with_model(call, call.upstream_model)

    def parse_response(self, call: ProviderCall, body: bytes) -> ParsedResponse:
        data = _json_object(body)
        if call.operation == "responses":
            usage = responses.usage_from_responses(data.get("usage"))
            return ParsedResponse(renamed_model(body, data, call.requested_model), usage)
        usage = usage_from_openai(data.get("usage"))
        if call.protocol == "anthropic":
            translated = translate.openai_response_to_anthropic(data, call.requested_model)
            return ParsedResponse(orjson.dumps(translated), usage, translated)
        renamed = renamed_model(body, data, call.requested_model)
        data["model"] = call.requested_model  # as ``renamed`` has it (spliced in, or already so)
        return ParsedResponse(renamed, usage, data)

    def stream_translator(self, call: ProviderCall) -> StreamTranslator:
        if call.operation == "responses":
            return responses.ResponsesPassthroughStream(call.requested_model)
        if call.protocol == "anthropic":
            return translate.OpenAIToAnthropicStream(
                call.requested_model, estimate_prompt_tokens(call.body)
            )
        return OpenAIPassthroughStream(
            call.requested_model, strip_usage=not call.client_wants_usage
        )


class OpenAIPassthroughStream(StreamTranslator):
    """Forwards OpenAI chunks as they come, named for the model the client asked for, noting
    usage. Chunks without a choice are dropped (the usage chunk the gateway asked for on the
    client's behalf, and a provider's own, such as Azure's prompt filter results): OpenAI
    clients read ``choices[0]`` of every chunk but the usage chunk they asked for."""

    def __init__(self, model: str, *, strip_usage: bool) -> None:
        self.model = model
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.output_chars = 0
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        if event.data == b"[DONE]":
            self._done = True
            return b"data: [DONE]\n\n"
        chunk = _json_object(event.data)
        if "error" in chunk:
            self.upstream_error = True
            return encode_event(event.data)
        choices = chunk.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                self.output_chars += _delta_chars(delta)
        usage = usage_from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        if not choices and (usage is None or self.strip_usage):
            return b""
        return encode_event(renamed_model(event.data, chunk, self.model))

    def finish(self) -> bytes:
        return b""


def _delta_chars(delta: dict[str, Any]) -> int:
    chars = len(delta["content"]) if isinstance(delta.get("content"), str) else 0
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            chars += len(function["arguments"])
    return chars


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamMalformed("the provider's body is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamMalformed("the provider's body is not a JSON object")
    return data


class OpenAICompatibleAdapter(OpenAIAdapter):
    """vLLM, Ollama, llama.cpp and other servers with OpenAI routes; an API key is optional."""

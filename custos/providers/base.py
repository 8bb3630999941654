"""The provider adapter contract: the strict point of cut-off between the gateway and a wire format.

An adapter does no I/O. It turns one client request into one upstream HTTP request (URL, header
pairs, body bytes), and turns the upstream's body bytes or server-sent events back into bytes in
the client's protocol, reporting normalised usage on the way. The transport
(``custos.providers.transport``) moves the bytes; the pipeline decides which adapter to use.

Example, an OpenAI client reaching an Anthropic account::

    call = ProviderCall(protocol="openai", operation="chat", body=body, raw_body=raw,
                        requested_model="claude-main/claude-x", upstream_model="claude-x",
                        stream=False, client_wants_usage=False)
    request = adapter.build_request(call)         # POST {base_url}/v1/messages, Anthropic JSON
    ...                                           # the transport sends it, reads the body
    parsed = adapter.parse_response(call, body)   # OpenAI chat.completion bytes + Usage

When the client's protocol is the adapter's own wire format, the body is forwarded as received,
with only the model name changed in place: it is not re-serialised.
"""

from __future__ import annotations

import re
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from custos.errors import GatewayError, stream_error_event
from custos.providers.estimate import tokens_for_chars
from custos.providers.sse import SSEDecoder
from custos.providers.upstream import UpstreamRequest
from custos.wire import ApiProtocol, Operation, Usage

if TYPE_CHECKING:
    from custos.config.schema import ProviderSettings
    from custos.providers.sse import SSEEvent
    from custos.providers.transport import Transport


@dataclass(slots=True)
class ProviderCall:
    """What an adapter needs to know to build one upstream request."""

    protocol: ApiProtocol
    operation: Operation
    body: dict[str, Any]
    raw_body: bytes
    requested_model: str
    upstream_model: str
    stream: bool
    client_wants_usage: bool
    #: The allow-listed provider headers the client sent (``custos.providers.client_headers``).
    client_headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ParsedResponse:
    """An upstream response rendered in the client's protocol."""

    body: bytes
    usage: Usage | None
    #: ``body`` as parsed JSON, when the adapter has it and it is exactly what ``body`` holds
    #: (so a stage that reads the answer, an output guardrail, does not parse it again);
    #: ``None`` when the adapter does not keep it.
    parsed: dict[str, Any] | None = None


class StreamTranslator(ABC):
    """Turns upstream server-sent events into bytes for the client, one event at a time."""

    #: Normalised usage once the upstream has reported it.
    usage: Usage | None = None
    #: Characters of generated text seen so far, for an estimate when no usage is reported.
    output_chars: int = 0
    #: The provider reported an error inside the stream and it was relayed to the client.
    upstream_error: bool = False

    @abstractmethod
    def feed(self, event: SSEEvent) -> bytes:
        """Bytes to send to the client for this upstream event (may be empty)."""

    @abstractmethod
    def finish(self) -> bytes:
        """Bytes that close the client's stream once the upstream stream has ended cleanly."""

    #: Set by a subclass when the upstream's terminating event arrives.
    _done: bool = False

    @property
    def complete(self) -> bool:
        """True once the upstream has sent its terminating event."""
        return self._done

    @property
    def estimated_output_tokens(self) -> int:
        return tokens_for_chars(self.output_chars)

    def error_event(self, protocol: ApiProtocol, err: GatewayError) -> bytes:
        """The event that ends the client's stream when the gateway must break it off."""
        return stream_error_event(protocol, err)


class ChainedStreamTranslator(StreamTranslator):
    """A translation in two steps: ``source`` reads the provider's events and a second
    translator turns what it hands on into the client's protocol. What the provider reported
    (usage, generated text, an error in the stream) is the source's."""

    source: StreamTranslator

    @property
    def usage(self) -> Usage | None:  # type: ignore[override]
        return self.source.usage

    @property
    def output_chars(self) -> int:  # type: ignore[override]
        return self.source.output_chars

    @property
    def upstream_error(self) -> bool:  # type: ignore[override]
        return self.source.upstream_error


class StreamDecoder(typing.Protocol):
    """Upstream stream bytes in arbitrary pieces in, complete events out."""

    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def close(self) -> list[SSEEvent]: ...


class UpstreamMalformed(Exception):
    """The provider answered 2xx with something that is not its wire format."""


class UpstreamCredentialsFailed(Exception):
    """The gateway could not obtain credentials for the provider (e.g. a token exchange)."""


class ProviderAdapter(ABC):
    """One provider wire format. Subclasses implement the four methods, and set ``wire`` when
    their format is a client protocol (its bodies then pass through)."""

    #: The client protocol this format is; None for formats no client speaks (Gemini), whose
    #: requests are always translated.
    wire: ApiProtocol | None = None
    #: True when ``prepare`` must be awaited before ``build_request`` (the others skip the await).
    needs_prepare: bool = False
    #: The account counts a request's tokens itself (``POST /v1/messages/count_tokens``).
    counts_tokens: bool = False

    def __init__(self, account: str, settings: ProviderSettings) -> None:
        self.account = account
        self.settings = settings
        self.base_url = settings.base_url

    @abstractmethod
    def build_request(self, call: ProviderCall) -> UpstreamRequest: ...

    @abstractmethod
    def parse_response(self, call: ProviderCall, body: bytes) -> ParsedResponse: ...

    @abstractmethod
    def stream_translator(self, call: ProviderCall) -> StreamTranslator: ...

    async def prepare(self, transport: Transport) -> None:
        """Obtain what ``build_request`` needs and cannot get without I/O (an access token);
        raises ``UpstreamCredentialsFailed``. Awaited only when ``needs_prepare`` is set."""
        return None

    def supports(self, operation: Operation) -> bool:
        return True

    def error_message(self, body: bytes) -> str | None:
        """The provider's own error text from a non-2xx body, if it has one."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        return None

    def error_status(self, status: int, body: bytes) -> int:
        """The status to treat a non-2xx answer as (a provider may say 400 for its own key)."""
        return status

    def stream_decoder(self) -> StreamDecoder:
        """What splits the upstream's streamed bytes into events: server-sent events unless the
        provider frames its streams otherwise (Bedrock's binary event stream)."""
        return SSEDecoder()

    def common_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update(self.settings.headers)
        return headers


_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_MODEL_KEY = b'"model"'


def with_model(call: ProviderCall, model: str | None) -> bytes:
    """The client's body with its top-level ``model`` replaced (or removed when ``model`` is None).

    The common case rewrites the one ``"model": "…"`` pair in place, leaving every other byte as
    the client sent it. If the pair cannot be found exactly once (it is escaped, or a nested object
    has a ``model`` key too), the body is re-serialised instead, which is always correct.
    """
    if model is not None:
        spliced = _splice_model(call.raw_body, call.requested_model, model)
        if spliced is not None:
            return spliced
    body = dict(call.body)
    if model is None:
        body.pop("model", None)
    else:
        body["model"] = model
    return orjson.dumps(body)


def renamed_model(
    raw: bytes, holder: dict[str, Any], model: str, whole: dict[str, Any] | None = None
) -> bytes:
    """A provider's JSON (``raw``, parsed as ``whole``, whose ``model`` is in ``holder``: the
    object itself unless nested) answering with ``model``: callers see the name they asked for,
    never a deployment or the provider's own. Rewritten in place as ``with_model`` does, and
    re-serialised when the pair is not found exactly once."""
    current = holder.get("model")
    if current == model:
        return raw
    if isinstance(current, str):
        spliced = _splice_model(raw, current, model)
        if spliced is not None:
            return spliced
    holder["model"] = model
    return orjson.dumps(whole if whole is not None else holder)


def _splice_model(raw: bytes, current: str, model: str) -> bytes | None:
    """``raw`` with its one ``"model": "<current>"`` pair set to ``model``; None when there is
    not exactly one ``"model"`` pair, or it holds another value (escaped differently)."""
    found = None
    # The pair can only start where the bytes "model" (quotes included) are: find those with a
    # substring search and try the pattern there, instead of running the pattern over every
    # byte of what may be a long prompt.
    at = raw.find(_MODEL_KEY)
    while at >= 0:
        match = _MODEL_FIELD.match(raw, at)
        if match is not None:
            if found is not None:
                return None
            found = match
        at = raw.find(_MODEL_KEY, at + len(_MODEL_KEY))
    if found is None or found.group(1) != orjson.dumps(current)[1:-1]:
        return None
    return b'%s"model":%s%s' % (raw[: found.start()], orjson.dumps(model), raw[found.end() :])


def usage_from_openai(data: Any) -> Usage | None:
    """Normalise an OpenAI ``usage`` object (chat or embeddings)."""
    if not isinstance(data, dict):
        return None
    prompt = data.get("prompt_tokens")
    if not isinstance(prompt, int):
        return None
    completion = data.get("completion_tokens") or 0
    prompt_details = _object(data.get("prompt_tokens_details"))
    completion_details = _object(data.get("completion_tokens_details"))
    return Usage(
        input_tokens=prompt,
        output_tokens=completion if isinstance(completion, int) else 0,
        cached_input_tokens=_int(prompt_details.get("cached_tokens")),
        cache_write_tokens=_int(prompt_details.get("cache_write_tokens")),
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
    ).bounded()


def usage_from_anthropic(data: Any, previous: Usage | None = None) -> Usage | None:
    """Normalise an Anthropic ``usage`` object; ``input_tokens`` there excludes cache tokens."""
    if not isinstance(data, dict):
        return previous
    usage = previous or Usage()
    # A later stream event carries only the counts that changed; keep the others.
    cached = _count(data, "cache_read_input_tokens", usage.cached_input_tokens)
    written = _count(data, "cache_creation_input_tokens", usage.cache_write_tokens)
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    usage.input_tokens = _count(data, "input_tokens", uncached) + cached + written
    usage.cached_input_tokens = cached
    usage.cache_write_tokens = written
    usage.output_tokens = _count(data, "output_tokens", usage.output_tokens)
    return usage.bounded()


def _count(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def upstream_error(
    account: str, status: int, message: str | None, retry_after: str | None = None
) -> GatewayError:
    """Map a provider's error status to what the caller sees.

    The caller's own mistakes (400, 413, 422) keep their status and the provider's explanation;
    the provider limiting us keeps 429; problems with the gateway's credentials or configuration
    (401, 403, 404) are the operator's, not the caller's, and become 502 without the provider's
    text, which can echo part of a key. A provider asking for a pause (503, and Anthropic's 529
    "overloaded") is 503: the caller should back off, not take it for a failure. With 429 and
    those, the provider's ``retry_after`` goes to the caller.
    """
    err = _upstream_error(account, status, message)
    if retry_after is not None and status in (429, 503, 529):
        err.headers["retry-after"] = retry_after
    return err


#: The most of a provider's own error text passed on to the caller.
MAX_DETAIL_CHARS = 500


def _upstream_error(account: str, status: int, message: str | None) -> GatewayError:
    detail = f": {message[:MAX_DETAIL_CHARS]}" if message else ""
    if status in (400, 413, 422):
        return GatewayError(
            status,
            "upstream_invalid_request",
            f"provider {account} rejected the request ({status}){detail}",
        )
    if status == 429:
        return GatewayError(
            429, "upstream_rate_limited", f"provider {account} is rate limiting (429){detail}"
        )
    if status in (401, 403):
        return GatewayError(
            502,
            "upstream_auth_failed",
            f"provider {account} refused the gateway's credentials ({status})",
        )
    if status == 404:
        return GatewayError(
            502, "upstream_not_found", f"provider {account} does not know the model or route (404)"
        )
    if status == 503:
        return GatewayError(
            503, "upstream_unavailable", f"provider {account} is unavailable (503){detail}"
        )
    if status == 529:
        return GatewayError(
            503, "upstream_overloaded", f"provider {account} is overloaded (529){detail}"
        )
    if status == 504:
        return GatewayError(504, "upstream_timeout", f"provider {account} timed out (504)")
    return GatewayError(502, "upstream_error", f"provider {account} failed ({status}){detail}")

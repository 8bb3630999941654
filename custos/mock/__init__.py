"""Mock LLM provider: a real HTTP server speaking the OpenAI, Azure OpenAI, Anthropic, Gemini
(AI Studio, Vertex AI) and Bedrock (Converse) wire formats well enough for the official
``openai`` and ``anthropic`` SDKs (and the gateway's translations) to work against it.

Used by the demo (``custos mock-provider``), the test suites and the benchmark; never by the
gateway itself, which is why it is a package of its own rather than part of
``custos.providers``. This module is its public face; the wire formats live in the modules
beside it.

Public API
----------
``create_app(api_key="mock-key")``
    A plain ASGI 3 app (no framework). Each app has its own request log and counters.
``run(host="127.0.0.1", port=9999, api_key="mock-key")``
    Serves it with uvicorn (uvloop, httptools, log level warning, no access log).
``serve_in_background(host="127.0.0.1", port=0, api_key="mock-key") -> BackgroundMock``
    Same server in a daemon thread, for tests: ``.url``, ``.openai_base_url``, ``.port``,
    ``.app`` (the ``MockProvider``), ``.stop()``.
``count_tokens(text)``, ``prompt_tokens_openai(body)``, ``prompt_tokens_anthropic(body)``
    The tokenizer and the exact prompt usage the server reports (formula below).

Routes
------
- ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models[/{id}]``:
  OpenAI, ``Authorization: Bearer <api_key>``.
- ``POST /openai/deployments/{deployment}/chat/completions|embeddings?api-version=...``:
  Azure, ``api-key: <api_key>``; a missing ``api-version`` is a 400. The deployment plays the
  role of the model (directives included). Azure extras are sent: ``prompt_filter_results``,
  per-choice ``content_filter_results``, and a first stream chunk with ``choices: []``.
- ``POST /v1/responses``: the OpenAI Responses API (plain, and streamed as its typed events),
  ``Authorization: Bearer <api_key>``; ``POST /openai/v1/responses`` is Azure's (``api-key``,
  no ``api-version``, the deployment in the body's ``model``). A function tool is called when
  the last input item is a user message; a ``function_call_output`` last gets a text reply.
- ``POST /v1/messages``, ``POST /v1/messages/count_tokens``: Anthropic, key in ``x-api-key``
  (or ``Authorization: Bearer``, which anthropic SDK 2.x sends) and ``anthropic-version``
  (missing: 400). ``GET /v1/models`` answers in Anthropic's shape when
  the request carries ``anthropic-version``.
- ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``:
  Gemini (AI Studio), key in ``x-goog-api-key`` (wrong or missing: 400, as Google answers).
  ``POST /v1/projects/{p}/locations/{r}/publishers/google/models/{model}:…``: Vertex AI, an
  ``Authorization: Bearer`` token the mock issued and that has not expired (else 401).
  ``POST /token``: the service-account token endpoint (a JWT-bearer grant with an RS256
  assertion for this URL, ``iss``, ``scope``, ``iat`` and ``exp`` at most an hour apart; the
  signature is left to the tests, which hold the public key); ``?expires_in=S`` sets the tokens'
  lifetime (default 3600) and other query parameters are knobs (``?status=500``).
  Gemini's ``promptTokenCount``: the formula below over ``contents`` (parts' ``text``, a
  ``functionCall``'s name and compact JSON ``args``, a ``functionResponse``'s name and compact
  JSON ``response``), a ``systemInstruction`` counting as one more content. Streams end after the
  chunk with ``finishReason`` (no terminating event), events separated by CRLF pairs.
- ``POST /model/{modelId}/converse`` and ``/converse-stream``: Bedrock Runtime, signed with
  SigV4 for the service ``bedrock`` (any access key id and region; the secret access key is
  ``api_key``; a bad or missing signature is a 403). Errors are ``{"message"}`` with an
  ``x-amzn-errortype`` header; ConverseStream answers in AWS's binary event-stream framing
  (``application/vnd.amazon.eventstream``, real CRCs): ``messageStart``, ``contentBlockStart``
  (tool calls only), ``contentBlockDelta``, ``contentBlockStop``, ``messageStop``, ``metadata``
  (usage). Bedrock's ``inputTokens``: the formula below over ``messages`` (``text`` blocks, a
  ``toolUse``'s name and compact JSON ``input``, a ``toolResult``'s texts), a ``system`` counting
  as one more message, less the cache knobs' tokens.
- ``GET|DELETE /_mock/requests``: the last 200 requests (time, method, path, query, all headers
  unmasked, body parsed as JSON when possible) / clear them.
- ``GET|DELETE /_mock/stats``: counters ``requests_total``, ``errors_injected``,
  ``streams_started``, ``streams_completed``, ``streams_cancelled`` (the peer went away first),
  ``streams_dropped`` (``drop_after`` fired), ``active_streams`` / reset them.
- ``GET /_mock/health``. No ``/_mock`` route needs a key, and none of them is recorded.

Errors use each route's format: OpenAI ``{"error": {"message", "type", "param", "code"}}``,
Azure ``{"error": {"code", "message", ...}}``, Anthropic ``{"type": "error", "error": {"type",
"message"}, "request_id"}``. Bad input is a 400, never a 500.

Tokens and usage (the contract other tests compute against)
-----------------------------------------------------------
``count_tokens(text)`` = number of matches of ``\\w+|[^\\w\\s]``: each run of word characters is
one token, each other non-space character is one token. ``"Hello, world!"`` -> 4.

- OpenAI / Azure ``prompt_tokens`` = sum over messages of ``4 + count_tokens`` of each of the
  message's texts: string ``content``, the ``text`` of content parts, and for ``tool_calls``
  the function ``name`` and ``arguments``. Tool definitions are not counted.
- Anthropic ``input_tokens``: the same, where a non-empty ``system`` (string or text blocks)
  counts as one more message; texts are ``text`` blocks, a ``tool_use`` block's name and its
  ``input`` as compact JSON, a ``tool_result`` block's content (string or text blocks).
  ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are always 0.
- Responses ``input_tokens`` (``input_tokens_responses``): the same per item of ``input`` (a
  string input is one item; texts are a message's string content or its parts' ``text``, a
  ``function_call``'s name and arguments, a ``function_call_output``'s output), with non-empty
  ``instructions`` as one more item. ``cached_tokens`` and ``reasoning_tokens`` are 0.
- Output tokens: a text reply is a sequence of ``\\w+`` words joined by single spaces, so its
  token count is its word count. A tool call counts ``count_tokens(name) +
  count_tokens(arguments_json)``.
- Embeddings: ``prompt_tokens`` = sum of ``count_tokens`` of each string input (the length of
  each token-array input); ``total_tokens`` is the same.

Generated content
-----------------
A text reply is ``Mock reply to <the first 8 words of the last message>`` followed by filler
words chosen by a CRC of that message, ``words`` tokens in all (default 20), cut to
``max_tokens`` / ``max_completion_tokens`` when smaller (then ``finish_reason: "length"`` /
``stop_reason: "max_tokens"``). When the last message is a tool result (OpenAI role ``tool``,
Anthropic ``tool_result`` block) the prefix is ``Mock reply to tool result``. When the request
has tools, the last message is from the user and ``tool_choice`` is not none, the reply is one
call to the tool ``tool_choice`` names (else the first tool), with arguments built from the
schema's required properties (strings ``"mock"`` or the first enum value, numbers 1, booleans
true, arrays ``[]``, objects recursively). Tool calls are never truncated. ``n``, ``stop`` and
sampling parameters are ignored. Ids are a hash of the path and body and ``created`` is a
constant, so identical requests get byte-identical responses.

Embeddings are unit-length float32 vectors from SHAKE-128 of each input; 16 dimensions unless
``dimensions`` says otherwise; ``encoding_format`` ``float`` or ``base64`` (little-endian
float32, what the openai SDK asks for by default) carry the same numbers.

Knobs
-----
From the model (or deployment) name, ``base+key=value+flag``, e.g. ``gpt-4o+status=429``,
``m+chunks=20+ttft_ms=50``, ``m+malformed``; and from ``x-mock-<key>`` headers with ``-`` for
``_`` (``x-mock-latency-ms: 200``), which win over directives. Unknown keys or bad values are
a 400. The ``model`` field of responses echoes the model string as given, directives included.

``status=N``
    Answer HTTP N (400-599) with a faithful error body; 429, 503 and 529 carry
    ``retry-after`` (whole seconds, rounded up) and ``retry-after-ms``.
``retry_after=S``
    Seconds for those headers (default 1; may be fractional, e.g. 0.05).
``fail_first=K``
    With ``status``: only the first K requests with this model string and knobs fail, later
    ones succeed (for retry tests). ``DELETE /_mock/stats`` forgets the history.
``fail_for_ms=T``
    With ``status``: requests with this model string and knobs fail for T ms from the first
    one, later ones succeed (a provider down for a while, for cooldown tests).
``latency_ms``
    Wait before responding at all (errors included).
``ttft_ms`` / ``chunk_delay_ms``
    Wait before the first stream event / between stream events (headers go out at once).
``chunks`` (default 20)
    Content fragments in a stream (at most one per word, or per character of tool arguments).
``words`` (default 20)
    Reply length in tokens (at most 100000).
``drop_after=N``
    Send N SSE events (of any kind: role chunk, ``message_start`` and ``ping`` count), then
    close the connection without the terminating chunk.
``malformed``
    Non-streaming: 200 with a body that is not JSON. Streaming: one garbage event (invalid
    JSON) after the second event, the rest as usual.
``no_usage``
    OpenAI streams send no usage chunk even with ``stream_options.include_usage`` (the chunks
    still carry ``"usage": null``). Anthropic's format requires ``usage`` objects in
    ``message_start`` and ``message_delta``, so ``input_tokens`` stays and ``output_tokens`` is
    0 in both (real Anthropic never reports 0 for a reply). Non-streaming replies keep usage.

``cached_tokens=N``
    Gemini: report N ``cachedContentTokenCount`` (at most the prompt's tokens); Bedrock: N
    ``cacheReadInputTokens`` (at most the prompt's tokens), taken out of ``inputTokens``.
``thoughts_tokens=N`` / ``blocked``
    Gemini only: report N ``thoughtsTokenCount`` (and then, like a thinking model, a
    ``thoughtSignature`` on a function call) / answer 200 with no candidates and
    ``promptFeedback.blockReason`` ``SAFETY``.
``cache_write_tokens=N`` / ``stream_exception``
    Bedrock only: report N ``cacheWriteInputTokens`` (of the rest of the prompt), taken out of
    ``inputTokens`` / end a ConverseStream after its first delta with a ``throttlingException``
    exception message. With ``malformed`` a ConverseStream's second message has a wrong CRC;
    ``no_usage`` leaves ``usage`` out of its ``metadata`` event.
``echo``
    OpenAI chat, Anthropic messages and Responses: the reply is the last message's text itself,
    its white-space separated words (so a test chooses what comes back, addresses included).

Stream shapes: OpenAI sends a role chunk (``delta: {"role": "assistant", "content": ""}``), the
content (or ``tool_calls``: id and name first, then ``arguments`` fragments) chunks, a chunk
with an empty delta and the ``finish_reason``, the usage chunk (``choices: []``) when asked,
then ``data: [DONE]``. Anthropic sends ``message_start`` (output_tokens 1, like Anthropic),
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` or
``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop_reason, cumulative
output_tokens), ``message_stop``.
"""

from __future__ import annotations

from .app import MockProvider, create_app
from .content import (
    DEFAULT_DIMENSIONS,
    DEFAULT_WORDS,
    PER_MESSAGE_TOKENS,
    count_tokens,
    prompt_tokens_anthropic,
    prompt_tokens_openai,
)
from .responses_wire import input_tokens_responses
from .server import BackgroundMock, run, serve_in_background

__all__ = [
    "DEFAULT_DIMENSIONS",
    "DEFAULT_WORDS",
    "PER_MESSAGE_TOKENS",
    "BackgroundMock",
    "MockProvider",
    "count_tokens",
    "create_app",
    "input_tokens_responses",
    "prompt_tokens_anthropic",
    "prompt_tokens_openai",
    "run",
    "serve_in_background",
]

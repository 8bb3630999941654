"""Reading a client's request: the body within its limit, as JSON, with the fields each route needs.

Everything here answers a client mistake with a ``GatewayError`` that names the field and says
what to send instead; nothing here has side effects, so a bad request changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from custos.errors import ClientDisconnected, GatewayError, bad_request
from custos.identity.principal import AMBIGUOUS, AuthFailure
from custos.policy.metadata import CONTROL_CHARACTERS
from custos.wire import MAX_TOKENS, Operation


async def read_body(
    receive: Any, content_length: int | None, limit: int, timeout_s: float
) -> bytes:
    """The whole body, refused (413) past ``limit`` bytes and (408) past ``timeout_s``."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_all(receive, limit)
    except TimeoutError:
        raise GatewayError(
            408,
            "request_timeout",
            f"The request body did not arrive within {timeout_s:g} s.",
            # The rest of the body may still come: the connection cannot carry another request.
            headers={"connection": "close"},
        ) from None


async def _read_all(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def bearer(value: bytes) -> str | None:
    """The credential of an ``Authorization: Bearer …`` header value."""
    scheme, _, credential = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credential.strip().decode("latin-1") or None


def with_credential(held: str | AuthFailure | None, found: str) -> str | AuthFailure:
    """A request's credential once ``found`` is seen too: a second, different one makes it
    ambiguous (refused), whichever header it came in."""
    return found if held is None or held == found else AMBIGUOUS


class ClientGone(ClientDisconnected):
    """The client disconnected before its request body arrived."""


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        "request_too_large",
        f"The request body is larger than this gateway accepts ({limit} bytes).",
    )


def check_content_type(content_type: bytes | None) -> None:
    if content_type is None:
        raise GatewayError(
            415,
            "unsupported_media_type",
            "Send the body as JSON with 'Content-Type: application/json'.",
        )
    media = content_type.split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        raise GatewayError(
            415,
            "unsupported_media_type",
            f"Content-Type {media.decode('latin-1')!r} is not supported; send application/json.",
        )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"The request body is not valid JSON ({exc.msg}).", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request(
            "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
        )
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_request("'model' must be a non-empty string.", code="invalid_type", param="model")
    if CONTROL_CHARACTERS.search(model):
        # The name is echoed in errors and kept in the audit record.
        raise bad_request(
            "'model' may not contain control characters.", code="invalid_type", param="model"
        )
    return model


def validate(operation: Operation, body: dict[str, Any]) -> None:
    """The fields the gateway itself relies on; the provider checks the rest."""
    if operation == "embeddings":
        _embeddings_input(body)
        if body.get("stream") not in (None, False):
            # Not a stream the provider would send: refused before any limit is charged.
            raise bad_request("Embeddings are not streamed: leave out 'stream'.", param="stream")
        return
    if operation == "responses":
        _responses_fields(body)
        return
    messages = body.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.",
            code="missing_required_parameter",
            param="messages",
        )
    if not isinstance(messages, list) or not messages:
        raise bad_request(
            "'messages' must be a non-empty array.", code="invalid_type", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(
                f"'messages[{index}]' must be an object with a string 'role'.",
                code="invalid_type",
                param=f"messages[{index}]",
            )
    _optional(body, "stream", bool, "a boolean")
    _optional(body, "stream_options", dict, "an object")
    for field in _COUNTS[operation]:
        _optional_count(body, field)
    _optional(body, "tools", list, "an array")
    if operation == "messages":
        if "max_tokens" not in body:
            raise bad_request(
                "Missing required parameter: 'max_tokens'.",
                code="missing_required_parameter",
                param="max_tokens",
            )
        _optional(body, "system", str | list, "a string or an array of text blocks")


#: The integers of each operation's body the gateway reads (reservations, translation) or
#: records (``gen_ai.request.max_tokens``).
_COUNTS: dict[str, tuple[str, ...]] = {
    "chat": ("max_tokens", "max_completion_tokens", "n"),
    "messages": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "count_tokens": (),  # a count has no output: Anthropic's endpoint takes no max_tokens
}


def _responses_fields(body: dict[str, Any]) -> None:
    """``input`` is what budgets estimate and translations read, so the gateway requires it
    (OpenAI allows leaving it out when a stored conversation supplies it)."""
    value = body.get("input")
    if value is None:
        raise bad_request(
            "Missing required parameter: 'input'.", code="missing_required_parameter", param="input"
        )
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise bad_request(
            "'input' must be a string or a non-empty array of input items.",
            code="invalid_type",
            param="input",
        )
    for index, item in enumerate(value if isinstance(value, list) else ()):
        if not isinstance(item, dict):
            raise bad_request(
                f"'input[{index}]' must be an object.", code="invalid_type", param=f"input[{index}]"
            )
    _optional(body, "stream", bool, "a boolean")
    _optional(body, "instructions", str, "a string")
    _optional(body, "tools", list, "an array")
    _optional_count(body, "max_output_tokens")


def _embeddings_input(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise bad_request(
            "Missing required parameter: 'input'.", code="missing_required_parameter", param="input"
        )
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
        return
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return
    raise bad_request(
        "'input' must be a string, an array of strings, or token arrays.",
        code="invalid_type",
        param="input",
    )


def _optional(body: dict[str, Any], field: str, kind: Any, described: str) -> None:
    if field in body and body[field] is not None and not isinstance(body[field], kind):
        raise bad_request(f"'{field}' must be {described}.", code="invalid_type", param=field)


def _optional_count(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        # The bound keeps every count, reservation and cost derived from it recordable.
        raise bad_request(
            f"'{field}' must be a positive integer no larger than {MAX_TOKENS}.",
            code="invalid_type",
            param=field,
        )

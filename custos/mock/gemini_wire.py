"""Gemini wire format (AI Studio and Vertex AI): JSON and SSE replies, errors, the token endpoint.

The token formula is the other formats' (see ``custos.mock``): every content
counts ``PER_MESSAGE_TOKENS`` plus the tokens of its parts' texts (``text``; a
``functionCall``'s name and compact JSON ``args``; a ``functionResponse``'s name and compact
JSON ``response``); a ``systemInstruction`` with text counts as one more content.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .content import (
    PER_MESSAGE_TOKENS,
    Reply,
    count_tokens,
    split_evenly,
    text_pieces,
    text_reply,
    tool_reply,
)
from .knobs import BadRequest, Knobs

# status -> (Google RPC status, message)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument (mock)."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials (mock)."),
    403: ("PERMISSION_DENIED", "The caller does not have permission (mock)."),
    404: ("NOT_FOUND", "Requested entity was not found (mock)."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota) (mock)."),
    500: ("INTERNAL", "An internal error has occurred (mock)."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later (mock)."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete (mock)."),
}


def google_error(status: int, message: str | None = None, *, reason: str | None = None) -> bytes:
    """``{"error": {"code", "message", "status"}}`` for ``status``, with an ``ErrorInfo``
    detail when ``reason`` is given (as Google says ``API_KEY_INVALID``)."""
    kind, default_message = _ERRORS.get(status, ("UNKNOWN", "Error (mock)."))
    error: dict[str, Any] = {"code": status, "message": message or default_message, "status": kind}
    if reason is not None:
        info = "type.googleapis.com/google.rpc.ErrorInfo"
        error["details"] = [{"@type": info, "reason": reason, "domain": "googleapis.com"}]
    return orjson.dumps({"error": error})


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _part_texts(part: Any) -> list[str]:
    if not isinstance(part, dict):
        return []
    if isinstance(part.get("text"), str):
        return [part["text"]]
    for key, payload in (("functionCall", "args"), ("functionResponse", "response")):
        inner = part.get(key)
        if isinstance(inner, dict):
            return [str(inner.get("name", "")), _json(inner.get(payload, {}))]
    return []


def _content_tokens(content: Any) -> int:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise BadRequest(
            "* GenerateContentRequest.contents.parts: contents.parts must not be empty"
        )
    return PER_MESSAGE_TOKENS + sum(count_tokens(t) for p in parts for t in _part_texts(p))


def prompt_tokens_gemini(body: dict[str, Any]) -> int:
    """``promptTokenCount`` for a request (formula in the module docstring)."""
    total = sum(_content_tokens(c) for c in body.get("contents") or [])
    system = body.get("systemInstruction")
    if isinstance(system, dict) and any(_part_texts(p) for p in system.get("parts") or []):
        total += _content_tokens(system)
    return total


@dataclass(frozen=True, slots=True)
class GeminiPlan:
    response_id: str
    model: str
    reply: Reply
    prompt_tokens: int
    cached_tokens: int
    thoughts_tokens: int


def _chosen_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    declarations = [
        d
        for tool in body.get("tools") or ()
        if isinstance(tool, dict)
        for d in tool.get("functionDeclarations") or ()
        if isinstance(d, dict) and "name" in d
    ]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not declarations or config.get("mode") == "NONE":
        return None
    allowed = config.get("allowedFunctionNames") or []
    chosen = next((d for d in declarations if d["name"] in allowed), declarations[0])
    schema = chosen.get("parametersJsonSchema", chosen.get("parameters"))
    return str(chosen["name"]), schema


def plan_generate(body: dict[str, Any], model: str, knobs: Knobs, digest: str) -> GeminiPlan:
    """Validate a ``generateContent`` request and decide the reply (raises BadRequest)."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents or not isinstance(contents[-1], dict):
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = body.get("generationConfig") or {}
    max_tokens = config.get("maxOutputTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("* GenerationConfig.max_output_tokens: must be a positive integer")
    last = contents[-1]
    parts = last.get("parts") or []
    tool_result = any(isinstance(p, dict) and "functionResponse" in p for p in parts)
    tool = _chosen_tool(body) if last.get("role", "user") == "user" and not tool_result else None
    if tool is not None:
        reply = tool_reply(*tool)
    else:
        prompt = " ".join(t for p in parts for t in _part_texts(p))
        reply = text_reply(
            prompt, tool_result=tool_result, words=knobs.words, max_tokens=max_tokens
        )
    prompt_tokens = prompt_tokens_gemini(body)
    return GeminiPlan(
        response_id=digest,
        model=model,
        reply=reply,
        prompt_tokens=prompt_tokens,
        cached_tokens=min(knobs.cached_tokens, prompt_tokens),
        thoughts_tokens=knobs.thoughts_tokens,
    )


def _usage(plan: GeminiPlan, output_tokens: int, *, final: bool) -> dict[str, Any]:
    thoughts = plan.thoughts_tokens if final else 0
    usage: dict[str, Any] = {
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": plan.prompt_tokens + output_tokens + thoughts,
    }
    if plan.cached_tokens:
        usage["cachedContentTokenCount"] = plan.cached_tokens
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _finish_reason(reply: Reply) -> str:
    return "MAX_TOKENS" if reply.truncated else "STOP"


def _response(
    plan: GeminiPlan, parts: list[dict[str, Any]], finish: str | None, usage: Any
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        out["usageMetadata"] = usage
    out["modelVersion"] = plan.model
    out["responseId"] = plan.response_id
    return out


def _call_part(plan: GeminiPlan) -> dict[str, Any]:
    """The reply's function call; a thinking reply (``thoughts_tokens``) signs it, as Gemini's
    thinking models do, with a signature whose base64 has ``+``, ``/`` and padding."""
    call = plan.reply.tool_call
    assert call is not None
    part: dict[str, Any] = {
        "functionCall": {"name": call.name, "args": orjson.loads(call.arguments)}
    }
    if plan.thoughts_tokens:
        part["thoughtSignature"] = thought_signature(plan.response_id)
    return part


def thought_signature(response_id: str) -> str:
    return base64.b64encode(b"\xfb\xff\xbf" + response_id.encode()[:10]).decode()


def generate_json(plan: GeminiPlan) -> bytes:
    """The non-streaming ``GenerateContentResponse``."""
    part = _call_part(plan) if plan.reply.tool_call else {"text": plan.reply.text}
    usage = _usage(plan, plan.reply.output_tokens, final=True)
    return orjson.dumps(_response(plan, [part], _finish_reason(plan.reply), usage))


def blocked_json(plan: GeminiPlan) -> bytes:
    """A prompt blocked by the safety filters: no candidates, ``promptFeedback.blockReason``."""
    return orjson.dumps(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {
                "promptTokenCount": plan.prompt_tokens,
                "totalTokenCount": plan.prompt_tokens,
            },
            "modelVersion": plan.model,
            "responseId": plan.response_id,
        }
    )


def _sse(payload: dict[str, Any]) -> bytes:
    # Google separates events with CRLF pairs.
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


_GARBAGE_EVENT = b'data: {"candidates": [<garbage>\r\n\r\n'


def generate_events(plan: GeminiPlan, knobs: Knobs) -> list[bytes]:
    """A ``streamGenerateContent?alt=sse`` stream: text fragments (or one function call), the
    last with ``finishReason``; each carries the usage so far (the last the final usage), unless
    ``no_usage``. There is no terminating event: the stream ends with the connection's body."""
    if plan.reply.tool_call is not None:
        pieces: list[dict[str, Any]] = [_call_part(plan)]
    else:
        pieces = [{"text": t} for t in text_pieces(plan.reply.words, knobs.chunks)]
    events = []
    produced = 0
    counts = split_evenly(list(range(plan.reply.output_tokens)), len(pieces))
    for index, part in enumerate(pieces):
        last = index == len(pieces) - 1
        produced += len(counts[index]) if index < len(counts) else 0
        output = plan.reply.output_tokens if last else produced
        usage = None if knobs.no_usage else _usage(plan, output, final=last)
        finish = _finish_reason(plan.reply) if last else None
        events.append(_sse(_response(plan, [part], finish, usage)))
    if knobs.malformed:
        events.insert(min(1, len(events)), _GARBAGE_EVENT)
    return events


MALFORMED_JSON = b'{"candidates": [{"content": <garbage'


# ---------------------------------------------------------------- Vertex's token endpoint


@dataclass(slots=True)
class TokenIssuer:
    """Access tokens for service-account JWT grants (``POST /token``), and their check."""

    issued: dict[str, float]
    exchanges: int = 0

    def exchange(self, form: dict[str, str], token_url: str, lifetime_s: int) -> bytes:
        """Check the grant as Google would (a JWT-bearer grant whose assertion is an RS256 JWT
        for this audience, with iss, scope, iat and exp at most an hour apart) and issue a
        token; the signature is checked by the tests, which hold the public key."""
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise BadRequest("invalid_grant: unsupported grant_type")
        header, claims = _jwt_parts(form.get("assertion", ""))
        if header.get("alg") != "RS256":
            raise BadRequest("invalid_grant: the assertion is not signed with RS256")
        for field in ("iss", "scope", "aud", "iat", "exp"):
            if field not in claims:
                raise BadRequest(f"invalid_grant: the assertion has no {field}")
        if claims["aud"] != token_url:
            raise BadRequest("invalid_grant: Invalid JWT audience")
        if not 0 < claims["exp"] - claims["iat"] <= 3600:
            raise BadRequest("invalid_grant: Invalid JWT: exp is more than an hour after iat")
        self.exchanges += 1
        token = f"ya29.mock-{self.exchanges}-{int(time.time() * 1000)}"
        self.issued[token] = time.monotonic() + lifetime_s
        return orjson.dumps(
            {"access_token": token, "expires_in": lifetime_s, "token_type": "Bearer"}
        )

    def valid(self, authorization: bytes | None) -> bool:
        if authorization is None or not authorization.startswith(b"Bearer "):
            return False
        expires = self.issued.get(authorization[7:].decode("latin-1"))
        return expires is not None and expires > time.monotonic()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwt_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pieces = assertion.split(".")
    if len(pieces) != 3:
        raise BadRequest("invalid_grant: the assertion is not a JWT")
    try:
        decoded = [
            orjson.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in pieces[:2]
        ]
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("invalid_grant: the assertion is not a JWT") from None
    if not all(isinstance(d, dict) for d in decoded):
        raise BadRequest("invalid_grant: the assertion is not a JWT")
    return decoded[0], decoded[1]

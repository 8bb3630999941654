"""AWS Bedrock Runtime wire format: Converse JSON, ConverseStream's binary event stream, SigV4
verification and AWS's error shape."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from custos.providers.eventstream import json_message

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

# status -> (exception name, message), as Bedrock Runtime names them
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "Malformed input request (mock)."),
    403: ("AccessDeniedException", "You don't have access to the model (mock)."),
    404: ("ResourceNotFoundException", "The model was not found (mock)."),
    408: ("ModelTimeoutException", "The model took too long (mock)."),
    424: ("ModelErrorException", "The model failed to process the request (mock)."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again (mock)."),
    500: ("InternalServerException", "Internal server error (mock)."),
    503: ("ServiceUnavailableException", "Service unavailable (mock)."),
}


def bedrock_error(status: int, message: str | None = None) -> tuple[bytes, str]:
    """The body and the ``x-amzn-errortype`` header value of an error with ``status``."""
    name, default = _ERRORS.get(
        status, ("InternalServerException" if status >= 500 else "ValidationException", "Error.")
    )
    return orjson.dumps({"message": message or default}), name


# ---------------------------------------------------------------------------- SigV4

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)


def verify_sigv4(
    raw_path: bytes, query: bytes, headers: dict[bytes, bytes], body: bytes, secret: str
) -> str | None:
    """None when the request is signed with ``secret`` for service ``bedrock``, else why not."""
    match = _AUTHORIZATION.match(headers.get(b"authorization", b"").decode("latin-1"))
    if match is None:
        return "Missing or malformed Authorization header (expected AWS SigV4)."
    access_key, day, region, service, signed, signature = match.groups()
    amz_date = headers.get(b"x-amz-date", b"").decode("latin-1")
    if service != "bedrock" or not amz_date.startswith(day):
        return "Credential should be scoped to a valid date and the bedrock service."
    names = signed.split(";")
    if "host" not in names or any(name.encode() not in headers for name in names):
        return "The signed headers must include host and be present."
    url = "http://" + headers[b"host"].decode("latin-1") + raw_path.decode("latin-1")
    if query:
        url += "?" + query.decode("latin-1")
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={name: headers[name.encode()].decode("latin-1") for name in names},
    )
    request.context["timestamp"] = amz_date
    token = headers.get(b"x-amz-security-token")
    signer = SigV4Auth(
        Credentials(access_key, secret, token.decode() if token else None), service, region
    )
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, signature):
        return (
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return None


# ---------------------------------------------------------------------------- requests


def _block_texts(block: Any) -> list[str]:
    """The strings of one Converse content block that count towards input tokens."""
    if not isinstance(block, dict):
        return []
    if isinstance(block.get("text"), str):
        return [block["text"]]
    tool = block.get("toolUse")
    if isinstance(tool, dict):
        return [str(tool.get("name", "")), orjson.dumps(tool.get("input", {})).decode()]
    result = block.get("toolResult")
    if isinstance(result, dict):
        texts = []
        for item in result.get("content") or ():
            if isinstance(item, dict) and "json" in item:
                texts.append(orjson.dumps(item["json"]).decode())
            else:
                texts += _block_texts(item)
        return texts
    return []


def prompt_tokens_converse(body: dict[str, Any]) -> int:
    """The shared formula: per message 4 + tokens of its texts; a non-empty ``system`` is one
    more message (its ``text`` blocks)."""
    total = 0
    system = [t for block in body.get("system") or () for t in _block_texts(block)]
    if system:
        total += PER_MESSAGE_TOKENS + sum(count_tokens(text) for text in system)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            texts = [t for block in message.get("content") or () for t in _block_texts(block)]
            total += PER_MESSAGE_TOKENS + sum(count_tokens(text) for text in texts)
    return total


@dataclass(frozen=True, slots=True)
class ConversePlan:
    """One Converse reply, decided."""

    tool_use_id: str
    reply: Reply
    usage: dict[str, int]


def _chosen_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    config = body.get("toolConfig")
    config = config if isinstance(config, dict) else {}
    specs = [
        t["toolSpec"]
        for t in config.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)
    ]
    if not specs:
        return None
    choice = config.get("toolChoice")
    wanted = choice["tool"].get("name") if isinstance(choice, dict) and "tool" in choice else None
    spec = next((s for s in specs if s.get("name") == wanted), specs[0])
    schema = spec.get("inputSchema")
    return str(spec.get("name")), schema.get("json") if isinstance(schema, dict) else None


def _validate(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise BadRequest("A conversation must start with a user message.")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("Messages must have the role user or assistant.")
        if not isinstance(message.get("content"), list):
            raise BadRequest("Message content must be a list of content blocks.")
        uses_tools = any(
            isinstance(b, dict) and ("toolUse" in b or "toolResult" in b)
            for b in message["content"]
        )
        if uses_tools and not body.get("toolConfig"):
            raise BadRequest(
                "The toolConfig field must be defined when using toolUse and toolResult "
                "content blocks."
            )
    return messages


def plan_converse(body: dict[str, Any], knobs: Knobs, digest: str) -> ConversePlan:
    """Validate a Converse request and decide the reply (raises BadRequest)."""
    messages = _validate(body)
    last = messages[-1]
    content = last["content"]
    tool_result = any(isinstance(b, dict) and "toolResult" in b for b in content)
    tool = _chosen_tool(body) if last.get("role") == "user" and not tool_result else None
    config = body.get("inferenceConfig")
    max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
    if tool is not None:
        reply = tool_reply(*tool)
    else:
        prompt = " ".join(t for block in content for t in _block_texts(block))
        reply = text_reply(
            prompt, tool_result=tool_result, words=knobs.words, max_tokens=max_tokens
        )
    prompt_tokens = prompt_tokens_converse(body)
    read = min(knobs.cached_tokens, prompt_tokens)
    written = min(knobs.cache_write_tokens, prompt_tokens - read)
    usage = {
        "inputTokens": prompt_tokens - read - written,
        "outputTokens": reply.output_tokens,
        "totalTokens": prompt_tokens + reply.output_tokens,
    }
    if read or written:
        usage |= {"cacheReadInputTokens": read, "cacheWriteInputTokens": written}
    return ConversePlan("tooluse_" + digest, reply, usage)


def _stop_reason(reply: Reply) -> str:
    if reply.tool_call is not None:
        return "tool_use"
    return "max_tokens" if reply.truncated else "end_turn"


def converse_json(plan: ConversePlan) -> bytes:
    call = plan.reply.tool_call
    if call is None:
        block: dict[str, Any] = {"text": plan.reply.text}
    else:
        arguments = orjson.loads(call.arguments)
        block = {"toolUse": {"toolUseId": plan.tool_use_id, "name": call.name, "input": arguments}}
    return orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [block]}},
            "stopReason": _stop_reason(plan.reply),
            "usage": plan.usage,
            "metrics": {"latencyMs": 1},
        }
    )


MALFORMED_JSON = b'{"output": {"message": {"role": "assistant", "content": [<garbage'


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return json_message("event", kind, orjson.dumps(payload))


def converse_events(plan: ConversePlan, knobs: Knobs) -> list[bytes]:
    """Every message of a ConverseStream answer, messageStart to metadata."""
    call = plan.reply.tool_call
    events = [_event("messageStart", {"role": "assistant"})]
    if call is None:
        deltas = [{"text": p} for p in text_pieces(plan.reply.words, knobs.chunks)]
    else:
        start = {"toolUse": {"toolUseId": plan.tool_use_id, "name": call.name}}
        events.append(_event("contentBlockStart", {"contentBlockIndex": 0, "start": start}))
        deltas = [{"toolUse": {"input": f}} for f in split_evenly(call.arguments, knobs.chunks)]
    events += [_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": d}) for d in deltas]
    events.append(_event("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(_event("messageStop", {"stopReason": _stop_reason(plan.reply)}))
    metadata: dict[str, Any] = {"metrics": {"latencyMs": 1}}
    if not knobs.no_usage:
        metadata["usage"] = plan.usage
    events.append(_event("metadata", metadata))
    if knobs.malformed:
        # A message whose CRC does not match its bytes.
        corrupt = bytearray(events[1])
        corrupt[-1] ^= 0xFF
        events[1] = bytes(corrupt)
    if knobs.stream_exception:
        message = orjson.dumps({"message": "Too many tokens, please wait (mock)."})
        events[2:] = [json_message("exception", "throttlingException", message)]
    return events

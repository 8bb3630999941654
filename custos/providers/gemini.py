"""The Gemini wire format (``generateContent``, ``streamGenerateContent?alt=sse``).

Spoken by Google AI Studio (``gemini``: an API key in ``x-goog-api-key``, never in the URL, where
it could reach a log) and by Vertex AI (``vertex``, ``custos.providers.vertex``: the same bodies
at a regional, per-project URL with an OAuth access token).

Both client protocols are translated; neither is Gemini's, so nothing is forwarded as received.
An OpenAI chat request is translated directly (``openai_request_to_gemini``); an Anthropic one is
first made an OpenAI request by ``custos.providers.translate`` (whose rules it inherits), with
the fields that translation has no place for (``top_k``, ``thinking``) mapped here. Every field
of either protocol is either mapped or refused with a 400 naming it; the table is in
docs/architecture.md. Responses and streams come back the same way round: Gemini to OpenAI
chat, and on to Anthropic Messages for Anthropic clients, with ids in the client's own shape.

Thinking models sign their function calls (``thoughtSignature``) and want the signature back with
the call in the history; it travels inside the tool call's id (``with_signature``).

Usage: Gemini's ``promptTokenCount`` includes ``cachedContentTokenCount``; its
``candidatesTokenCount`` excludes ``thoughtsTokenCount``, which is billed as output. So input is
prompt (plus tool-use prompt) tokens, cached input the cached count, output candidates plus
thoughts, reasoning the thoughts.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import orjson

from custos.errors import GatewayError, bad_request
from custos.providers import responses, translate
from custos.providers.base import (
    MAX_DETAIL_CHARS,
    ChainedStreamTranslator,
    ParsedResponse,
    ProviderAdapter,
    ProviderCall,
    StreamTranslator,
    UpstreamMalformed,
)
from custos.providers.sse import SSEDecoder, SSEEvent, encode_event
from custos.providers.upstream import UpstreamRequest
from custos.wire import Operation, Usage

#: Gemini finishReason -> OpenAI finish_reason (a reply with function calls is "tool_calls").
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}

#: OpenAI chat request fields and what becomes of them (see ``_generation_config`` and friends).
_OPENAI_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",  # transport: usage is always reported by Gemini
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "reasoning_effort",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        # End-user ids for OpenAI's abuse monitoring: Gemini has none, the record names the
        # caller. Not sent.
        "user",
        "safety_identifier",
        "prompt_cache_key",  # a caching hint; Gemini caches repeated prefixes by itself
        "store",
        "service_tier",
    }
)
#: Anthropic Messages fields; the shared translation maps the first group, this module the rest.
_ANTHROPIC_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "top_k",
        "thinking",
        "output_config",
        "cache_control",  # a caching hint; Gemini caches repeated prefixes by itself
        "service_tier",
    }
)
#: Keys of an OpenAI chat message that map (``name``, ``audio`` and ``function_call`` do not).
_MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "refusal"})
#: reasoning_effort -> thinkingConfig (Gemini 3 takes a level; "none" turns thinking off).
_THINKING_LEVELS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high"}


# -- requests ------------------------------------------------------------------------------------


def openai_request_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a Gemini ``GenerateContentRequest`` (the model is in the URL)."""
    _refuse_unknown(body, _OPENAI_FIELDS, "an OpenAI chat request")
    _refuse_values(body)
    system, contents = _contents(body.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    out.update(_tools(body))
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


#: Anthropic fields mapped to Gemini directly rather than through the OpenAI translation (which
#: has no place for top_k, and would turn thinking and output_config into OpenAI's coarser
#: reasoning_effort and response_format).
_MAPPED_HERE = frozenset({"top_k", "thinking", "output_config"})


def anthropic_request_to_gemini(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request as a Gemini request, through the OpenAI translation."""
    _refuse_unknown(body, _ANTHROPIC_FIELDS, "an Anthropic Messages request")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        extra = sorted(set(metadata) - {"user_id"})[0]
        raise bad_request(
            f"metadata.{extra} cannot be sent to a Gemini model", param=f"metadata.{extra}"
        )
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise bad_request(_SERVICE_TIER_REFUSAL, param="service_tier")
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if choice is not None and not body.get("tools") and kind not in ("auto", "none"):
        # The OpenAI translation leaves a choice without tools out; here it must be refused.
        raise bad_request("tool_choice needs tools", param="tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
        raise bad_request(
            "disable_parallel_tool_use cannot be enforced by Gemini models",
            param="tool_choice.disable_parallel_tool_use",
        )
    try:
        openai = translate.anthropic_request_to_openai(
            {k: v for k, v in body.items() if k not in _MAPPED_HERE}, model
        )
    except GatewayError as err:
        # The translation's refusals name the provider it was written for; name this one.
        err.message = err.message.replace("OpenAI", "Gemini")
        err.args = (err.message,)
        raise
    openai.pop("stream_options", None)
    out = openai_request_to_gemini(openai)
    config = out.setdefault("generationConfig", {})
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < 1:
            raise bad_request("top_k must be a positive integer", param="top_k")
        config["topK"] = top_k
    thinking = _anthropic_thinking(body.get("thinking"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    config.update(_output_config(body.get("output_config"), config))
    if not config:
        del out["generationConfig"]
    return out


#: Gemini serves a request that names no tier at its standard tier: the values that ask for that
#: pass unsent, others are refused (the gateway does not choose Gemini's other tiers).
_SERVICE_TIER_REFUSAL = (
    "service_tier can only ask for the standard tier (auto, default, standard_only) when the "
    "model is served by Gemini"
)


def responses_request_to_gemini(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A Responses request, through its Anthropic translation (``custos.providers.responses``,
    whose refusals it inherits, naming this provider), then as an Anthropic request."""
    anthropic = responses.request_through_anthropic(body, model, "Gemini")
    out = anthropic_request_to_gemini(anthropic, model)
    if body.get("max_output_tokens") is None:
        # The Anthropic translation needs a number and puts a default in; Gemini does not,
        # and the model's own limit serves the caller better than an arbitrary one.
        out.get("generationConfig", {}).pop("maxOutputTokens", None)
        if out.get("generationConfig") == {}:
            del out["generationConfig"]
    return out


def _refuse_unknown(body: dict[str, Any], known: frozenset[str], what: str) -> None:
    for key in body:
        if key not in known:
            raise bad_request(
                f"{key} is not supported when the model is served by Gemini "
                f"(not a field of {what} that has a Gemini equivalent)",
                param=key,
            )


def _refuse_values(body: dict[str, Any]) -> None:
    """Fields that Gemini can honour only with some values."""
    if body.get("n") not in (None, 1):
        raise bad_request("n > 1 is not supported for Gemini models: ask for one choice", param="n")
    if body.get("parallel_tool_calls") is False:
        raise bad_request(
            "parallel_tool_calls: false cannot be enforced by Gemini models",
            param="parallel_tool_calls",
        )
    if body.get("store"):
        raise bad_request("store: true is not supported for Gemini models", param="store")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise bad_request(_SERVICE_TIER_REFUSAL, param="service_tier")
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise bad_request("user must be a string", param="user")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are sent
        value = body.get(key)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise bad_request(f"{key} must be a positive integer", param=key)
            config["maxOutputTokens"] = value
            break
    numbers = {
        "temperature": "temperature",
        "top_p": "topP",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
        "seed": "seed",
    }
    for key, name in numbers.items():
        value = body.get(key)
        if value is None:
            continue
        if not _is_number(value) or (key == "seed" and not _is_int(value)):
            raise bad_request(f"{key} must be a number", param=key)
        config[name] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            config["stopSequences"] = stop
    elif stop is not None:
        raise bad_request("stop must be a string or an array of strings", param="stop")
    config.update(_response_format(body.get("response_format")))
    thinking = _reasoning_effort(body.get("reasoning_effort"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format.json_schema.schema must be an object",
                param="response_format.json_schema.schema",
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise bad_request(
        "response_format.type must be text, json_object or json_schema", param="response_format"
    )


def _reasoning_effort(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if value == "none":
        return {"thinkingBudget": 0}
    if value in _THINKING_LEVELS:
        return {"thinkingLevel": _THINKING_LEVELS[value]}
    raise bad_request(
        "reasoning_effort must be none, minimal, low, medium or high", param="reasoning_effort"
    )


def _anthropic_thinking(value: Any) -> dict[str, Any] | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None:
        return None
    if kind == "disabled":
        return {"thinkingBudget": 0}
    if kind == "adaptive":
        return {"thinkingBudget": -1}  # Gemini's dynamic thinking
    budget = value.get("budget_tokens") if kind == "enabled" else None
    if _is_int(budget) and budget >= 0:
        return {"thinkingBudget": budget}
    raise bad_request(
        "thinking must be disabled, adaptive, or enabled with budget_tokens", param="thinking"
    )


#: Anthropic's effort -> Gemini's thinking level (Gemini's highest is "high").
_EFFORT_LEVELS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _output_config(value: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's ``output_config``: ``format`` (a JSON schema) and ``effort``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("output_config must be an object", param="output_config")
    out: dict[str, Any] = {}
    for key, setting in value.items():
        if setting is None:
            continue
        if key == "format":
            schema = setting.get("schema") if isinstance(setting, dict) else None
            if not isinstance(schema, dict) or setting.get("type") != "json_schema":
                raise bad_request(
                    "output_config.format must be a json_schema with a schema",
                    param="output_config.format",
                )
            out.update(responseMimeType="application/json", responseJsonSchema=schema)
        elif key == "effort" and setting in _EFFORT_LEVELS:
            if "thinkingConfig" in config:
                raise bad_request(
                    "output_config.effort and thinking both set Gemini's thinking: send one",
                    param="output_config.effort",
                )
            out["thinkingConfig"] = {"thinkingLevel": _EFFORT_LEVELS[setting]}
        else:
            raise bad_request(
                f"output_config.{key} cannot be sent to a Gemini model",
                param=f"output_config.{key}",
            )
    return out


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System parts, and user/model turns merged so that roles alternate."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        for key, value in message.items() if isinstance(message, dict) else ():
            # An SDK's message object echoed back carries its empty fields (audio: null...).
            if key not in _MESSAGE_FIELDS and value not in (None, [], ""):
                raise bad_request(
                    f"{where}.{key} cannot be sent to a Gemini model", param=f"{where}.{key}"
                )
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content"), where, media=False))
            continue
        if role == "user":
            parts = _parts(message.get("content"), where, media=True)
        elif role == "assistant":
            role, parts = "model", _model_parts(message, where, names)
        elif role == "tool":
            role, parts = "user", [_function_response(message, where, names)]
        else:
            raise bad_request(f"{where}.role {role!r} is not supported", param=f"{where}.role")
        if not parts:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["parts"].extend(parts)  # parallel calls' results share one turn
        else:
            turns.append({"role": role, "parts": parts})
    if not turns:
        raise bad_request("messages must contain a user or assistant message", param="messages")
    return system, turns


def _parts(content: Any, where: str, *, media: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            if part[kind]:
                parts.append({"text": part[kind]})
        elif kind == "image_url" and media:
            parts.append(_image_part(part.get("image_url"), at))
        elif kind == "input_audio" and media:
            parts.append(_audio_part(part.get("input_audio"), at))
        else:
            raise bad_request(
                f"{at}: content part {kind!r} cannot be sent to a Gemini model", param=at
            )
    return parts


def _image_part(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if comma and "base64" in params and media_type.lower().startswith("image/"):
            return {"inlineData": {"mimeType": media_type.lower(), "data": data}}
    # Gemini fetches no http(s) URLs (fileData takes uploaded files or gs:// objects only).
    raise bad_request(f"{where}: images for Gemini models must be base64 data URLs", param=where)


def _audio_part(audio: Any, where: str) -> dict[str, Any]:
    data = audio.get("data") if isinstance(audio, dict) else None
    kind = audio.get("format") if isinstance(audio, dict) else None
    if isinstance(data, str) and kind in ("wav", "mp3"):
        return {"inlineData": {"mimeType": f"audio/{kind}", "data": data}}
    raise bad_request(f"{where}: input_audio needs base64 data and format wav or mp3", param=where)


def _model_parts(
    message: dict[str, Any], where: str, names: dict[str, str]
) -> list[dict[str, Any]]:
    parts = _parts(message.get("content"), where, media=False)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise bad_request(f"{at}: only function tool calls can be sent to Gemini", param=at)
        name = function.get("name")
        if not isinstance(call.get("id"), str) or not isinstance(name, str):
            raise bad_request(f"{at} needs an id and a function name", param=at)
        names[call["id"]] = name
        arguments = translate._request_arguments(
            function.get("arguments"), f"{at}.function.arguments"
        )
        part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
        signature = signature_of(call["id"])
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(
    message: dict[str, Any], where: str, names: dict[str, str]
) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise bad_request(f"{where}.tool_call_id must be a string", param=f"{where}.tool_call_id")
    name = names.get(call_id)
    if name is None:
        # Gemini matches a result to its call by the function's name, which only the earlier
        # assistant turn says.
        raise bad_request(
            f"{where}.tool_call_id {call_id!r} answers no tool call of an earlier assistant "
            "message",
            param=f"{where}.tool_call_id",
        )
    content = message.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "".join(p["text"] for p in _parts(content, where, media=False))
    return {"functionResponse": {"name": name, "response": {"result": text}}}


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return {}
    if not isinstance(tools, list):
        raise bad_request("tools must be an array", param="tools")
    declarations = [_declaration(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
    out: dict[str, Any] = {"tools": [{"functionDeclarations": declarations}]}
    config = _function_calling_config(choice)
    if config:
        out["toolConfig"] = {"functionCallingConfig": config}
    return out


def _declaration(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise bad_request(f"{where}: only function tools can be sent to Gemini", param=where)
    if not isinstance(function.get("name"), str):
        raise bad_request(f"{where}.function.name must be a string", param=f"{where}.function.name")
    out: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise bad_request(
                f"{where}.function.parameters must be an object",
                param=f"{where}.function.parameters",
            )
        # JSON Schema as clients write it; Gemini's older ``parameters`` takes an OpenAPI subset.
        out["parametersJsonSchema"] = parameters
    if function.get("strict"):
        raise bad_request(
            f"{where}.function.strict is not supported for Gemini models",
            param=f"{where}.function.strict",
        )
    return out


def _function_calling_config(choice: Any) -> dict[str, Any]:
    simple = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if choice is None:
        return {}
    if isinstance(choice, str) and choice in simple:
        return {"mode": simple[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(name, str) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise bad_request(
        "tool_choice must be auto, none, required or a named function", param="tool_choice"
    )


# -- responses -----------------------------------------------------------------------------------


def usage_from_gemini(data: Any) -> Usage | None:
    """Normalise Gemini's ``usageMetadata`` (see the module docstring)."""
    if not isinstance(data, dict) or not _is_int(data.get("promptTokenCount")):
        return None
    thoughts = _count(data, "thoughtsTokenCount")
    return Usage(
        input_tokens=data["promptTokenCount"] + _count(data, "toolUsePromptTokenCount"),
        output_tokens=_count(data, "candidatesTokenCount") + thoughts,
        cached_input_tokens=_count(data, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if _is_int(value) and value > 0 else 0


def openai_usage(usage: Usage) -> dict[str, Any]:
    out = translate.openai_usage(usage)
    out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


class Ids:
    """Ids in the client's shape: ``chatcmpl-…``/``call_…`` or ``msg_…``/``toolu_…``."""

    def __init__(self, message_prefix: str, call_prefix: str) -> None:
        self.message_prefix = message_prefix
        self.call_prefix = call_prefix
        self._base = ""
        self._calls = 0

    def message(self, response_id: Any) -> str:
        if not self._base:
            raw = response_id if isinstance(response_id, str) and response_id else None
            self._base = raw or secrets.token_hex(12)
        return self.message_prefix + self._base

    def call(self, function_call: dict[str, Any], signature: Any = None) -> str:
        given = function_call.get("id")
        if isinstance(given, str) and given:
            call_id = self.call_prefix + given
        else:
            self._calls += 1
            call_id = f"{self.call_prefix}{self._base}_{self._calls}"
        return with_signature(call_id, signature)


#: Separates a tool call's id from the thought signature it carries (see ``with_signature``).
_SIGNATURE_MARK = "_ts_"


def with_signature(call_id: str, signature: Any) -> str:
    """The call id carrying Gemini's ``thoughtSignature``, which a thinking model wants back
    with the call in the next turn's history: clients return tool call ids as they got them,
    so the gateway keeps no state and any replica can send it back. Base64url, so the id stays
    within ``[A-Za-z0-9_-]``, as Anthropic requires of ids should the history reach Claude."""
    if not isinstance(signature, str) or not signature:
        return call_id
    encoded = signature.rstrip("=").replace("+", "-").replace("/", "_")
    # The first mark found is the separator: the id before it must not contain one.
    return f"{call_id.replace(_SIGNATURE_MARK, '-ts-')}{_SIGNATURE_MARK}{encoded}"


def signature_of(call_id: str) -> str | None:
    """The thought signature a call id carries, in Gemini's base64, or None."""
    at = call_id.find(_SIGNATURE_MARK)
    if at < 0:
        return None
    encoded = call_id[at + len(_SIGNATURE_MARK) :]
    if not encoded:
        return None
    return encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4)


def ids_for(protocol: str) -> Ids:
    return Ids("msg_", "toolu_") if protocol == "anthropic" else Ids("chatcmpl-", "call_")


def prompt_blocked(data: dict[str, Any], account: str) -> GatewayError | None:
    """The error for a prompt Gemini refused to answer (``promptFeedback.blockReason``)."""
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if not isinstance(reason, str) or data.get("candidates"):
        return None
    return GatewayError(
        400,
        "content_filter",
        f"provider {account} blocked the prompt ({reason}); rephrase it",
    )


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return None
    first = candidates[0]
    if not isinstance(first, dict):
        raise UpstreamMalformed("the provider sent a candidate that is not an object")
    return first


def _candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _text_of(part: dict[str, Any]) -> str | None:
    # Thought summaries are reasoning, not the answer (they arrive only when asked for).
    text = part.get("text")
    return text if isinstance(text, str) and not part.get("thought") else None


def _tool_call(part: dict[str, Any], ids: Ids, index: int | None = None) -> dict[str, Any] | None:
    call = part.get("functionCall")
    if not isinstance(call, dict):
        return None
    if not isinstance(call.get("name"), str):
        raise UpstreamMalformed("the provider sent a function call without a name")
    args = call.get("args")
    out: dict[str, Any] = {} if index is None else {"index": index}
    out.update(
        id=ids.call(call, part.get("thoughtSignature")),
        type="function",
        function={"name": call["name"], "arguments": translate._dumps(args or {})},
    )
    return out


def _finish_reason(reason: Any, called: bool) -> str:
    mapped = _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called and mapped == "stop" else mapped


def gemini_response_to_openai(
    data: dict[str, Any], requested_model: str, ids: Ids, *, created: int | None = None
) -> dict[str, Any]:
    candidate = _candidate(data)
    if candidate is None:
        raise UpstreamMalformed("the provider's body has no candidates")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    message_id = ids.message(data.get("responseId"))
    for part in _candidate_parts(candidate):
        text = _text_of(part)
        if text is not None:
            texts.append(text)
        call = _tool_call(part, ids)
        if call is not None:
            calls.append(call)
    text = "".join(texts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    finish_reason = _finish_reason(candidate.get("finishReason"), bool(calls))
    return {
        "id": message_id,
        "object": "chat.completion",
        "created": translate._now(created),
        "model": requested_model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": openai_usage(usage_from_gemini(data.get("usageMetadata")) or Usage()),
    }


# -- streams -------------------------------------------------------------------------------------


class GeminiToOpenAIStream(translate.OpenAIChunkWriter, StreamTranslator):
    """Gemini ``GenerateContentResponse`` events in, OpenAI ``chat.completion.chunk`` events out.

    Gemini's stream has no terminating event: it is complete once a candidate has said why it
    finished. The usage chunk (when asked for) and ``[DONE]`` go out in ``finish``, after the
    upstream has ended cleanly, because the final usage may arrive with or after that chunk.
    """

    def __init__(
        self,
        account: str,
        requested_model: str,
        include_usage: bool,
        ids: Ids,
        *,
        created: int | None = None,
    ) -> None:
        self.account = account
        self.requested_model = requested_model
        self.include_usage = include_usage
        self.ids = ids
        self.created = translate._now(created)
        self.usage: Usage | None = None
        self.output_chars = 0
        self._id = ""
        self._calls = 0
        self._finish: str | None = None
        self._done = False

    @property
    def complete(self) -> bool:
        return self._finish is not None

    def feed(self, event: SSEEvent) -> bytes:
        data = translate.load_object(event.data)
        if "error" in data:
            self.upstream_error = True
            return _openai_error(data.get("error"))
        blocked = prompt_blocked(data, self.account)
        if blocked is not None:
            self.upstream_error = True
            error = {"message": blocked.message, "type": "invalid_request_error"}
            return _openai_error(error, code=blocked.code)
        usage = usage_from_gemini(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        out = b""
        if not self._id:
            self._id = self.ids.message(data.get("responseId"))
            out = self._chunk({"role": "assistant", "content": ""})
        candidate = _candidate(data)
        if candidate is not None and self._finish is None:
            out += self._candidate(candidate)
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        out = b""
        if self.include_usage:
            envelope = self._envelope([])
            envelope["usage"] = openai_usage(self.usage or Usage())
            out = encode_event(orjson.dumps(envelope))
        return out + b"data: [DONE]\n\n"

    def _candidate(self, candidate: dict[str, Any]) -> bytes:
        out = b""
        for part in _candidate_parts(candidate):
            text = _text_of(part)
            if text:
                self.output_chars += len(text)
                out += self._chunk({"content": text})
            call = _tool_call(part, self.ids, self._calls)
            if call is not None:
                self._calls += 1
                self.output_chars += len(call["function"]["arguments"])
                out += self._chunk({"tool_calls": [call]})
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
            self._finish = _finish_reason(reason, self._calls > 0)
            out += self._chunk({}, self._finish)
        return out


def _openai_error(error: Any, code: str | None = None) -> bytes:
    error = error if isinstance(error, dict) else {}
    kind = error.get("type") or error.get("status")
    message = error.get("message")
    # Cut as an error body's text is: both come from the provider, of any length.
    payload = {
        "message": message[:MAX_DETAIL_CHARS]
        if isinstance(message, str) and message
        else "the provider reported an error",
        "type": kind[:100] if isinstance(kind, str) else "api_error",
        "param": None,
        "code": code,
    }
    return encode_event(orjson.dumps({"error": payload}))


class GeminiToAnthropicStream(ChainedStreamTranslator):
    """Gemini events to Anthropic Messages events, through OpenAI chunks (one translation of
    each kind instead of a third)."""

    def __init__(self, account: str, requested_model: str) -> None:
        self.source = self._gemini = GeminiToOpenAIStream(
            account, requested_model, True, ids_for("anthropic")
        )
        self._anthropic = translate.OpenAIToAnthropicStream(requested_model)
        self._decoder = SSEDecoder()
        self._started = False

    @property
    def complete(self) -> bool:
        return self._gemini.complete

    def feed(self, event: SSEEvent) -> bytes:
        return self._relay(self._gemini.feed(event))

    def finish(self) -> bytes:
        return self._relay(self._gemini.finish()) + self._anthropic.finish()

    def _relay(self, chunks: bytes) -> bytes:
        if not chunks:
            return b""
        out = [self._anthropic.feed(e) for e in self._decoder.feed(chunks)]
        if not self._started and out and out[0]:
            self._started = True
            out[0] = self._input_usage(out[0])
        return b"".join(out)

    def _input_usage(self, first: bytes) -> bytes:
        """``message_start`` with the input Gemini reported in its first chunk (the OpenAI
        chunks it was made from carry usage only at the end)."""
        usage = self._gemini.usage
        events = SSEDecoder().feed(first)
        if usage is None or not events or events[0].event != "message_start":
            return first
        start = translate.load_object(events[0].data)
        start["message"]["usage"] = {**translate.anthropic_usage(usage), "output_tokens": 0}
        rest = first[first.index(b"\n\n") + 2 :]
        return encode_event(orjson.dumps(start), "message_start") + rest


# -- the adapter ---------------------------------------------------------------------------------


class GeminiAdapter(ProviderAdapter):
    """Google AI Studio: ``{base_url}/v1beta/models/{model}:generateContent``, key in a header."""

    def supports(self, operation: Operation) -> bool:
        return operation != "embeddings"

    def model_url(self, call: ProviderCall) -> str:
        version = self.settings.api_version or "v1beta"
        return f"{self.base_url}/{version}/models/{quote(call.upstream_model, safe='@')}"

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.settings.api_key or ""}

    def build_request(self, call: ProviderCall) -> UpstreamRequest:
        if not self.supports(call.operation):
            raise bad_request(f"provider {self.account} (Gemini) has no {call.operation} API")
        method = ":streamGenerateContent?alt=sse" if call.stream else ":generateContent"
        headers = self.common_headers()
        # Set last: the account's credentials, whatever the configured headers say.
        headers.update(self.auth_headers())
        if call.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", self.model_url(call) + method, headers, _body(call))

    def parse_response(self, call: ProviderCall, body: bytes) -> ParsedResponse:
        data = translate.load_object(body)
        blocked = prompt_blocked(data, self.account)
        if blocked is not None:
            raise blocked
        usage = usage_from_gemini(data.get("usageMetadata"))
        translated = gemini_response_to_openai(data, call.requested_model, ids_for(_ids(call)))
        if call.protocol == "anthropic":
            translated = translate.openai_response_to_anthropic(translated, call.requested_model)
        elif call.operation == "responses":
            message = translate.openai_response_to_anthropic(translated, call.requested_model)
            translated = responses.response_from_anthropic(message, call.body, call.requested_model)
        return ParsedResponse(orjson.dumps(translated), usage)

    def stream_translator(self, call: ProviderCall) -> StreamTranslator:
        if call.protocol == "anthropic":
            return GeminiToAnthropicStream(self.account, call.requested_model)
        if call.operation == "responses":
            events = GeminiToAnthropicStream(self.account, call.requested_model)
            return responses.ResponsesFromAnthropicEvents(events, call.body, call.requested_model)
        return GeminiToOpenAIStream(
            self.account, call.requested_model, call.client_wants_usage, ids_for("openai")
        )

    def error_status(self, status: int, body: bytes) -> int:
        """Google answers 400 to a bad API key: that is the gateway's credential, not the
        caller's mistake, so it counts as the 401 it means."""
        error = _google_error(body)
        details = error.get("details") if error is not None else None
        reasons = {d.get("reason") for d in details if isinstance(d, dict)} if details else set()
        return 401 if status == 400 and reasons & _KEY_REASONS else status

    def error_message(self, body: bytes) -> str | None:
        """Google errors are ``{"error": {"code", "message", "status"}}`` (Vertex may wrap
        them in a one-element array); the status (``RESOURCE_EXHAUSTED``...) goes first."""
        error = _google_error(body)
        if error is not None and isinstance(error.get("message"), str):
            status = error.get("status")
            return f"{status}: {error['message']}" if isinstance(status, str) else error["message"]
        return None


#: ``ErrorInfo`` reasons Google gives for a key that is wrong, expired or not allowed.
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})


def _google_error(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _ids(call: ProviderCall) -> str:
    """The protocol whose ids an answer carries (a Responses answer is made from an Anthropic
    message)."""
    return "anthropic" if call.operation == "responses" else call.protocol


def _body(call: ProviderCall) -> bytes:
    if call.protocol == "anthropic":
        return orjson.dumps(anthropic_request_to_gemini(call.body, call.upstream_model))
    if call.operation == "responses":
        return orjson.dumps(responses_request_to_gemini(call.body, call.upstream_model))
    return orjson.dumps(openai_request_to_gemini(call.body))

"""What a translation does with each top-level request field of the two client protocols.

A field either maps (the translation carries it to the other protocol in some form) or has no
counterpart there. A field without a counterpart is accepted only with a value that asks for
nothing (``n: 1``, ``logprobs: false``...); any other value is refused with a 400 that names the
field and says why, so a caller never gets an answer that silently ignored part of its request.
A field the gateway does not know is refused the same way. ``docs/fields.md`` is this table in
prose; keep the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from custos.errors import bad_request


@dataclass(frozen=True, slots=True)
class Field:
    #: How the translation carries the field; None when the other protocol has no counterpart.
    maps_to: str | None
    #: Values accepted without a counterpart because they ask for nothing.
    neutral: tuple[Any, ...] = ()
    #: Why a value other than a neutral one cannot be translated.
    reason: str = ""


#: OpenAI ``chat.completions`` request fields, towards an Anthropic account.
OPENAI_TO_ANTHROPIC: dict[str, Field] = {
    "model": Field("model"),
    "messages": Field("system and messages"),
    "max_completion_tokens": Field("max_tokens"),
    "max_tokens": Field("max_tokens"),
    # The Messages API has deprecated its sampling parameters (current models refuse them):
    # only the values that ask for the default pass.
    "temperature": Field(None, (1,), "the Messages API has deprecated temperature"),
    "top_p": Field(None, (1,), "the Messages API has deprecated top_p"),
    "stop": Field("stop_sequences"),
    "stream": Field("stream"),
    "stream_options": Field("the final usage chunk, written by the gateway"),
    "tools": Field("tools (function tools)"),
    "tool_choice": Field("tool_choice"),
    "parallel_tool_calls": Field("tool_choice.disable_parallel_tool_use"),
    "user": Field("metadata.user_id"),
    "safety_identifier": Field("metadata.user_id"),
    "response_format": Field("a forced tool whose input schema is the JSON schema"),
    "reasoning_effort": Field("thinking.budget_tokens"),
    "service_tier": Field("service_tier (auto, default as standard_only)"),
    "n": Field(None, (1,), "Anthropic returns one choice"),
    "frequency_penalty": Field(None, (0,), "Anthropic has no frequency penalty"),
    "presence_penalty": Field(None, (0,), "Anthropic has no presence penalty"),
    "logit_bias": Field(None, ({},), "Anthropic has no logit bias"),
    "logprobs": Field(None, (False,), "Anthropic returns no log probabilities"),
    "top_logprobs": Field(None, (0,), "Anthropic returns no log probabilities"),
    "seed": Field(None, (), "Anthropic has no seed"),
    "metadata": Field(None, ({},), "Anthropic stores no completions to tag"),
    "store": Field(None, (False,), "Anthropic stores no completions"),
    "modalities": Field(None, (["text"],), "Anthropic answers in text only"),
    "audio": Field(None, (), "Anthropic has no audio output"),
    "prediction": Field(None, (), "Anthropic has no predicted outputs"),
    "prompt_cache_key": Field(None, (), "Anthropic caches by cache_control blocks, not a key"),
    "verbosity": Field(None, (), "Anthropic has no verbosity setting"),
    "web_search_options": Field(None, (), "web search runs at OpenAI"),
    "functions": Field(None, (), "the legacy functions parameter is not supported; use tools"),
    "function_call": Field(None, (), "the legacy function_call is not supported; use tool_choice"),
    "moderation": Field(None, (), "moderation runs at OpenAI"),
    "prompt_cache_options": Field(None, (), "Anthropic caches by cache_control blocks"),
    "prompt_cache_retention": Field(None, (), "Anthropic caches by cache_control blocks"),
}

#: Anthropic ``messages`` request fields, towards an OpenAI-format account.
ANTHROPIC_TO_OPENAI: dict[str, Field] = {
    "model": Field("model"),
    "messages": Field("messages"),
    "system": Field("a system message"),
    "max_tokens": Field("max_completion_tokens (or max_tokens, per the model's max_tokens_field)"),
    # Older clients still send these; OpenAI honours temperature and top_p.
    "temperature": Field("temperature"),
    "top_p": Field("top_p"),
    "stop_sequences": Field("stop"),
    "stream": Field("stream, with stream_options.include_usage"),
    "tools": Field("tools (custom tools)"),
    "tool_choice": Field("tool_choice and parallel_tool_calls"),
    "metadata": Field("user (metadata.user_id)"),
    "thinking": Field("reasoning_effort (by budget_tokens)"),
    "service_tier": Field("service_tier (auto, standard_only as default)"),
    "output_format": Field("response_format (json_schema)"),
    "output_config": Field("response_format (format) and reasoning_effort (effort)"),
    "top_k": Field(None, (), "OpenAI has no top_k"),
    "container": Field(None, (), "code execution containers run at Anthropic"),
    "context_management": Field(None, (), "context management runs at Anthropic"),
    "mcp_servers": Field(None, ([],), "the MCP connector runs at Anthropic"),
    "inference_geo": Field(None, (), "inference_geo selects Anthropic's regions"),
    "cache_control": Field(None, (), "OpenAI caches prompts by itself, without markers"),
    "speed": Field(None, (), "speed selects Anthropic's serving modes"),
    "diagnostics": Field(None, (), "diagnostics are Anthropic's"),
    "user_profile_id": Field(None, (), "user profiles are Anthropic's"),
    "workspace_id": Field(None, (), "workspaces are Anthropic's"),
    "billing_policy": Field(None, (), "billing policies are Anthropic's"),
    "compaction": Field(None, (), "compaction runs at Anthropic"),
    "fallbacks": Field(None, (), "Anthropic's fallbacks choose among Anthropic models"),
    "fallback_credit_token": Field(None, (), "Anthropic's fallbacks choose among its models"),
    "thread": Field(None, (), "threads are kept at Anthropic"),
}


def refuse_untranslatable(body: dict[str, Any], table: dict[str, Field], target: str) -> None:
    """Raise a 400 naming the first field of ``body`` that ``table`` cannot carry to ``target``.

    A field set to null counts as absent, as both protocols treat it.
    """
    for name, value in body.items():
        if value is None:
            continue
        field = table.get(name)
        if field is None:
            raise bad_request(
                f"'{name}' is not a field the gateway can translate for a model served by {target}",
                param=name,
            )
        if field.maps_to is None and not _is_neutral(value, field.neutral):
            raise bad_request(
                f"'{name}' cannot be sent to a model served by {target}: {field.reason}",
                param=name,
            )


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    # bool is an int in Python: False must not pass for 0, nor 0 for False.
    return any(type(value) is type(n) and value == n for n in neutral) or any(
        isinstance(n, int | float)
        and not isinstance(n, bool)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value == n
        for n in neutral
    )

"""``with_model``: the client's body goes upstream as sent, with only its model replaced.

A same-protocol call relays the client's bytes; only the top-level ``model`` changes (the
gateway's name for the model becomes the provider's). Every other byte must stay as the client
wrote it, and where the one pair cannot be found for certain the body is re-serialised from
what was parsed, which is always correct.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from custos.providers.base import ProviderCall, with_model


def call(raw: bytes, requested: str = "acct/gpt-5.5") -> ProviderCall:
    return ProviderCall(
        protocol="openai",
        operation="chat",
        body=orjson.loads(raw),
        raw_body=raw,
        requested_model=requested,
        upstream_model="gpt-5.5",
        stream=False,
        client_wants_usage=False,
    )


def test_only_the_model_changes_every_other_byte_stays() -> None:
    raw = (
        b'{ "messages" : [ {"role":"user", "content":"say \\"model\\": \\"x\\" and \\u00e9"} ],'
        b'\n  "model" :  "acct/gpt-5.5", "temperature": 0.10 }'
    )
    sent = with_model(call(raw), "gpt-5.5")
    assert sent == raw.replace(b'"model" :  "acct/gpt-5.5"', b'"model":"gpt-5.5"')
    assert orjson.loads(sent)["model"] == "gpt-5.5"


def test_a_long_prompt_is_kept_byte_for_byte() -> None:
    prompt = "lorem ipsum " * 5000 + 'the word "model" in quotes'
    raw = b'{"model":"acct/gpt-5.5","messages":[{"role":"user","content":%s}]}' % orjson.dumps(
        prompt
    )
    sent = with_model(call(raw), "gpt-5.5")
    assert sent == raw.replace(b'"acct/gpt-5.5"', b'"gpt-5.5"', 1)


@pytest.mark.parametrize(
    "raw",
    [
        # A nested "model" key too: which one is the top level's is not known from the bytes.
        b'{"model":"acct/gpt-5.5","tools":[{"type":"function","function":{"name":"f",'
        b'"parameters":{"type":"object","properties":{"model":{"type":"string"}}}}}],'
        b'"metadata":{"model":"acct/gpt-5.5"}}',
        # The model name written with an escape: the bytes differ from the parsed name.
        b'{"model":"acct\\/gpt-5.5","messages":[]}',
        # The key itself escaped.
        b'{"\\u006dodel":"acct/gpt-5.5","messages":[]}',
    ],
)
def test_when_the_pair_is_not_certain_the_body_is_re_serialised(raw: bytes) -> None:
    parsed: dict[str, Any] = orjson.loads(raw)
    sent = orjson.loads(with_model(call(raw), "gpt-5.5"))
    assert sent == {**parsed, "model": "gpt-5.5"}


def test_a_value_that_is_the_word_model_is_not_a_key() -> None:
    raw = b'{"messages":[{"role":"model","content":"hi"}],"model":"acct/gpt-5.5"}'
    sent = with_model(call(raw), "gpt-5.5")
    assert sent == b'{"messages":[{"role":"model","content":"hi"}],"model":"gpt-5.5"}'


def test_none_removes_the_model() -> None:
    raw = b'{"model":"acct/gpt-5.5","messages":[]}'
    assert orjson.loads(with_model(call(raw), None)) == {"messages": []}


def test_a_model_name_that_needs_escaping_is_written_as_json() -> None:
    raw = b'{"model":"acct/gpt-5.5","messages":[]}'
    sent = with_model(call(raw), 'odd "name"\\')
    assert orjson.loads(sent)["model"] == 'odd "name"\\'

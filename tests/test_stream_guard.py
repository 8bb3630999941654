"""The output guardrails' stream guard on its own: however a model's answer is cut into
chunks, what leaves the gateway is what the guardrails make of the whole answer."""

from __future__ import annotations

import itertools
import types

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.config.guardrails import GuardrailSettings
from custos.errors import GatewayError
from custos.guardrails.detectors import Numbering, redact
from custos.guardrails.rules import compile_guardrails
from custos.guardrails.stream import StreamGuard

PIECES = ["Write to ", "ana.lima@example.com", " or ", "bo@example.org", " today, ",
          "the order 2024-11-05 is ", "confirmed", ". ", "Call +44 20 7946 0958", " later.",
          "\n", "Thanks", " and a long tail of ordinary words " * 3]  # fmt: skip


def chunk_event(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    data = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def relayed_text(out: bytes) -> str:
    text = []
    for raw in out.split(b"\n\n"):
        if raw.startswith(b"data: ") and raw != b"data: [DONE]":
            for choice in orjson.loads(raw[6:])["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def guard_of(operation: str, window: int) -> StreamGuard:
    settings = GuardrailSettings(id="g", hook="llm_output", type="pii", operation=operation,
                                 stream_window_chars=window)  # fmt: skip
    return StreamGuard(types.SimpleNamespace(decisions=[]), compile_guardrails([settings]),
                       Numbering())  # fmt: skip


def cuts(text: str, positions: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in positions)})
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=12),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    st.sampled_from([32, 64, 256]),
    st.integers(min_value=1, max_value=4),
)
def test_a_redacting_guard_relays_the_whole_answer_redacted_however_it_is_cut(
    pieces: list[str], positions: list[int], window: int, per_read: int
) -> None:
    # Words apart, no value is longer than the smallest window: docs/guardrails.md promises a
    # value split across chunks is whole before release up to that many characters.
    text = " ".join(pieces)
    events = [chunk_event(part) for part in cuts(text, positions)] + [b"data: [DONE]\n\n"]
    guard = guard_of("mutate", window)
    out = []
    reads = [b"".join(events[i : i + per_read]) for i in range(0, len(events), per_read)]
    for i, read in enumerate(reads):
        out.append(guard.feed(read, i == len(reads) - 1))
    relayed = b"".join(out)
    assert relayed.endswith(b"data: [DONE]\n\n")
    detector = guard.guardrails[0].detector
    assert detector is not None
    assert relayed_text(relayed) == redact(text, detector.find(text), Numbering())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))  # fmt: skip
def test_a_validating_guard_ends_the_stream_exactly_when_the_whole_answer_holds_a_finding(
    pieces: list[str], positions: list[int]
) -> None:
    text = " ".join(pieces)
    events = [chunk_event(part) for part in cuts(text, positions)]
    guard = guard_of("validate", 64)
    detector = guard.guardrails[0].detector
    assert detector is not None
    released = []
    if detector.find(text):
        with pytest.raises(GatewayError, match="blocked by the guardrail"):
            for i, event in enumerate(events):
                released.append(guard.feed(event, i == len(events) - 1))
        # nothing that holds the finding went out before the stream ended
        assert not detector.find(relayed_text(b"".join(released)))
    else:
        for i, event in enumerate(events):
            released.append(guard.feed(event, i == len(events) - 1))
        assert relayed_text(b"".join(released)) == text

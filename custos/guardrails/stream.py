"""Output guardrails over a stream: events held back by a bounded window of text.

A stream reaches the client as server-sent events in the caller's protocol; its text is spread
over the events' deltas (OpenAI ``choices[].delta.content``, Anthropic ``content_block_delta``
``text_delta``, Responses ``response.output_text.delta``), and a value (an address, a key) can
be split across two or more of them. ``StreamGuard`` keeps each text (per choice or content
block) and holds every event back until the text after it is at least ``window`` characters
long, so that a value of up to ``window`` characters is whole before any of it is released:

- a ``validate`` guardrail that finds something ends the stream (``GatewayError``; the relay
  sends it as an error event), and what it found was never sent;
- a ``mutate`` guardrail's findings are replaced in the held events before they go (the
  placeholder in the event where the value began, the rest of it removed from the others);
- ``audit`` only counts.

A finding still touching the last ``window`` characters may grow, so it is settled only once it
no longer does (or at the stream's end). Events without text are released in order with the
rest. Events that repeat a whole text (Responses' ``….done`` and ``response.completed``) are
redacted with the same numbering. A webhook guardrail on the output holds the whole stream and
checks its text at the end. Memory per stream: the held events, about ``window`` characters of
text plus one upstream chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from custos.context import RequestContext
from custos.guardrails.detectors import Finding, Numbering, redact
from custos.guardrails.rules import Guardrail, Verdict, blocked

Key = tuple[Any, ...]
#: Events of the Responses API that repeat a text whole, and where.
_WHOLE_TEXT = {
    "response.output_text.done": (("text",),),
    "response.content_part.done": (("part", "text"),),
}


@dataclass(slots=True)
class _Event:
    raw: bytes
    #: The event's parsed JSON (``None``: no JSON, e.g. ``[DONE]``).
    data: Any
    #: Where its text deltas are: (text key, start, end) in that text's absolute offsets, with
    #: the path to write a rewritten delta back.
    pieces: list[tuple[Key, int, int, tuple[Any, ...]]] = field(default_factory=list)


@dataclass(slots=True)
class _Text:
    """One text of the stream (a choice, a content block): what has arrived of it."""

    text: str = ""
    #: Absolute offset of ``text[0]`` (the text before it was released and dropped).
    base: int = 0
    #: Findings settled so far (absolute offsets), to apply to events not yet released.
    settled: list[Finding] = field(default_factory=list)
    #: Up to where findings are settled (absolute): text before it may be released.
    settled_upto: int = 0
    #: (guardrail, start, end) of the findings counted, so a look-back does not count twice.
    counted: set[tuple[str, int, int]] = field(default_factory=set)

    @property
    def end(self) -> int:
        return self.base + len(self.text)


class StreamGuard:
    def __init__(
        self, ctx: RequestContext, guardrails: Sequence[Guardrail], numbering: Numbering
    ) -> None:
        self.ctx = ctx
        self.guardrails = tuple(guardrails)
        self.numbering = numbering
        self.whole = any(g.remote for g in guardrails)  # a webhook reads the whole text
        self.window = max(g.window_chars for g in guardrails)
        self.verdicts = {g.id: Verdict() for g in guardrails}
        self.texts: dict[Key, _Text] = {}
        self.held: list[_Event] = []
        self.partial = b""
        self.chunks = 0
        self.finished = False

    # -- the relay's side -------------------------------------------------------------------

    def feed(self, chunk: bytes, last: bool) -> bytes:
        """The bytes that may go out now; raises ``GatewayError`` to end the stream."""
        self.chunks += 1
        for event in self._events(chunk, last):
            self.held.append(event)
            pieces = event.pieces
            if len(pieces) == 1:  # the usual event: one delta of one text
                self._scan(pieces[0][0], last=False)
            elif pieces:
                for key in {piece[0] for piece in pieces}:
                    self._scan(key, last=False)
        if last:
            for key in self.texts:
                self._scan(key, last=True)
            if self.whole:
                return b""  # the webhook decides at the end (``finish``)
            return self._release(everything=True)
        return b"" if self.whole else self._release(everything=False)

    def decisions(self, reason: str | None = None) -> None:
        """Record each guardrail's decision (once, at the stream's end or when it stopped)."""
        if self.finished:
            return
        self.finished = True
        for guardrail in self.guardrails:
            verdict = self.verdicts[guardrail.id]
            decision, _ = guardrail.decide(verdict, "llm_output")
            if reason is not None or decision.outcome == "deny":
                assert decision.input is not None
                decision.input["chunk"] = self.chunks
            self.ctx.decisions.append(decision)

    # -- events -----------------------------------------------------------------------------

    def _events(self, chunk: bytes, last: bool) -> Iterator[_Event]:
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n\n")
        if last and self.partial:
            complete.append(self.partial)
            self.partial = b""
        for raw in complete:
            if raw.strip():
                yield self._parse(raw + b"\n\n")

    def _parse(self, raw: bytes) -> _Event:
        if raw.startswith(b"data: ") and raw.find(b"\n") == len(raw) - 2:
            payload = raw[6:-2]  # one data line, as the gateway's own translators write events
        else:
            payload = b""
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
        try:
            data = orjson.loads(payload) if payload and payload != b"[DONE]" else None
        except orjson.JSONDecodeError:
            data = None
        event = _Event(raw, data)
        for key, path, text in _deltas(data):
            state = self.texts.setdefault(key, _Text())
            start = state.end
            state.text += text
            event.pieces.append((key, start, state.end, path))
        return event

    # -- finding ----------------------------------------------------------------------------

    def _scan(self, key: Key, *, last: bool) -> None:
        """Look for values in the text not yet settled (with ``window`` characters before it);
        settle those that can no longer grow."""
        state = self.texts[key]
        horizon = state.end if last else state.end - self.window
        open_from = horizon
        look_from = max(state.base, state.settled_upto - self.window)
        region = state.text[look_from - state.base :]
        for guardrail in self.guardrails:
            if guardrail.detector is None:
                continue
            verdict = self.verdicts[guardrail.id]
            for f in guardrail.detector.find(region):
                start, end = f.start + look_from, f.end + look_from
                if end <= state.settled_upto:
                    continue
                if guardrail.operation == "validate" and guardrail.enforcing != "audit":
                    verdict.found[f.kind] = verdict.found.get(f.kind, 0) + 1
                    self._block(guardrail)
                if end > horizon:
                    open_from = min(open_from, start)  # may still grow: settled later
                    continue
                mark = (guardrail.id, start, end)
                if mark in state.counted:
                    continue
                state.counted.add(mark)
                verdict.found[f.kind] = verdict.found.get(f.kind, 0) + 1
                if guardrail.operation == "mutate" and guardrail.enforcing != "audit":
                    state.settled.append(Finding(f.kind, start, end))
                    verdict.changed = True
        state.settled_upto = max(state.settled_upto, min(horizon, open_from))

    def _block(self, guardrail: Guardrail) -> None:
        self.held.clear()
        self.decisions(reason="blocked")
        raise blocked(guardrail.id)

    # -- releasing --------------------------------------------------------------------------

    def release_all(self) -> bytes:
        """Every held event (the stream's end)."""
        return self._release(everything=True)

    def _release(self, *, everything: bool) -> bytes:
        out: list[bytes] = []
        texts = self.texts
        while self.held:
            event = self.held[0]
            if not everything and any(
                end > texts[key].settled_upto for key, _s, end, _p in event.pieces
            ):
                break
            out.append(self._rewritten(event))
            self.held.pop(0)
        if out:  # nothing released: every text still needed is still held
            self._trim()
        return b"".join(out)

    def _rewritten(self, event: _Event) -> bytes:
        changed = False
        for key, start, end, path in event.pieces:
            state = self.texts[key]
            overlapping = [f for f in state.settled if f.start < end and start < f.end]
            if not overlapping:
                continue
            text = state.text[start - state.base : end - state.base]
            _set(event.data, path, _cut(text, start, overlapping, state, self.numbering))
            changed = True
        if event.data is not None and self._whole_text(event.data):
            changed = True
        if not changed:
            return event.raw
        head = event.raw[: event.raw.index(b"data:")]
        return head + b"data: " + orjson.dumps(event.data) + b"\n\n"

    def _whole_text(self, data: Any) -> bool:
        """Redact a Responses event that repeats a whole text (same numbering)."""
        if not isinstance(data, dict) or not any(
            g.operation == "mutate" and g.enforcing != "audit" and g.detector is not None
            for g in self.guardrails
        ):
            return False
        changed = False
        for path, text in _whole_texts(data):
            for guardrail in self.guardrails:
                if guardrail.operation == "mutate" and guardrail.detector is not None:
                    findings = guardrail.detector.find(text)
                    if findings:
                        text = redact(text, findings, self.numbering)
                        changed = True
            _set(data, path, text)
        return changed

    def _trim(self) -> None:
        """Drop text no held event needs, keeping ``window`` characters to look back on."""
        # A text's pieces are held in stream order with growing starts: the first held piece
        # of each text is the earliest it needs.
        needed: dict[Key, int] = {}
        for event in self.held:
            for key, start, _e, _p in event.pieces:
                if key not in needed:
                    needed[key] = start
            if len(needed) == len(self.texts):
                break
        for key, state in self.texts.items():
            keep = min(needed.get(key, state.end), state.settled_upto - self.window)
            if state.settled:
                state.settled = [f for f in state.settled if f.end > keep]
                keep = min([keep, *(f.start for f in state.settled)])
            cut = keep - state.base
            if cut > 0:
                state.text = state.text[cut:]
                state.base = keep
                state.counted = {m for m in state.counted if m[2] > keep}


def _cut(text: str, start: int, findings: list[Finding], state: _Text, numbering: Numbering) -> str:
    """``text`` (absolute ``start``) with the parts of ``findings`` in it replaced: the
    placeholder where a finding begins, nothing where it continues."""
    parts: list[str] = []
    position = start
    end = start + len(text)
    for f in sorted(findings, key=lambda f: f.start):
        if f.start >= position:
            parts.append(text[position - start : f.start - start])
            value = state.text[f.start - state.base : f.end - state.base]
            parts.append(numbering.placeholder(f.kind, value))
        position = max(position, min(f.end, end))
    parts.append(text[position - start :])
    return "".join(parts)


def _deltas(data: Any) -> Iterator[tuple[Key, tuple[Any, ...], str]]:
    """(text key, path to the delta, delta) of each text delta in one event."""
    if not isinstance(data, dict):
        return
    choices = data.get("choices")
    if isinstance(choices, list):  # OpenAI chat completion chunk
        for i, choice in enumerate(choices):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                yield (
                    ("choice", choice.get("index", i)),
                    ("choices", i, "delta", "content"),
                    (delta["content"]),
                )
        return
    kind = data.get("type")
    if kind == "content_block_delta":  # Anthropic
        delta = data.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            text = delta.get("text")
            if isinstance(text, str):
                yield ("block", data.get("index")), ("delta", "text"), text
    elif kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
        key = ("output", data.get("output_index"), data.get("content_index"))
        yield key, ("delta",), data["delta"]


def _whole_texts(data: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
    kind = data.get("type")
    for path in _WHOLE_TEXT.get(kind, ()):  # type: ignore[arg-type]
        value = _get(data, path)
        if isinstance(value, str):
            yield path, value
    if kind == "response.output_item.done":
        yield from _output_texts(data.get("item"), ("item",))
    elif kind == "response.completed":
        response = data.get("response")
        if isinstance(response, dict):
            for i, item in enumerate(response.get("output") or ()):
                yield from _output_texts(item, ("response", "output", i))


def _output_texts(item: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(item, dict):
        for j, part in enumerate(item.get("content") or ()):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield (*path, "content", j, "text"), part["text"]


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _set(data: Any, path: tuple[Any, ...], value: str) -> None:
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value

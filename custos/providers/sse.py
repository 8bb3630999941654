"""Incremental server-sent events decoding and encoding (the WHATWG event-stream format).

Upstream bytes arrive in arbitrary pieces; ``SSEDecoder.feed`` returns the events completed so far
and keeps the rest. Only ``event`` and ``data`` fields matter to the gateway; comments and ``id``/
``retry`` fields are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: bytes


class SSEDecoder:
    __slots__ = ("_buffer",)

    #: A single event larger than this is not a model's stream; refuse to buffer it forever.
    MAX_EVENT_BYTES = 8 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        if len(self._buffer) > self.MAX_EVENT_BYTES:
            raise ValueError("server-sent event larger than 8 MiB")
        return events

    def close(self) -> list[SSEEvent]:
        """Flush a final event that the upstream did not terminate with a blank line."""
        rest, self._buffer = self._buffer, b""
        event = _parse_block(rest.rstrip(b"\n")) if rest.strip() else None
        return [event] if event is not None else []


def _parse_block(block: bytes) -> SSEEvent | None:
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return SSEEvent(name, b"\n".join(data))


def encode_event(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"

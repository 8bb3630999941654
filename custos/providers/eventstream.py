"""AWS's binary event-stream framing (``application/vnd.amazon.eventstream``), as Bedrock's
ConverseStream answers in.

A message is a 12-byte prelude (total length, headers length, CRC32 of those eight bytes),
headers, a payload and a CRC32 of everything before it. Decoding is botocore's
``EventStreamBuffer``, which checks both CRCs; ``EventStreamDecoder`` turns its messages into
the ``SSEEvent`` objects every stream translator takes (the event type as the name, the JSON
payload as the data), so the pipeline relays either framing the same way. ``encode_message``
writes the framing, for the mock provider and the tests.
"""

from __future__ import annotations

import struct
from binascii import crc32

from botocore.eventstream import EventStreamBuffer, MessagePrelude, ParserError

from custos.providers.base import UpstreamMalformed
from custos.providers.sse import SSEDecoder, SSEEvent

#: Event names given to ``message-type: exception`` (and ``error``) messages: the prefix, then
#: the exception's type, e.g. ``exception:throttlingException``.
EXCEPTION_PREFIX = "exception:"
_STRING = 7  # header value type: a UTF-8 string with a 2-byte length
#: A message's framing around its headers and payload: the prelude and the message CRC.
_FRAMING = 16
#: One message may be as large as one server-sent event (botocore alone would wait for 24 MiB).
MAX_MESSAGE_BYTES = SSEDecoder.MAX_EVENT_BYTES


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers and both CRCs."""
    encoded = b"".join(
        struct.pack("!B", len(name)) + name.encode() + struct.pack("!BH", _STRING, len(value))
        + value.encode()
        for name, value in headers.items()
    )  # fmt: skip
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    head = prelude + struct.pack("!I", crc32(prelude)) + encoded + payload
    return head + struct.pack("!I", crc32(head))


def json_message(message_type: str, name: str, payload: bytes) -> bytes:
    """An ``event`` (``name`` is its event type) or ``exception`` (its exception type) message
    with a JSON payload, as ConverseStream sends them."""
    return encode_message(
        {
            f":{message_type}-type": name,
            ":content-type": "application/json",
            ":message-type": message_type,
        },
        payload,
    )


class _ImpossibleLength(ParserError):
    """A prelude whose total length cannot hold its own framing, or is longer than a message
    may be."""


class _BoundedBuffer(EventStreamBuffer):
    """botocore's buffer, checking the declared total length as soon as the prelude (and its
    CRC) arrives: a length shorter than the framing would otherwise fail inside botocore with a
    ``struct.error``, and a long one would be buffered while the rest is awaited."""

    def _validate_prelude(self, prelude: MessagePrelude) -> None:
        super()._validate_prelude(prelude)
        total = prelude.total_length
        if total < _FRAMING + prelude.headers_length:
            raise _ImpossibleLength(f"total length {total} is shorter than the message's framing")
        if total > MAX_MESSAGE_BYTES:
            raise _ImpossibleLength(f"a message is longer than {MAX_MESSAGE_BYTES} bytes")


class EventStreamDecoder:
    """Bytes in arbitrary pieces in, one ``SSEEvent`` per complete message out.

    A message whose CRC does not match, or whose lengths are impossible or longer than
    ``MAX_MESSAGE_BYTES``, is ``UpstreamMalformed``: the bytes are not the provider's framing
    and nothing after them can be trusted.
    """

    __slots__ = ("_buffer", "_pending")

    def __init__(self) -> None:
        self._buffer = _BoundedBuffer()
        self._pending = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer.add_data(chunk)
        self._pending += len(chunk)
        events: list[SSEEvent] = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                events.append(_event(message.headers, message.payload))
        except _ImpossibleLength as exc:
            raise UpstreamMalformed(f"the event stream is corrupt: {exc}") from None
        except ParserError as exc:
            raise UpstreamMalformed(f"the event stream is corrupt ({type(exc).__name__})") from None
        return events

    def close(self) -> list[SSEEvent]:
        if self._pending:
            raise UpstreamMalformed("the event stream ended inside a message")
        return []


def _event(headers: dict[str, object], payload: bytes) -> SSEEvent:
    kind = headers.get(":message-type")
    if kind == "event":
        return SSEEvent(str(headers.get(":event-type") or ""), payload)
    name = headers.get(":exception-type") or headers.get(":error-code") or "unknown"
    return SSEEvent(EXCEPTION_PREFIX + str(name), payload)

"""The audit record: schema version, canonical bytes, salt and leaf hash.

Every audit event is one JSON object, stored as the exact bytes that were hashed:

- **canonical JSON**: keys sorted (by code point), no insignificant whitespace, UTF-8 (non-ASCII
  characters written as themselves, not escaped), and only JSON's exact kinds of value: objects
  with string keys, arrays, strings, booleans, null and integers within ±(2**53 - 1). A float
  anywhere is refused (``NotCanonical``): number formatting differs between languages, so
  quantities are integers (``cost_micros``, ``latency_ms``). The bytes equal
  ``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``;
  ``orjson`` produces them faster.
- **``schema_version``** (``SCHEMA_VERSION``), ``event_type``, ``event_id`` (a UUIDv7: time
  ordered, random tail) and ``salt`` (16 random bytes as 32 lowercase hex digits) are in every
  record. The salt makes the leaf hash of a record reveal nothing about it, even after its body
  is purged (issue 6 keeps leaf hashes forever).
- **leaf hash**: ``SHA-256(0x00 || bytes)``, the RFC 9162 leaf hash the Merkle log is built on.

Raw canonical bytes never contain a newline byte (JSON escapes it inside strings), which is
what lets the spool and ``custos audit export`` write one record per line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from custos.wire import MAX_INT

#: 2: ``llm.call`` gained ``skips`` (targets routing passed over without trying them).
SCHEMA_VERSION: Final = 3

LLM_CALL: Final = "llm.call"
MCP_TOOL_CALL: Final = "mcp.tool_call"
ADMIN_CHANGE: Final = "admin.change"
CONFIG_REVISION: Final = "config.revision"
AUTH_FAILURE: Final = "auth.failure"
AUDIT_PURGE: Final = "audit.purge"
EVENT_TYPES: Final = frozenset(
    {LLM_CALL, MCP_TOOL_CALL, ADMIN_CHANGE, CONFIG_REVISION, AUTH_FAILURE, AUDIT_PURGE}
)

_LEAF_PREFIX: Final = b"\x00"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


#: Sorted keys, and integers within ±(2**53 - 1) (beyond, orjson raises): the schema's range.
_CANONICAL: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


class NotCanonical(ValueError):
    """A record holds something canonical JSON cannot (a float, a non-string key, …)."""


def _check(value: Any, path: str) -> None:
    # Called once per record on the request path: scalars are checked inline, and only
    # containers recurse, so a flat record of ~60 fields costs a few microseconds.
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise NotCanonical(f"{path}: key {key!r} is not a string")
            item_kind = type(item)
            if item_kind is str or item is None or item_kind is bool:
                continue
            if item_kind is int and -MAX_INT <= item <= MAX_INT:
                continue
            _check(item, f"{path}.{key}")
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if kind is str or value is None or kind is bool:
        return
    if kind is int:
        if -MAX_INT <= value <= MAX_INT:
            return
        raise NotCanonical(f"{path}: integer {value} is outside ±(2**53 - 1)")
    if kind is float:
        raise NotCanonical(f"{path}: floats are not allowed in audit records (got {value!r})")
    raise NotCanonical(f"{path}: {kind.__name__} is not a JSON value")


def canonical_bytes(record: Mapping[str, Any], *, check: bool = True) -> bytes:
    """The canonical bytes of ``record`` (see the module docstring); raises ``NotCanonical``.

    ``check=False`` skips the walk that refuses floats (orjson would write them): only for
    records the gateway builds itself from typed values on the request path, where the walk is
    a third of the sealing time; the tests read every record back with ``unseal``, which
    checks. Integers outside ±(2**53 - 1) are refused either way (orjson's strict integers)."""
    if type(record) is not dict:
        record = dict(record)
    if check:
        _check(record, "$")
    try:
        # An exact-size copy: orjson returns its working buffer, rounded up to a power of two
        # (16 KiB for a 1.5 KiB record), and records wait in memory by the thousand (the
        # writer's store batches; a store outage): 36-40 MB of RSS at saturation (bench/README).
        return bytes(memoryview(orjson.dumps(record, option=_CANONICAL)))
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate, which is not UTF-8
        raise NotCanonical(str(exc)) from None


def leaf_hash(body: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of a Merkle tree leaf, ``SHA-256(0x00 || body)``."""
    return hashlib.sha256(_LEAF_PREFIX + body).digest()


class _RandomPool:
    """Bytes from ``os.urandom`` drawn 8 KiB at a time and never handed out twice: as
    unpredictable as ``os.urandom`` itself, at one system call per ~300 records instead of two
    per record (system calls are what costs most in a sandboxed process)."""

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._buffer = b""
        self._pos = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buffer):
                self._buffer, self._pos = os.urandom(self._size), 0
            start = self._pos
            self._pos += n
            return self._buffer[start : start + n]


_random = _RandomPool()


def new_salt() -> str:
    return _random.take(16).hex()


def uuid7(at_ms: int | None = None, rand: bytes | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, version, 74 random bits (from
    ``rand``, 10 random bytes, when the caller drew them)."""
    ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    if rand is None:
        rand = _random.take(10)
    # Bytes 6 and 8 carry the version (7) and the RFC variant (0b10) in their high bits; the
    # remaining 4 + 8 + 6 + 56 = 74 bits are random.
    text = (
        (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
        + bytes((0x70 | rand[0] & 0x0F, rand[1], 0x80 | rand[2] & 0x3F))
        + rand[3:]
    ).hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def rfc3339_ms(at_ms: int) -> str:
    """``2026-07-01T12:00:00.123Z``: UTC, millisecond precision, fixed width (text order is
    time order)."""
    seconds, ms = divmod(at_ms, 1000)
    return f"{utc_second(seconds)}.{ms:03d}Z"


@functools.lru_cache(maxsize=64)
def utc_second(seconds: int) -> str:
    """``2026-07-01T12:00:00``: a Unix second in UTC (cached: records come many a second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def parse_rfc3339(text: str) -> datetime:
    """The inverse of ``rfc3339_ms`` (accepts any RFC 3339 time with a zone)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(UTC)


def unix_ms(moment: datetime) -> int:
    """An aware datetime as whole Unix milliseconds (exact: no float on the way)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass(slots=True)
class SealedRecord:
    """A record in its final form: the canonical bytes, their leaf hash, and the parsed fields.

    Never change one: ``fields`` is what ``body`` says (it is parsed from or serialised to it)
    and ``leaf_hash`` is the hash of ``body``. (Not a frozen dataclass only because one is
    made per request, and a frozen one costs four times as much to make.)
    """

    event_id: str
    event_type: str
    #: ``time_start`` as Unix milliseconds: what the store indexes the event by.
    at_ms: int
    body: bytes
    leaf_hash: bytes
    fields: dict[str, Any]


def seal(record: dict[str, Any], *, at_ms: int, check: bool = True) -> SealedRecord:
    """Complete ``record`` with ``schema_version``, ``event_id`` and ``salt`` (unless present)
    and turn it into canonical bytes with their leaf hash. ``record`` must hold ``event_type``
    and ``time_start``; ``at_ms`` is ``time_start`` in Unix milliseconds; ``check``: see
    ``canonical_bytes``."""
    event_type = record.get("event_type")
    if event_type not in EVENT_TYPES:
        raise NotCanonical(f"unknown event_type {event_type!r}")
    record.setdefault("schema_version", SCHEMA_VERSION)
    if "event_id" not in record and "salt" not in record:  # one draw for both
        rand = _random.take(26)
        record["event_id"] = uuid7(at_ms, rand[:10])
        record["salt"] = rand[10:].hex()
    else:
        record.setdefault("event_id", uuid7(at_ms))
        record.setdefault("salt", new_salt())
    body = canonical_bytes(record, check=check)
    return SealedRecord(record["event_id"], event_type, at_ms, body, leaf_hash(body), record)


def unseal(body: bytes) -> SealedRecord:
    """Read a record back from its stored bytes, checking they are canonical and complete.

    Raises ``NotCanonical`` for bytes that are not a canonical record (a torn spool line, an
    edited file): re-encoding the parsed object must give the same bytes back.
    """
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotCanonical(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise NotCanonical("a record is a JSON object")
    if canonical_bytes(fields) != body:
        raise NotCanonical("the bytes are not in canonical form")
    missing = [k for k in ("schema_version", "event_type", "event_id", "salt", "time_start")
               if not isinstance(fields.get(k), int | str)]  # fmt: skip
    if missing:
        raise NotCanonical(f"the record lacks {', '.join(missing)}")
    if fields["event_type"] not in EVENT_TYPES:
        raise NotCanonical(f"unknown event_type {fields['event_type']!r}")
    try:
        at_ms = unix_ms(parse_rfc3339(fields["time_start"]))
    except (TypeError, ValueError) as exc:
        raise NotCanonical(f"time_start: {exc}") from None
    return SealedRecord(
        fields["event_id"], fields["event_type"], at_ms, body, leaf_hash(body), fields
    )

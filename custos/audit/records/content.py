"""Content capture: what ``audit.content`` keeps of prompts and completions, and how it is read.

Modes (``custos.audit.records.transcript`` says what "the content" of a call is):

- ``none`` (the default): nothing. The request path does no extra work: no capture object is
  made, and the record has no ``content.*`` fields.
- ``hash``: the ``llm.call`` record carries ``content.request.hmac_sha256`` and
  ``content.response.hmac_sha256``; nothing else is stored. The digest is HMAC-SHA-256 keyed
  by the record's own random ``salt`` (16 bytes, in the record) over the canonical JSON of the
  content, rather than a bare SHA-256: the same prompt gives a different digest in every record,
  so digests cannot be matched across records or against a table of precomputed hashes of
  common prompts, yet anyone holding the record and a candidate text (the caller disputing what
  was sent, an auditor) can check it. The limit of any digest: whoever holds the record can
  still test guesses against that one record, one HMAC per guess; a short, guessable prompt is
  not hidden by ``hash``. Use ``redacted`` or ``full`` (encrypted) when that matters.
- ``full``: the content is encrypted with AES-256-GCM and stored outside the Merkle-logged
  tables (``audit_content``); the record carries only ``content.dek_id`` and, per part, the
  SHA-256 of the stored blob (``content.request.sha256``) and the plaintext's size in bytes
  (``content.request.bytes``). Never plaintext.
- ``redacted``: like ``full``, but every string of the content first goes through the built-in
  PII detectors (``custos.guardrails.pii``), each value replaced by a placeholder such as
  ``[EMAIL]``; the classes and counts found are added to the record's ``data_classes`` (source
  ``custos.pii/N``, the detectors' version). Values never are.

Key hierarchy:

- the **master key** (KEK, 256 bits) comes from ``audit.content_key`` or, with SQLite and no
  configured key, from a key file beside the database (``<db>.content-key``, mode 0600,
  created on first use). It never leaves the process and is never stored in the database;
- **data keys** (DEKs, 256 bits, random) are scoped to one (team, principal): each gateway
  process makes one per scope the first time it encrypts for it, in memory, and keeps it in a
  bounded cache; the key is stored wrapped under the master key (AES key wrap, RFC 3394) along
  with the first content encrypted under it, in the writer's batch. The request path never
  waits on the database for a key. Erasing a team or a principal deletes exactly its keys.
- each part (``request``, ``response``) is encrypted under a fresh 96-bit random nonce, with
  the event id, the part and the key id as associated data: a ciphertext moved to another
  record or part does not decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from custos import private
from custos.audit.records.record import new_salt, uuid7
from custos.audit.records.transcript import StreamTranscript, request_content, response_content
from custos.audit.storage import content_store
from custos.audit.storage.content_store import CHANGE_KIND, Attachment, KeyRow
from custos.guardrails import pii

if TYPE_CHECKING:
    from custos.audit.storage.store import AuditStore, StoredEvent
    from custos.context import RequestContext
    from custos.state.models import Change
    from custos.state.store import Store

log = logging.getLogger("custos.audit")

MODES: Final = ("none", "hash", "redacted", "full")
PARTS: Final = ("request", "response")
NONCE_BYTES: Final = 12
#: Data keys kept in memory per process; past it the least recently used is dropped (a new
#: key is made for that scope next time: more keys, never a lost one).
MAX_CACHED_KEYS: Final = 10_000
_AAD_PREFIX: Final = b"custos.audit.content/v1\x00"


class ContentKeyUnavailable(Exception):
    """No master key: not configured, and no SQLite database to keep a key file beside."""


class ContentUnreadable(Exception):
    """Stored content does not match its record, or does not decrypt: it was altered."""


# -- the master key ----------------------------------------------------------------------------


def master_key(configured: str | None, sqlite_path: str | None, *, create: bool = True) -> bytes:
    """The configured key, or for a SQLite store (the database file ``sqlite_path``) the key
    file beside the database (created once, mode 0600, when ``create``). Raises
    ``ContentKeyUnavailable``."""
    if configured is not None:
        return base64.b64decode(configured.strip(), validate=True)
    path = sqlite_path
    if path is None:
        raise ContentKeyUnavailable(
            "audit.content_key is not set (required with a PostgreSQL store)"
        )
    if path == ":memory:":
        raise ContentKeyUnavailable("an in-memory store keeps no content key; set content_key")
    key_file = Path(path + ".content-key")
    if not key_file.exists():
        if not create:
            raise ContentKeyUnavailable(f"no content key file {key_file}")
        key = base64.b64encode(secrets.token_bytes(32)) + b"\n"
        if private.create(key_file, key):  # False: another process made it meanwhile
            log.warning(
                "created the audit content master key %s; without it the stored content "
                "cannot be read: back it up apart from the database",
                key_file,
            )
    key = base64.b64decode(key_file.read_text().strip(), validate=True)
    if len(key) != 32:
        raise ContentKeyUnavailable(f"{key_file} does not hold a 32-byte base64 key")
    return key


def key_id(kek: bytes) -> str:
    """A fingerprint naming a master key (which key wrapped a data key) without revealing it."""
    return hmac.new(kek, b"custos.audit.content.kek-id", hashlib.sha256).hexdigest()[:16]


# -- data keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataKey:
    row: KeyRow
    aead: AESGCM = field(repr=False)


class ContentKeys:
    """The master key (loaded on first use) and the data keys this process encrypts with.

    ``forget`` is subscribed to the store's invalidation: an erasure on any replica drops the
    erased scope's keys here, so the next call of that team or principal gets a new key.
    """

    def __init__(self, load_master: Callable[[], bytes]) -> None:
        self._load_master = load_master
        self._kek: bytes | None = None
        self._kek_id = ""
        self._keys: OrderedDict[tuple[str | None, str | None], DataKey] = OrderedDict()

    def kek(self) -> tuple[bytes, str]:
        if self._kek is None:
            kek = self._load_master()
            self._kek, self._kek_id = kek, key_id(kek)
        return self._kek, self._kek_id

    def data_key(self, team: str | None, principal_id: str | None) -> DataKey:
        scope = (team, principal_id)
        found = self._keys.get(scope)
        if found is not None:
            self._keys.move_to_end(scope)
            return found
        kek, kek_id = self.kek()
        raw = secrets.token_bytes(32)
        row = KeyRow(f"dek_{secrets.token_hex(12)}", team, principal_id, kek_id,
                     aes_key_wrap(kek, raw))  # fmt: skip
        key = self._keys[scope] = DataKey(row, AESGCM(raw))
        if len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)
        return key

    def unwrap(self, row: KeyRow) -> AESGCM:
        kek, kek_id = self.kek()
        if row.kek_id != kek_id:
            raise ContentKeyUnavailable(
                f"data key {row.dek_id} was wrapped by master key {row.kek_id}, not by the "
                f"configured one ({kek_id})"
            )
        try:
            return AESGCM(aes_key_unwrap(kek, row.wrapped))
        except InvalidUnwrap:
            raise ContentUnreadable(f"data key {row.dek_id} does not unwrap: altered") from None

    def forget(self, change: Change) -> None:
        if change.kind == "*":
            self._keys.clear()
            return
        if change.kind != CHANGE_KIND:
            return
        scope, _, subject = change.id.partition(":")
        if scope == "team":
            doomed = [s for s in self._keys if s[0] == subject]
        elif scope == "principal":
            doomed = [s for s in self._keys if s[1] == subject]
        else:
            doomed = list(self._keys)
        for found in doomed:
            del self._keys[found]


def _aad(event_id: str, part: str, dek_id: str) -> bytes:
    return _AAD_PREFIX + f"{event_id}\x00{part}\x00{dek_id}".encode()


def encrypt(key: DataKey, event_id: str, part: str, plaintext: bytes) -> bytes:
    """nonce ‖ AES-256-GCM(plaintext) ‖ tag, bound to (event, part, key) as associated data."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + key.aead.encrypt(nonce, plaintext, _aad(event_id, part, key.row.dek_id))


def decrypt(aead: AESGCM, dek_id: str, event_id: str, part: str, blob: bytes) -> bytes:
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(event_id, part, dek_id))
    except InvalidTag:
        raise ContentUnreadable(
            f"the {part} content of event {event_id} does not decrypt: altered"
        ) from None


# -- capture on the request path ---------------------------------------------------------------


class ContentCapture:
    """One request's capture state (only made when ``audit.content`` is not ``none``): the
    pipeline hands it the plain response body, or feeds it a stream's relayed bytes."""

    __slots__ = ("mode", "protocol", "response", "stream")

    def __init__(self, mode: str, protocol: str) -> None:
        self.mode = mode
        self.protocol = protocol
        self.response: bytes | None = None
        self.stream: StreamTranscript | None = None

    def feed(self, data: bytes) -> None:
        if self.stream is None:
            self.stream = StreamTranscript(self.protocol)
        self.stream.feed(data)


def _canonical(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # e.g. an integer beyond 64 bits in a caller's JSON
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()


def _redacted(value: Any, counts: Counter[str]) -> Any:
    """``value`` with every string redacted (keys are names, not content: left alone)."""
    if isinstance(value, str):
        text, found = pii.redact(value)
        counts.update(found)
        return text
    if isinstance(value, dict):
        return {k: _redacted(v, counts) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, counts) for v in value]
    return value


def _captured_parts(ctx: RequestContext, capture: ContentCapture) -> dict[str, Any]:
    """The content of the call: its request, and its response as relayed (stream or body);
    for an MCP tool call, the tool and its arguments as the caller sent them, and the result
    as the caller received it."""
    if ctx.mcp is not None:
        return _tool_call_parts(ctx.mcp)
    parts: dict[str, Any] = {}
    if ctx.body:
        parts["request"] = request_content(ctx.body)
    if capture.stream is not None:
        parts["response"] = capture.stream.result()
    elif capture.response is not None:
        found = response_content(ctx.protocol, ctx.operation, capture.response)
        if found is not None:
            parts["response"] = found
    return parts


def _tool_call_parts(call: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    if call.server:
        parts["request"] = {"tool": call.qualified, "arguments": orjson.loads(call.arguments_json)}
    if call.result_json is not None:
        parts["response"] = orjson.loads(call.result_json)
    return parts


def _keyed_digests(key: bytes, parts: dict[str, Any]) -> dict[str, str | None]:
    """``hash`` mode's fields: each part's HMAC-SHA-256 under the record's salt ``key``."""
    fields: dict[str, str | None] = {}
    for part in PARTS:
        digest = None
        if part in parts:
            message = f"custos.audit.content.{part}\x00".encode() + _canonical(parts[part])
            digest = hmac.new(key, message, hashlib.sha256).hexdigest()
        fields[f"content.{part}.hmac_sha256"] = digest
    return fields


def capture_into(
    record: dict[str, Any], at_ms: int, ctx: RequestContext, keys: ContentKeys | None
) -> Attachment | None:
    """Add the ``content.*`` fields of ``ctx``'s capture to its unsealed ``llm.call`` record
    (and, for ``redacted``, the PII classes found to its ``data_classes``); returns what is to
    be stored with the record, if anything. Sets the record's ``event_id`` and ``salt`` (which
    ``seal`` keeps): the ciphertext is bound to the event id and the digests keyed by the salt.
    The record is changed only once everything succeeded (a failure raises and leaves it
    without ``content.*`` fields).
    """
    assert ctx.capture is not None
    mode = ctx.capture.mode
    parts = _captured_parts(ctx, ctx.capture)
    event_id = record.setdefault("event_id", uuid7(at_ms))
    salt = record.setdefault("salt", new_salt())
    fields: dict[str, Any] = {"content.mode": mode}
    if mode == "hash":
        record.update(fields | _keyed_digests(bytes.fromhex(salt), parts))
        return None
    counts: Counter[str] = Counter()
    if mode == "redacted":
        parts = {part: _redacted(value, counts) for part, value in parts.items()}
    fields["content.dek_id"] = None
    for part in PARTS:
        fields[f"content.{part}.sha256"] = None
        fields[f"content.{part}.bytes"] = None
    attachment = None
    if parts:
        if keys is None:
            raise ContentKeyUnavailable("no content master key on this gateway")
        key = keys.data_key(record["team"], record["principal.id"])
        fields["content.dek_id"] = key.row.dek_id
        blobs: dict[str, bytes] = {}
        for part, value in parts.items():
            plaintext = _canonical(value)
            blob = blobs[part] = encrypt(key, event_id, part, plaintext)
            fields[f"content.{part}.sha256"] = hashlib.sha256(blob).hexdigest()
            fields[f"content.{part}.bytes"] = len(plaintext)
        attachment = Attachment(event_id, key.row, blobs)
    record.update(fields)
    for kind in sorted(counts):
        record["data_classes"].append(
            {"class": kind, "count": counts[kind], "source": pii.DETECTOR_VERSION}
        )
    return attachment


# -- reading back ------------------------------------------------------------------------------


@dataclass(slots=True)
class EventContent:
    """One record's content as read back. ``state``: ``available``, ``erased``, ``hashed``
    (mode ``hash``: only digests exist), ``not_captured`` or ``missing`` (the record names a
    ciphertext the store does not have, and no erasure explains it)."""

    event_id: str
    mode: str
    state: str
    dek_id: str | None = None
    erased_at: str | None = None
    request: Any = None
    response: Any = None
    digests: dict[str, str | None] | None = None


async def read_content(
    audit: AuditStore, keys: ContentKeys | None, events: list[StoredEvent]
) -> list[EventContent]:
    """The content of the ``llm.call`` records among ``events``, each ciphertext checked
    against the SHA-256 its record names before it is decrypted. Raises ``ContentUnreadable``
    for altered content, ``ContentKeyUnavailable`` without the master key."""
    from custos.audit.records.record import leaf_hash

    out: list[EventContent] = []
    for event in events:
        if event.event_type not in ("llm.call", "mcp.tool_call"):
            continue
        if leaf_hash(event.record) != event.leaf_hash:
            raise ContentUnreadable(f"record {event.event_id} does not match its leaf hash")
        fields = orjson.loads(event.record)
        mode = fields.get("content.mode") or "none"
        item = EventContent(event.event_id, mode, "not_captured")
        out.append(item)
        if mode == "hash":
            item.state = "hashed"
            item.digests = {p: fields.get(f"content.{p}.hmac_sha256") for p in PARTS}
            continue
        dek_id = fields.get("content.dek_id")
        if mode not in ("full", "redacted") or dek_id is None:
            continue
        item.dek_id = dek_id
        item.state = "available"
        for part in PARTS:
            expected = fields.get(f"content.{part}.sha256")
            if expected is None:
                continue
            stored = await content_store.stored_part(audit.store, event.event_id, part, dek_id)
            if stored.erased_at is not None or stored.key is None:
                item.state = "erased" if stored.erased_at is not None else "missing"
                if stored.erased_at is not None:
                    item.erased_at = stored.erased_at.isoformat()
                item.request = item.response = None
                break
            if stored.blob is None:
                item.state = "missing"
                break
            if hashlib.sha256(stored.blob).hexdigest() != expected:
                raise ContentUnreadable(
                    f"the stored {part} ciphertext of event {event.event_id} does not match "
                    "the SHA-256 in its record: it was altered"
                )
            if keys is None:
                raise ContentKeyUnavailable("no content master key on this gateway")
            aead = keys.unwrap(stored.key)
            plaintext = decrypt(aead, dek_id, event.event_id, part, stored.blob)
            setattr(item, part, orjson.loads(plaintext))
    return out


# -- where the admin API finds the keys --------------------------------------------------------

_KEYS: weakref.WeakKeyDictionary[Store, ContentKeys] = weakref.WeakKeyDictionary()


def register(store: Store, keys: ContentKeys) -> None:
    """Make ``keys`` the content keys of ``store`` (the gateway does, at start)."""
    _KEYS[store] = keys


def keys_for(store: Store) -> ContentKeys | None:
    return _KEYS.get(store)

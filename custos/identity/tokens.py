"""Tokens: their format, their keyed hash, and issuing, rotating and revoking them.

Format (46 characters)::

    cst_pat_ | 32 base62 characters of randomness | 6 base62 characters of checksum
    cst_vat_ |

- The body is 32 characters drawn uniformly from 62 by ``secrets``: 32 * log2(62) ≈ 190.5 bits
  of entropy (``ENTROPY_BITS``), above the 160 the design asks for.
- The checksum is CRC32 of ``prefix + body``, written as 6 base62 digits (62^6 > 2^32). CRC32
  detects every error confined to 32 consecutive bits, so any single mistyped character
  (8 bits) or two swapped neighbours (16 bits) in prefix or body is caught; a mistyped checksum
  character changes the number it encodes, which is caught too. ``check_format`` therefore tells
  a mistyped token (``malformed``) from an unknown one without any lookup. The checksum is not a
  secret and adds no security; it is there for people and for secret scanners.
- The prefix (the first 12 characters, ``cst_pat_`` and 4 body characters) is stored for display,
  so a person can tell their tokens apart; 4 characters (~24 bits) reveal nothing useful.

Only ``HMAC-SHA256(token_hash_key, token)`` is stored. ``token_hash_key`` is a server secret that
comes from the config (``${env:…}`` or ``${file:…}``), never from the database, so a stolen
database alone does not allow testing guesses offline. Losing or changing the key invalidates
every token at once: they no longer hash to what is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from custos.state.errors import Invalid
from custos.state.models import Actor, TokenKind, TokenRecord, utcnow
from custos.state.store import Store

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIXES: Final[dict[str, str]] = {"pat": "cst_pat_", "vat": "cst_vat_"}
PREFIX_LENGTH: Final = 8
BODY_LENGTH: Final = 32
CHECKSUM_LENGTH: Final = 6
TOKEN_LENGTH: Final = PREFIX_LENGTH + BODY_LENGTH + CHECKSUM_LENGTH
#: Bits of randomness in a token: 32 * log2(62) ≈ 190.53.
ENTROPY_BITS: Final = BODY_LENGTH * math.log2(len(ALPHABET))
#: How much of a token is stored and shown to identify it.
DISPLAY_PREFIX_LENGTH: Final = 12
#: The shortest ``token_hash_key`` accepted: HMAC-SHA256 wants a key of at least 256 bits.
MIN_KEY_BYTES: Final = 32

_SHAPE = re.compile(r"^cst_(pat|vat)_[0-9A-Za-z]{38}$")
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}


def _base62(number: int, width: int) -> str:
    digits = ""
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits = ALPHABET[digit] + digits
    return digits


def checksum(prefix_and_body: str) -> str:
    """The 6-character checksum of ``prefix + body``."""
    return _base62(zlib.crc32(prefix_and_body.encode("ascii")), CHECKSUM_LENGTH)


def generate(kind: TokenKind) -> str:
    """A new random token of ``kind`` (``pat`` or ``vat``)."""
    prefix = PREFIXES.get(kind)
    if prefix is None:
        raise Invalid(f"token kind must be pat or vat, not {kind!r}")
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return prefix + body + checksum(prefix + body)


def check_format(token: str) -> TokenKind | None:
    """The token's kind if it is well formed (shape and checksum), else ``None`` (malformed).

    A well-formed token may still be unknown; only the directory can tell.
    """
    match = _SHAPE.match(token) if isinstance(token, str) else None
    if match is None:
        return None
    split = PREFIX_LENGTH + BODY_LENGTH
    if checksum(token[:split]) != token[split:]:
        return None
    return "pat" if match.group(1) == "pat" else "vat"


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LENGTH]


def coerce_key(key: str | bytes) -> bytes:
    """The ``token_hash_key`` as bytes, refusing keys too short to be a real secret."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise Invalid(
            f"token_hash_key must be at least {MIN_KEY_BYTES} bytes "
            "(e.g. `openssl rand -base64 48`)"
        )
    return raw


def hash_token(token: str, key: bytes) -> str:
    """The stored form of a token: hex HMAC-SHA256 under the server's ``token_hash_key``."""
    return TokenHasher(key)(token)


class TokenHasher:
    """``hash_token`` with one key, for the hot path: the key schedule is done once, and each
    call hashes with a copy of the keyed HMAC. That is the cheapest per-call form (no digest
    lookup, no key setup) and, unlike the one-shot ``hmac.digest``, it does not give up the
    interpreter lock for a 50-byte input, which on the gateway's one busy core let another
    thread in on every request."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, token: str) -> str:
        mac = self._keyed.copy()
        mac.update(token.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()


def _check_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise Invalid("expires_at must carry a time zone (use UTC)")
    if expires_at <= utcnow():
        raise Invalid("expires_at is in the past")
    return expires_at


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token: ``secret`` is shown to the caller once and never again."""

    secret: str = field(repr=False)
    record: TokenRecord


class TokenService:
    """Issues, rotates and revokes tokens in a ``Store``; the only code that sees a secret."""

    def __init__(self, store: Store, token_hash_key: str | bytes) -> None:
        self.store = store
        self._key = coerce_key(token_hash_key)

    @property
    def key(self) -> bytes:
        """The token hash key, from which the MCP credentials' key is derived."""
        return self._key

    def hash(self, token: str) -> str:
        return hash_token(token, self._key)

    async def issue_token(
        self,
        actor: Actor,
        *,
        kind: TokenKind,
        principal_id: str,
        name: str,
        expires_at: datetime | None = None,
        allowed_models: list[str] | tuple[str, ...] | None = None,
    ) -> IssuedToken:
        """Issue a PAT (``principal_id`` is a user id) or VAT (a virtual account id).

        ``allowed_models`` narrows the token to a subset of what its principal may call.
        """
        _check_expiry(expires_at)
        secret = generate(kind)
        record = await self.store.create_token(
            actor,
            kind=kind,
            principal_id=principal_id,
            name=name,
            token_hash=self.hash(secret),
            prefix=display_prefix(secret),
            expires_at=expires_at,
            allowed_models=allowed_models,
        )
        return IssuedToken(secret=secret, record=record)

    async def rotate(
        self,
        token_id: str,
        grace_seconds: float,
        actor: Actor,
        *,
        expires_at: datetime | Literal["keep"] | None = "keep",
    ) -> IssuedToken:
        """Issue a replacement for a token; the old one keeps working for ``grace_seconds``.

        The replacement keeps the old token's kind, principal, name and narrowing. By default
        it also keeps its lifetime (an old token that lived 90 days gives a new one that lives
        90 days from now); pass ``expires_at`` to choose. ``grace_seconds=0`` ends the old token
        at once. Returns the new token; the old record (with ``grace_until``) is in the store.
        """
        if grace_seconds < 0:
            raise Invalid("grace_seconds must not be negative")
        now = utcnow()
        # Read outside the rotation's transaction only to learn kind and lifetime; the store
        # re-reads the row under lock and refuses a token revoked or rotated meanwhile.
        old = await self.store.get_token(token_id)
        new_expiry: datetime | None
        if isinstance(expires_at, datetime) or expires_at is None:
            new_expiry = _check_expiry(expires_at)
        else:
            new_expiry = None if old.expires_at is None else now + (old.expires_at - old.created_at)
        secret = generate("vat" if old.kind == "vat" else "pat")
        _, new = await self.store.rotate_token(
            actor,
            token_id,
            token_hash=self.hash(secret),
            prefix=display_prefix(secret),
            grace_until=now + timedelta(seconds=grace_seconds),
            expires_at=new_expiry,
        )
        return IssuedToken(secret=secret, record=new)

    async def revoke(self, token_id: str, actor: Actor) -> TokenRecord:
        return await self.store.revoke_token(actor, token_id)

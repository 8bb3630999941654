"""Per-user credentials for MCP servers (``auth: {type: per_user}``), encrypted at rest.

A user stores their own credential for a tool server (the admin API, ``custos mcp credential
set``); the gateway presents it to that server on the user's tool calls. This module holds:

- ``CredentialCipher``: AES-256-GCM under a key derived (HKDF-SHA-256) from
  ``identity.token_hash_key``, which every replica of a cluster already shares. Each row has
  its own random 96-bit nonce; the associated data binds the ciphertext to its user and its
  server, so a row copied to another user or another server does not decrypt. ``key_id`` (a
  digest of the derived key, never the key) tells a row sealed under another key from a
  damaged one.
- the ``mcp_credentials`` table's reads and writes (migration ``m0010``): (principal, server)
  → nonce ‖ ciphertext ‖ tag, with created and updated times. A change writes its admin event
  (``mcp_credential.set`` / ``mcp_credential.delete``: who and which server, never the value)
  in the same transaction and is announced as a ``Change("mcp_credential", principal_id)``.
  The rows reference their user: deleting the user deletes them.
- ``CredentialCache``: every row's ciphertext in memory, so a tool call reads no table. It
  reloads a principal's rows when their change is announced (every replica), when a change
  is made in this process (before the admin call answers: read your writes), and everything
  on ``*`` and every ``refresh_s``. Values are decrypted per call and never kept in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from custos.state.errors import Invalid, NotFound
from custos.state.models import Actor, Change
from custos.state.store import Store, _req_dt

if TYPE_CHECKING:
    from custos.state.invalidation import Invalidation

log = logging.getLogger("custos.state")

#: The ``Change.kind`` announcing a principal's credentials changed (its id: the principal).
CHANGE_KIND: Final = "mcp_credential"
#: The longest credential accepted (it travels in one HTTP header).
MAX_SECRET_CHARS: Final = 8192
_NONCE_BYTES: Final = 12
_INFO: Final = b"custos mcp per-user credentials v1"


class CredentialUnreadable(Exception):
    """A stored credential does not decrypt here: another key sealed it, or it was altered or
    moved to another user or server."""


class CredentialCipher:
    """AES-256-GCM sealing of credentials bound to (principal, server) (module docstring)."""

    def __init__(self, token_hash_key: bytes) -> None:
        key = HKDF(hashes.SHA256(), 32, salt=None, info=_INFO).derive(token_hash_key)
        self._aead = AESGCM(key)
        #: Names the derived key (a digest of it under a label of its own), never reveals it.
        self.key_id = hashlib.sha256(b"custos key id\x00" + key).hexdigest()[:16]

    @staticmethod
    def _bound_to(principal_id: str, server: str) -> bytes:
        return b"custos-mcp-credential\x00" + principal_id.encode() + b"\x00" + server.encode()

    def seal(self, principal_id: str, server: str, secret: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), self._bound_to(principal_id, server))
        return nonce + sealed

    def open(self, principal_id: str, server: str, blob: bytes, key_id: str) -> str:
        if key_id != self.key_id:
            raise CredentialUnreadable("sealed under another key (identity.token_hash_key "
                                       "changed): set it again")  # fmt: skip
        try:
            plain = self._aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], self._bound_to(principal_id, server)
            )
        except (InvalidTag, ValueError):
            raise CredentialUnreadable("it does not decrypt (altered or moved)") from None
        return plain.decode()


def check_secret(secret: str) -> str:
    """A credential fit for an HTTP header: visible ASCII and inner spaces, no line breaks."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise Invalid(f"the credential must be 1 to {MAX_SECRET_CHARS} characters")
    if secret != secret.strip() or any(not 0x20 <= ord(c) <= 0x7E for c in secret):
        raise Invalid("the credential must be printable ASCII without surrounding spaces or "
                      "line breaks (it is sent in an HTTP header)")  # fmt: skip
    return secret


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """That a principal holds a credential for a server (never its value)."""

    principal_id: str
    server: str
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"principal_id": self.principal_id, "server": self.server,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}  # fmt: skip


def _info(row: dict[str, Any]) -> CredentialInfo:
    return CredentialInfo(row["principal_id"], row["server"], _req_dt(row["created_at"]),
                          _req_dt(row["updated_at"]))  # fmt: skip


# -- the table ------------------------------------------------------------------------------


async def put_credential(
    store: Store, actor: Actor, cipher: CredentialCipher, principal_id: str, server: str,
    secret: str,
) -> tuple[CredentialInfo, bool]:  # fmt: skip
    """Set or replace ``principal_id``'s credential for ``server``; returns it and whether it
    was created (False: replaced). The principal must be a user."""
    blob = cipher.seal(principal_id, server, check_secret(secret))
    async with store._write(actor) as w:  # the store's unit of change (event + announcement)
        if await w.tx.fetchrow("SELECT id FROM users WHERE id = $1", principal_id) is None:
            raise NotFound(f"no user {principal_id!r}")
        old = await w.tx.fetchrow(
            "SELECT principal_id, server, created_at, updated_at FROM mcp_credentials"
            f" WHERE principal_id = $1 AND server = $2{w.tx.for_update}",
            principal_id,
            server,
        )
        if old is None:
            await w.tx.execute(
                "INSERT INTO mcp_credentials (principal_id, server, key_id, ciphertext,"
                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
                principal_id, server, cipher.key_id, blob, w.now,
            )  # fmt: skip
            info = CredentialInfo(principal_id, server, w.now, w.now)
        else:
            await w.tx.execute(
                "UPDATE mcp_credentials SET key_id = $3, ciphertext = $4, updated_at = $5"
                " WHERE principal_id = $1 AND server = $2",
                principal_id, server, cipher.key_id, blob, w.now,
            )  # fmt: skip
            info = CredentialInfo(principal_id, server, _info(old).created_at, w.now)
        before = None if old is None else _info(old).to_dict()
        await w.event("mcp_credential.set", CHANGE_KIND, f"{principal_id}/{server}", before,
                      info.to_dict())  # fmt: skip
        w.changed(CHANGE_KIND, principal_id)
    await _reload_here(store, principal_id)
    return info, old is None


async def delete_credential(
    store: Store, actor: Actor, principal_id: str, server: str
) -> CredentialInfo:
    """Delete ``principal_id``'s credential for ``server`` (``NotFound`` if there is none)."""
    async with store._write(actor) as w:
        row = await w.tx.fetchrow(
            "SELECT principal_id, server, created_at, updated_at FROM mcp_credentials"
            f" WHERE principal_id = $1 AND server = $2{w.tx.for_update}",
            principal_id,
            server,
        )
        if row is None:
            raise NotFound(f"no credential for MCP server {server!r}")
        info = _info(row)
        await w.tx.execute(
            "DELETE FROM mcp_credentials WHERE principal_id = $1 AND server = $2",
            principal_id,
            server,
        )
        await w.event("mcp_credential.delete", CHANGE_KIND, f"{principal_id}/{server}",
                      info.to_dict(), None)  # fmt: skip
        w.changed(CHANGE_KIND, principal_id)
    await _reload_here(store, principal_id)
    return info


async def list_credentials(store: Store, principal_id: str | None = None) -> list[CredentialInfo]:
    """Which (principal, server) pairs hold a credential: all, or one principal's."""
    sql = "SELECT principal_id, server, created_at, updated_at FROM mcp_credentials"
    args: list[Any] = []
    if principal_id is not None:
        sql += " WHERE principal_id = $1"
        args.append(principal_id)
    async with store._read() as tx:
        rows = await tx.fetch(sql + " ORDER BY principal_id, server", *args)
    return [_info(r) for r in rows]


async def _sealed_rows(store: Store, principal_ids: Collection[str] | None) -> list[dict[str, Any]]:
    sql = "SELECT principal_id, server, key_id, ciphertext FROM mcp_credentials"
    async with store._read() as tx:
        if principal_ids is None:
            return await tx.fetch(sql)
        rows: list[dict[str, Any]] = []
        for principal_id in principal_ids:
            rows += await tx.fetch(sql + " WHERE principal_id = $1", principal_id)
        return rows


# -- the cache ------------------------------------------------------------------------------

#: The cache serving each store in this process (a change made here reloads it at once).
_CACHES: weakref.WeakKeyDictionary[Store, CredentialCache] = weakref.WeakKeyDictionary()


async def _reload_here(store: Store, principal_id: str) -> None:
    cache = _CACHES.get(store)
    if cache is not None:
        try:
            await cache.reload({principal_id})
        except Exception:  # the change is committed; the announcement or the timer catch up
            log.warning("mcp credentials: reload after a change failed", exc_info=True)


class CredentialCache:
    """(principal, server) → sealed credential, in memory (module docstring)."""

    def __init__(
        self,
        store: Store,
        cipher: CredentialCipher,
        invalidation: Invalidation | None = None,
        *,
        refresh_s: float = 60.0,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self._invalidation = invalidation
        self._refresh_s = refresh_s
        self._sealed: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._pending: set[str] = set()
        self._full = False
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._invalidation is not None:
            self._invalidation.subscribe(self._on_change)
        await self.reload(None)
        _CACHES[self.store] = self
        self._task = asyncio.create_task(self._loop(), name="custos-mcp-credentials")

    async def close(self) -> None:
        if self._invalidation is not None:
            self._invalidation.unsubscribe(self._on_change)
        if _CACHES.get(self.store) is self:
            del _CACHES[self.store]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def get(self, principal_id: str, server: str) -> str | None:
        """The principal's credential for ``server`` in clear, or None; raises
        ``CredentialUnreadable``. Reads no table."""
        held = self._sealed.get((principal_id, server))
        if held is None:
            return None
        key_id, blob = held
        return self.cipher.open(principal_id, server, blob, key_id)

    def _on_change(self, change: Change) -> None:
        if change.kind in (CHANGE_KIND, "user"):
            self._pending.add(change.id)
        elif change.kind == "*":
            self._full = True
        else:
            return
        self._dirty.set()

    async def reload(self, principal_ids: Collection[str] | None) -> None:
        """Load every row (None) or these principals' rows, and swap them in."""
        # One at a time: a full reload that read the table before a change must not land
        # after the partial reload that brought the change in.
        async with self._lock:
            rows = await _sealed_rows(self.store, principal_ids)
            fresh = {(r["principal_id"], r["server"]): (r["key_id"], bytes(r["ciphertext"]))
                     for r in rows}  # fmt: skip
            if principal_ids is None:
                self._sealed = fresh
                return
            kept = {k: v for k, v in self._sealed.items() if k[0] not in principal_ids}
            self._sealed = {**kept, **fresh}  # one assignment: a call sees old or new

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self._refresh_s)
            self._dirty.clear()
            pending, self._pending = self._pending, set()
            full = self._full or not pending
            self._full = False
            try:
                await self.reload(None if full else pending)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("mcp credentials: reload failed; serving the previous copy",
                            exc_info=True)  # fmt: skip
                self._full = True
                await asyncio.sleep(1.0)
                self._dirty.set()

"""The content tables (migration 0007): attachments in, ciphertext out, erasure.

**Attachments.** The encrypted content of one record travels with the record, through the same
path: the writer's queue, the spool (one extra line after the record's, starting with ``+``) and
the writer's batched store transaction. An attachment carries the event id, the data key's row
(wrapped under the master key: safe to write to the spool) and the ciphertexts of the parts. It
is inserted with ``ON CONFLICT DO NOTHING``, like records, so a replayed spool changes nothing.

**Erasure** (``erase``) deletes the data keys of a team or a principal and their ciphertexts,
writes the key ids to ``audit_content_erasures`` and an admin event (``audit.content.erase``,
which becomes an ``admin.change`` record naming what was erased and how much, never any
content), and announces the change so every replica drops those keys from its cache. An
attachment whose key was erased is never inserted, so a spool replayed after the erasure (or a
replica that encrypted with the key in the moment before it heard of the erasure) cannot bring
the key back. On PostgreSQL an advisory lock orders erasures and attachment inserts (shared for
inserts, exclusive for an erasure), so a concurrent insert cannot slip a key back in between the
erasure's check and its commit. On SQLite the one write lock does that; the erasure's deletes
run with ``secure_delete`` (deleted bytes overwritten with zeros) and are followed by a WAL
checkpoint that truncates the WAL, so the destroyed key bytes leave the database files.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from custos.state.errors import Invalid
from custos.state.models import Actor, utcnow
from custos.state.store import Store, Tx

#: Invalidation kind: ``id`` is ``team:<name>``, ``principal:<id>`` (or ``*``: everything).
CHANGE_KIND: Final = "audit_content"
#: The lock (``Tx.lock``) that orders erasures (exclusive) against attachment inserts (shared).
LOCK_CLASS: Final = 0x61756432  # "aud2"


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A data key as stored: wrapped under the master key ``kek_id``."""

    dek_id: str
    team: str | None
    principal_id: str | None
    kek_id: str
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class Attachment:
    """The encrypted content of one record: ``parts`` maps ``request``/``response`` to the
    stored blob (nonce ‖ ciphertext ‖ tag)."""

    event_id: str
    key: KeyRow
    parts: dict[str, bytes]

    def encode(self) -> bytes:
        """One line (no newline byte) for the spool."""
        b64 = base64.b64encode
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "key": {
                    "id": self.key.dek_id,
                    "team": self.key.team,
                    "principal_id": self.key.principal_id,
                    "kek_id": self.key.kek_id,
                    "wrapped": b64(self.key.wrapped).decode(),
                },
                "parts": {part: b64(blob).decode() for part, blob in self.parts.items()},
            }
        )

    @classmethod
    def decode(cls, line: bytes) -> Attachment:
        data = orjson.loads(line)
        key = data["key"]
        return cls(
            data["event_id"],
            KeyRow(
                key["id"],
                key["team"],
                key["principal_id"],
                key["kek_id"],
                base64.b64decode(key["wrapped"]),
            ),
            {part: base64.b64decode(blob) for part, blob in data["parts"].items()},
        )


# -- writes (in the writer's transaction) ------------------------------------------------------


async def insert_attachments(tx: Tx, lines: Sequence[bytes]) -> None:
    """Insert encoded attachments in the open transaction ``tx`` (see the module docstring).
    Raises ``Invalid`` for a line that is not an encoded attachment (a damaged spool line): no
    attempt can store it."""
    try:
        attachments = [Attachment.decode(line) for line in lines]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Invalid(f"an attachment is not readable ({type(exc).__name__})") from None
    if not attachments:
        return
    await tx.lock(LOCK_CLASS, shared=True)
    keys = {a.key.dek_id: a.key for a in attachments}
    erased = await _erased_among(tx, list(keys))
    now = utcnow()
    await tx.executemany(
        "INSERT INTO audit_content_keys (dek_id, team, principal_id, kek_id, wrapped_key,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dek_id) DO NOTHING",
        [
            (k.dek_id, k.team, k.principal_id, k.kek_id, k.wrapped, now)
            for k in keys.values()
            if k.dek_id not in erased
        ],
    )
    rows = [
        (a.event_id, part, a.key.dek_id, blob)
        for a in attachments
        if a.key.dek_id not in erased
        for part, blob in a.parts.items()
    ]
    if rows:
        await tx.executemany(
            "INSERT INTO audit_content (event_id, part, dek_id, blob) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (event_id, part) DO NOTHING",
            rows,
        )


async def _erased_among(tx: Tx, dek_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(dek_ids), 500):
        chunk = dek_ids[start : start + 500]
        marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
        rows = await tx.fetch(
            f"SELECT dek_id FROM audit_content_erasures WHERE dek_id IN ({marks})", *chunk
        )
        found.update(r["dek_id"] for r in rows)
    return found


# -- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredPart:
    """What the store holds for one part of one event's content."""

    blob: bytes | None
    key: KeyRow | None
    #: When the part's key was erased (``None``: not erased).
    erased_at: datetime | None


async def stored_part(store: Store, event_id: str, part: str, dek_id: str) -> StoredPart:
    async with store.transaction(readonly=True) as tx:
        blob_row = await tx.fetchrow(
            "SELECT blob FROM audit_content WHERE event_id = $1 AND part = $2", event_id, part
        )
        key_row = await tx.fetchrow("SELECT * FROM audit_content_keys WHERE dek_id = $1", dek_id)
        erased_row = await tx.fetchrow(
            "SELECT erased_at FROM audit_content_erasures WHERE dek_id = $1", dek_id
        )
    key = None
    if key_row is not None:
        key = KeyRow(
            key_row["dek_id"],
            key_row["team"],
            key_row["principal_id"],
            key_row["kek_id"],
            bytes(key_row["wrapped_key"]),
        )
    erased_at = None
    if erased_row is not None:
        value = erased_row["erased_at"]
        erased_at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return StoredPart(bytes(blob_row["blob"]) if blob_row is not None else None, key, erased_at)


# -- erasure -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure destroyed."""

    scope: str  # team | principal
    subject: str
    data_keys: int
    contents: int
    erased_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "subject": self.subject,
            "data_keys": self.data_keys,
            "contents": self.contents,
        }


async def erase(store: Store, actor: Actor, *, scope: str, subject: str) -> Erasure:
    """Destroy every data key of team ``subject`` (``scope="team"``) or principal ``subject``
    (``scope="principal"``) and the ciphertexts under them. Idempotent: erasing again destroys
    what was created since (nothing, if nothing was)."""
    if scope not in ("team", "principal"):
        raise ValueError(f"scope must be team or principal, not {scope!r}")
    column = "team" if scope == "team" else "principal_id"
    # ``_write`` is the store's unit of change: one transaction, its admin event, and the
    # announcement to every replica after the commit.
    async with store._write(actor) as w:
        tx = w.tx
        async with tx.erasing():
            await tx.lock(LOCK_CLASS)
            keys, contents = await _erase_in(tx, column, subject, w.now)
        erasure = Erasure(scope, subject, len(keys), contents, w.now)
        await w.event("audit.content.erase", scope, subject, None, erasure.to_dict())
        w.changed(CHANGE_KIND, f"{scope}:{subject}")
    await store.checkpoint_wal()  # the page images that held the erased bytes leave the WAL
    return erasure


async def _erase_in(
    tx: Tx, column: str, subject: str, now: datetime
) -> tuple[list[dict[str, Any]], int]:
    """Record the erasure of every data key whose ``column`` is ``subject`` and delete the keys
    and their ciphertexts, in ``tx``: the keys erased and how many ciphertexts went."""
    keys = await tx.fetch(
        f"SELECT dek_id, team, principal_id FROM audit_content_keys WHERE {column} = $1",
        subject,
    )
    counted = await tx.fetchrow(
        "SELECT count(*) AS n FROM audit_content c JOIN audit_content_keys k"
        f" ON k.dek_id = c.dek_id WHERE k.{column} = $1",
        subject,
    )
    contents = int(counted["n"]) if counted else 0
    await tx.executemany(
        "INSERT INTO audit_content_erasures (dek_id, team, principal_id, erased_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (dek_id) DO NOTHING",
        [(k["dek_id"], k["team"], k["principal_id"], now) for k in keys],
    )
    await tx.execute(
        "DELETE FROM audit_content WHERE dek_id IN"
        f" (SELECT dek_id FROM audit_content_keys WHERE {column} = $1)",
        subject,
    )
    await tx.execute(f"DELETE FROM audit_content_keys WHERE {column} = $1", subject)
    return keys, contents

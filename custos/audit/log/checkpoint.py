"""Signed checkpoints: C2SP signed notes over the tree head, chained, stored and exported.

A checkpoint is a C2SP ``tlog-checkpoint`` body in a C2SP ``signed-note``::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    time 2026-07-01T12:00:00.123Z
    prev <base64 SHA-256 of the previous checkpoint's whole note; 32 zero bytes for the first>

    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>

The signature covers the body (including its final newline). The key ID is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``. Verifier keys are passed around
in the signed-note ``vkey`` text form ``<name>+<hex key ID>+<base64(0x01 || public key)>``.

Contracts:

- ``open_note`` follows the signed-note rules: signatures by unknown keys are ignored, a bad
  signature by a known key rejects the note, and a note without a valid known-key signature is
  rejected (``NoteError``). It also refuses control characters and more than 100 signatures.
- ``Checkpointer`` is driven by the leading sequencer only. A checkpoint is written when the tree
  grew by ``every_n`` records or ``interval_s`` passed with growth, in one transaction with the
  check that the size grew; then the note is appended (and fsynced) to the export file, which
  lives outside the database.
- The private key is loaded by ``load_signer`` into the ``Signer`` only; settings hold a path
  or the name of an environment variable, never the key, and the variable is removed from the
  environment once read, so request-path code cannot read it.
- Rotation: during the overlap the checkpointer holds two signers, the current key and the
  retiring one, and every note carries both signatures, so a verifier holding either vkey
  accepts it. A key's name is part of its key ID: the retiring key must keep the name it was
  registered under.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos import private
from custos.audit.records.record import parse_rfc3339, rfc3339_ms
from custos.state.models import utcnow
from custos.state.store import Store

log = logging.getLogger("custos.audit.checkpoint")

ED25519: Final = 0x01
EM_DASH: Final = "\u2014"
GENESIS_PREV: Final = bytes(32)
MAX_SIGNATURES: Final = 100
KEY_ENV: Final = "CUSTOS_AUDIT_SIGNING_KEY"
PASSPHRASE_ENV: Final = "CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE"
#: The passphrase of ``audit.retiring_signing_key`` (an encrypted PEM), read and removed once.
RETIRING_PASSPHRASE_ENV: Final = "CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE"


class NoteError(ValueError):
    """A note or checkpoint that is malformed or not validly signed."""


def key_id(name: str, public_key: bytes) -> bytes:
    """The C2SP signed-note key ID of an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValueError(f"key name {name!r}: non-empty, no spaces, no '+'")
    return name


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key that checkpoints may be signed with, and when it was valid."""

    name: str
    public_key: bytes
    not_before: datetime | None = None
    not_after: datetime | None = None

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        raw = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.id.hex()}+{raw}"

    def valid_at(self, moment: datetime) -> bool:
        if self.not_before is not None and moment < self.not_before:
            return False
        return self.not_after is None or moment < self.not_after

    def verify(self, signature: bytes, body: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, body)
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_vkey(text: str) -> Verifier:
    """A verifier from ``<name>+<hex key ID>+<base64(0x01 || key)>``; raises ``ValueError``."""
    name, _, rest = text.strip().partition("+")
    hex_id, _, raw = rest.partition("+")
    try:
        data = base64.b64decode(raw, validate=True)
        wanted = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise ValueError(f"not a verifier key: {text!r}") from None
    if len(data) != 33 or data[0] != ED25519 or len(wanted) != 4:
        raise ValueError(f"not an Ed25519 verifier key: {text!r}")
    verifier = Verifier(_check_name(name), data[1:])
    if verifier.id != wanted:
        raise ValueError(f"verifier key {name}: the key ID does not match the key")
    return verifier


def load_verifiers(spec: str) -> list[Verifier]:
    """Verifier keys from a vkey string or from a file of vkeys, one per line."""
    path = Path(spec)
    if not path.exists():
        return [parse_vkey(spec)]
    text = path.read_text()
    if "BEGIN PUBLIC KEY" in text:
        raise ValueError(f"{spec}: give the key as a vkey line (`custos audit keys` prints it)")
    return [parse_vkey(line) for line in text.splitlines() if line.strip()]


class Signer:
    """An Ed25519 signing key with its key name. Holds the only copy of the private key."""

    __slots__ = ("_key", "name", "public_key")

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name = _check_name(name)
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key id {self.verifier.id.hex()})"

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public_key)

    def signature_line(self, body: bytes) -> str:
        sig = self._key.sign(body)
        return f"{EM_DASH} {self.name} {base64.b64encode(self.verifier.id + sig).decode()}\n"


def load_signer(
    name: str,
    path: str | None = None,
    *,
    env: str = KEY_ENV,
    passphrase_env: str = PASSPHRASE_ENV,
) -> Signer:
    """The signing key from a PEM file (PKCS#8, optionally encrypted: the passphrase comes from
    the environment variable ``passphrase_env``) or, without a path, from the PEM text in the
    environment variable ``env``. Both variables are removed from the environment once read."""
    passphrase = os.environ.pop(passphrase_env, None)
    if path is not None:
        data = _read_key_file(path)
    else:
        text = os.environ.pop(env, None)
        if not text:
            raise ValueError(f"no audit signing key: set audit.signing_key or {env}")
        data = text.encode()
    key = serialization.load_pem_private_key(
        data, password=passphrase.encode() if passphrase else None
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the audit signing key must be an Ed25519 key")
    return Signer(name, key)


def _read_key_file(path: str) -> bytes:
    """A PEM file, bounded: a FIFO or a device named by mistake must not hang or fill memory."""
    from custos.config.refs import UnreadableFile, read_bounded

    try:
        return read_bounded(Path(path), _MAX_KEY_FILE_BYTES)
    except UnreadableFile as exc:
        raise ValueError(f"audit signing key {path}: {exc}") from None


_MAX_KEY_FILE_BYTES = 64 * 1024


def now_ms() -> datetime:
    """Now, at the millisecond precision of checkpoint times. Key validity bounds are written at
    that precision so that a checkpoint signed after a key was registered (or retired) is
    dated at or after that moment, even within the same millisecond."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def generate_pem(passphrase: str | None = None) -> bytes:
    """A new Ed25519 key as PKCS#8 PEM (encrypted with ``passphrase`` when given)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


# -- notes -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed checkpoint. ``note`` is the whole signed note; ``signers`` the names of the
    keys whose signatures were verified and ``keys`` those verifiers themselves (both empty
    when parsed without verifying). Validity checks go by ``keys``: two keys may share a
    name."""

    origin: str
    size: int
    root: bytes
    time: str
    prev: bytes
    note: str
    signers: tuple[str, ...] = ()
    keys: tuple[Verifier, ...] = ()

    @property
    def note_hash(self) -> bytes:
        return hashlib.sha256(self.note.encode()).digest()

    @property
    def at(self) -> datetime:
        return parse_rfc3339(self.time)


def checkpoint_body(origin: str, size: int, root: bytes, at: str, prev: bytes) -> str:
    return (
        f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
        f"time {at}\nprev {base64.b64encode(prev).decode()}\n"
    )


def sign_note(body: str, signers: Sequence[Signer]) -> str:
    if not body.endswith("\n") or "\n\n" in body or not signers:
        raise ValueError("a note body ends with one newline, has no blank line and a signer")
    return body + "\n" + "".join(s.signature_line(body.encode()) for s in signers)


def open_note(note: str, verifiers: Iterable[Verifier]) -> tuple[str, tuple[str, ...]]:
    """Check ``note``'s signatures (see the module docstring); returns the body and the names
    of the keys that verified it. Raises ``NoteError``."""
    body, keys = open_note_keys(note, verifiers)
    return body, tuple(v.name for v in keys)


def open_note_keys(note: str, verifiers: Iterable[Verifier]) -> tuple[str, tuple[Verifier, ...]]:
    """``open_note``, returning the verifiers whose signatures checked rather than names."""
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("the note holds a control character")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("the note has no signature block")
    body, block = note[: split + 1], note[split + 2 :]
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("the note has too many signatures")
    known = {(v.name, v.id): v for v in verifiers}
    verified: list[Verifier] = []
    for line in lines:
        prefix, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        if prefix != EM_DASH or not name or not encoded or " " in encoded:
            raise NoteError(f"malformed signature line {line!r}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"signature of {name} is not base64") from None
        if len(raw) < 5:
            raise NoteError(f"signature of {name} is too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue  # unknown keys are ignored
        if not verifier.verify(raw[4:], body.encode()):
            raise NoteError(f"the signature of {name} ({raw[:4].hex()}) is not valid")
        verified.append(verifier)
    if not verified:
        raise NoteError("the note is not signed by any known key")
    return body, tuple(verified)


def parse_checkpoint(note: str, verifiers: Iterable[Verifier] | None = None) -> Checkpoint:
    """Parse (and, given ``verifiers``, verify) a checkpoint note; raises ``NoteError``."""
    if verifiers is None:
        split = note.rfind("\n\n")
        if split < 0:
            raise NoteError("the note has no signature block")
        body, keys = note[: split + 1], ()
    else:
        body, keys = open_note_keys(note, verifiers)
    lines = body[:-1].split("\n")
    if len(lines) < 5:
        raise NoteError("a checkpoint has an origin, a size, a root, a time and a prev line")
    origin, size_text, root_text, *extensions = lines
    extra = dict(line.partition(" ")[::2] for line in extensions)
    try:
        size = int(size_text)
        root = base64.b64decode(root_text, validate=True)
        prev = base64.b64decode(extra["prev"], validate=True)
        at = extra["time"]
        parse_rfc3339(at)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise NoteError(f"malformed checkpoint: {exc}") from None
    if str(size) != size_text or size < 0 or len(root) != 32 or len(prev) != 32:
        raise NoteError("malformed checkpoint: bad size, root or prev")
    signers = tuple(v.name for v in keys)
    return Checkpoint(origin, size, root, at, prev, note, signers, keys)


def read_export(path: str | Path) -> list[str]:
    """The notes in an export file (each note followed by one blank line)."""
    notes: list[str] = []
    current: list[str] = []
    in_signatures = False
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line == "":
            if in_signatures and current:
                notes.append("\n".join(current) + "\n")
                current, in_signatures = [], False
            elif current:
                current.append("")
                in_signatures = True
            continue
        current.append(line)
    if current and in_signatures:
        notes.append("\n".join(current) + "\n")
    return notes


# -- the checkpointer ------------------------------------------------------------------------------


class Checkpointer:
    """Signs and stores checkpoints for the leading sequencer (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        signers: Sequence[Signer],
        *,
        origin: str,
        interval_s: float = 10.0,
        every_n: int = 10_000,
        export_path: str | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        if not signers:
            raise ValueError("a checkpointer needs a signing key")
        self.store = store
        self.signers = list(signers)
        self.origin = origin
        self.interval_s = interval_s
        self.every_n = every_n
        self.export_path = export_path
        #: Told of each new checkpoint once it is stored and exported (the OTLP copy); must
        #: not block.
        self.on_checkpoint = on_checkpoint
        self._last_size: int | None = None
        self._last_at = time.monotonic()
        self._lock = asyncio.Lock()

    async def register_keys(self) -> list[str]:
        """Record the public keys (kept forever; ``not_before`` is the first registration).

        Returns (and logs) the names of configured keys whose validity was already closed by
        ``custos audit keys retire``: their signatures from now on fall outside it, so verify
        counts a checkpoint only through another, still valid key's signature."""
        retired: list[str] = []
        async with self.store.transaction() as tx:
            for signer in self.signers:
                await tx.execute(
                    "INSERT INTO audit_signing_keys (key_name, key_id, public_key, not_before)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (key_name, key_id) DO NOTHING",
                    signer.name,
                    signer.verifier.id.hex(),
                    signer.public_key,
                    now_ms(),
                )
                closed = await tx.fetchrow(
                    "SELECT not_after FROM audit_signing_keys WHERE key_name = $1"
                    " AND key_id = $2 AND not_after IS NOT NULL",
                    signer.name,
                    signer.verifier.id.hex(),
                )
                if closed is not None:
                    retired.append(signer.name)
        for name in retired:
            log.warning("audit signing key %s was retired: remove it from the config", name)
        if len(retired) == len(self.signers):
            log.error("every audit signing key configured was retired: verify will refuse the "
                      "new checkpoints until a new key is configured")  # fmt: skip
        return retired

    async def on_sequenced(self, size: int, root: bytes) -> None:
        """Called by the sequencer after each batch: checkpoint when ``every_n`` records or
        ``interval_s`` seconds have gone by since the last one."""
        last = self._last_size
        if (
            last is None
            or size - last >= self.every_n
            or time.monotonic() - self._last_at >= self.interval_s
        ):
            await self.checkpoint(size, root)

    async def checkpoint(self, size: int, root: bytes) -> Checkpoint | None:
        """Sign, store and export a checkpoint of the tree ``(size, root)`` unless the last one
        already covers ``size``. Returns the new checkpoint."""
        async with self._lock:
            async with self.store.transaction() as tx:
                last = await tx.fetchrow(
                    "SELECT id, size, note_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
                )
                if last is not None and int(last["size"]) >= size:
                    self._last_size = int(last["size"])
                    return None
                next_id = 0 if last is None else int(last["id"]) + 1
                prev = GENESIS_PREV if last is None else bytes(last["note_hash"])
                at_ms = time.time_ns() // 1_000_000
                body = checkpoint_body(self.origin, size, root, rfc3339_ms(at_ms), prev)
                note = sign_note(body, self.signers)
                checkpoint = parse_checkpoint(note)
                await tx.execute(
                    "INSERT INTO audit_checkpoints (id, size, root, at, note, note_hash)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    next_id,
                    size,
                    root,
                    checkpoint.at,
                    note,
                    checkpoint.note_hash,
                )
            self._last_size, self._last_at = size, time.monotonic()
            if self.export_path is not None:
                try:
                    await asyncio.to_thread(append_export, self.export_path, note)
                except OSError:
                    log.exception("could not export checkpoint %d to %s", next_id,
                                  self.export_path)  # fmt: skip
            if self.on_checkpoint is not None:
                try:
                    self.on_checkpoint(checkpoint)
                except Exception:
                    log.exception("could not hand checkpoint %d to its exporter", next_id)
            return checkpoint

    async def run(self, head: Callable[[], Awaitable[tuple[int, bytes] | None]]) -> None:
        """Checkpoint the tree of ``await head()`` (``(size, root)`` or ``None`` when not
        leading) every ``interval_s`` when it grew: slow trickles of records still get signed."""
        while True:
            await asyncio.sleep(self.interval_s)
            with contextlib.suppress(Exception):  # a store hiccup: try again next interval
                current = await head()
                if current is not None and self._last_size != current[0]:
                    await self.checkpoint(*current)


def append_export(path: str, note: str) -> None:
    """Append ``note`` and a blank line to the export file and fsync it."""
    private.make_dir(Path(path).parent)
    fd = private.open_fd(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (note + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# -- a new key -------------------------------------------------------------------------------------


#: The signing key ``custos init`` creates beside a SQLite store (``custos.db`` →
#: ``custos.db.signing-key.pem``), which a gateway uses when ``audit.signing_key`` is unset.
KEY_BESIDE_STORE: Final = ".signing-key.pem"


def key_beside_store(db_path: str) -> Path | None:
    """Where the signing key of the SQLite database ``db_path`` lives (``None``: in memory)."""
    return None if db_path == ":memory:" else Path(db_path + KEY_BESIDE_STORE)


def generate_signing_key(path: Path, name: str, *, force: bool = False) -> Signer:
    """Write a new Ed25519 key to ``path`` (PKCS#8 PEM, unencrypted, mode 0600) and return it
    as the signer ``name``. Raises ``FileExistsError`` when ``path`` exists, unless ``force``:
    a key replaced by mistake can no longer sign, and nothing it signed gets a new key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if force:
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        private.create(fresh, pem)
        os.replace(fresh, path)
    elif not private.create(path, pem):
        raise FileExistsError(f"{path} exists")
    return Signer(name, key)


def create_key_beside_store(store_url: str, name: str) -> tuple[Path, Signer] | None:
    """For a SQLite store, create its signing key beside it unless it exists (what ``custos
    init`` does, as it creates the token hash key): the file and the key, or ``None``."""
    from custos.identity.setup import sqlite_path

    db_path = sqlite_path(store_url)
    path = key_beside_store(db_path) if db_path is not None else None
    if path is None:
        return None
    try:
        return path, generate_signing_key(path, name)
    except FileExistsError:
        return None

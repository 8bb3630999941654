"""Signed checkpoints: the C2SP signed-note rules, key loading, the checkpointer and export."""

from __future__ import annotations

import base64
import hashlib
import itertools
from pathlib import Path

import pytest

from custos.audit.log.checkpoint import (
    EM_DASH,
    GENESIS_PREV,
    Checkpointer,
    NoteError,
    Signer,
    checkpoint_body,
    generate_pem,
    key_id,
    load_signer,
    load_verifiers,
    open_note,
    parse_checkpoint,
    parse_vkey,
    read_export,
    sign_note,
)
from custos.audit.log.merkle import root_of
from custos.audit.log.sequencer import Sequencer
from custos.audit.storage.store import AuditStore
from custos.state.store import Store
from tests.audit_log_worker import record
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)


def signer(name: str = "custos.test/audit/k1") -> Signer:
    from cryptography.hazmat.primitives import serialization

    return Signer(name, serialization.load_pem_private_key(generate_pem(), None))  # type: ignore[arg-type]


BODY = checkpoint_body("custos.test/audit", 5, bytes(range(32)), "2026-07-01T12:00:00.000Z",
                       GENESIS_PREV)  # fmt: skip


def test_key_id_is_the_c2sp_formula() -> None:
    s = signer()
    expected = hashlib.sha256(s.name.encode() + b"\x0a\x01" + s.public_key).digest()[:4]
    assert key_id(s.name, s.public_key) == expected == s.verifier.id
    assert parse_vkey(s.verifier.vkey) == s.verifier


def test_signed_note_round_trip_and_rules() -> None:
    s, other, stranger = signer(), signer("custos.test/audit/k2"), signer("elsewhere/k")
    note = sign_note(BODY, [s, other])
    line = note.splitlines()[-1]
    assert line.startswith(f"{EM_DASH} custos.test/audit/k2 ")
    assert len(base64.b64decode(line.rsplit(" ", 1)[1])) == 4 + 64
    assert open_note(note, [s.verifier]) == (BODY, (s.name,))
    assert open_note(note, [s.verifier, other.verifier])[1] == (s.name, other.name)
    checkpoint = parse_checkpoint(note, [s.verifier])
    assert (checkpoint.size, checkpoint.root, checkpoint.prev) == (
        5,
        bytes(range(32)),
        GENESIS_PREV,
    )
    # Unknown keys only: rejected. A known key's bad signature: rejected.
    with pytest.raises(NoteError, match="not signed by any known key"):
        open_note(note, [stranger.verifier])
    with pytest.raises(NoteError, match="not valid"):
        open_note(note.replace("\n5\n", "\n6\n"), [s.verifier])
    forged = sign_note(BODY, [stranger]).replace("elsewhere/k", s.name)
    with pytest.raises(NoteError):
        open_note(forged, [s.verifier])
    for bad in (BODY, note.replace(EM_DASH, "--"), note + "\x01", note.rstrip("\n")):
        with pytest.raises(NoteError):
            open_note(bad, [s.verifier])


def test_signing_key_from_an_encrypted_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(generate_pem("sesame"))
    monkeypatch.setenv("CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE", "sesame")
    s = load_signer("n/k", str(path))
    assert "CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE" not in __import__("os").environ
    assert "PRIVATE" not in repr(s) and s.name == "n/k"
    with pytest.raises(TypeError):  # encrypted, and the passphrase is gone
        load_signer("n/k", str(path))
    monkeypatch.setenv("CUSTOS_AUDIT_SIGNING_KEY", generate_pem().decode())
    load_signer("n/k")
    assert "CUSTOS_AUDIT_SIGNING_KEY" not in __import__("os").environ


async def test_checkpoints_are_chained_stored_and_exported(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = signer()
    export = tmp_path / "checkpoints.txt"
    cp = Checkpointer(store, [s], origin="custos.test/audit", every_n=100, interval_s=3600,
                      export_path=str(export))  # fmt: skip
    await cp.register_keys()
    sequencer = Sequencer(store, batch=60, on_committed=cp.on_sequenced)
    assert await sequencer.lead()
    audit = AuditStore(store)
    records = [record("t", n) for n in range(250)]
    for start in range(0, 250, 60):
        # PostgreSQL: the tick sequences the batch; SQLite: the insert did, the tick sees it.
        await audit.insert(records[start : start + 60])
        await sequencer.tick()
    frontier = sequencer.frontier
    assert frontier is not None and frontier.size == 250
    await cp.checkpoint(frontier.size, frontier.root())
    await cp.checkpoint(frontier.size, frontier.root())  # no growth: none
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM audit_checkpoints ORDER BY id")
        keys = await tx.fetch("SELECT * FROM audit_signing_keys")
    assert [r["size"] for r in rows] == [60, 180, 250]  # first batch, then every >= 100, final
    exported = read_export(export)
    assert exported == [r["note"] for r in rows]
    parsed = [parse_checkpoint(n, load_verifiers(s.verifier.vkey)) for n in exported]
    assert parsed[0].prev == GENESIS_PREV
    for before, after in itertools.pairwise(parsed):
        assert after.prev == hashlib.sha256(before.note.encode()).digest()
    leaves = [r.leaf_hash for r in records]  # inserted in one batch: sequenced in that order
    assert [p.root for p in parsed] == [root_of(leaves[: p.size]) for p in parsed]
    assert [(k["key_name"], k["key_id"]) for k in keys] == [(s.name, s.verifier.id.hex())]

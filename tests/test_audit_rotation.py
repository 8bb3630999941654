"""Rotating the checkpoint signing key: the overlap signed by both keys, ``custos audit keys
retire``, verify's view of a retired key (from the database or given out of band), the config
rules and the gateway's loading of the retiring key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custos.audit.compliance.verify import verify_log
from custos.audit.log.checkpoint import (
    EM_DASH,
    Checkpointer,
    Signer,
    generate_pem,
    parse_checkpoint,
    read_export,
)
from custos.audit.log.keys import RetireError, retire_key
from custos.audit.log.sequencer import AuditLog, Sequencer
from custos.audit.storage.store import AuditStore
from custos.config import ConfigError, parse_config
from custos.config.audit import AuditSettings
from custos.state.backends import open_store
from custos.state.store import Store
from tests.audit_log_worker import record
from tests.conftest import ROOT
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

OLD = "custos.test/audit/key2025"
NEW = "custos.test/audit/key2026"
ORIGIN = "custos.test/audit"


def make_signer(name: str) -> Signer:
    from cryptography.hazmat.primitives import serialization

    return Signer(name, serialization.load_pem_private_key(generate_pem(), None))  # type: ignore[arg-type]


class Rotation:
    """One log, one sequencer; each phase checkpoints with the signers it is given."""

    def __init__(self, db: Store, tmp_path: Path) -> None:
        self.store = db
        self.old, self.new = make_signer(OLD), make_signer(NEW)
        self.export = tmp_path / "checkpoints.txt"
        self.sequencer = Sequencer(db, batch=1000)
        self.count = 0

    async def phase(self, signers: list[Signer], checkpoints: int = 2) -> None:
        """``checkpoints`` checkpoints, each over 10 more records, signed by ``signers``."""
        checkpointer = Checkpointer(self.store, signers, origin=ORIGIN, interval_s=3600,
                                    export_path=str(self.export))  # fmt: skip
        await checkpointer.register_keys()
        if not self.sequencer.is_leader:
            assert await self.sequencer.lead()
        for _ in range(checkpoints):
            batch = [record("rotation", self.count + n) for n in range(10)]
            self.count += len(batch)
            await AuditStore(self.store).insert(batch)
            await self.sequencer.tick()
            frontier = self.sequencer.frontier
            assert frontier is not None and frontier.size == self.count
            assert await checkpointer.checkpoint(frontier.size, frontier.root()) is not None

    async def notes(self) -> list[str]:
        async with self.store.transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT note FROM audit_checkpoints ORDER BY id")
        return [str(r["note"]) for r in rows]

    async def failures(self, *signers: Signer) -> list[str]:
        keys = [s.verifier for s in signers] if signers else None
        report = await verify_log(self.store, verifiers=keys, exported=read_export(self.export))
        return report.failures


async def test_rotation_with_an_overlap(store: Store, tmp_path: Path) -> None:  # noqa: F811
    log = Rotation(store, tmp_path)
    await log.phase([log.old])  # checkpoints #0, #1: the old key
    await log.phase([log.new, log.old])  # #2, #3: the overlap, both keys
    await log.phase([log.new])  # #4, #5: the new key only (the old one not yet retired)
    retired = await retire_key(store, OLD)
    assert retired.vkey == log.old.verifier.vkey and retired.not_after is not None
    await log.phase([log.new])  # #6, #7: after the retirement

    notes = await log.notes()
    signers = [tuple(line.split(" ")[1] for line in n.split("\n\n")[1].splitlines())
               for n in notes]  # fmt: skip
    assert signers == [(OLD,)] * 2 + [(NEW, OLD)] * 2 + [(NEW,)] * 4
    during = parse_checkpoint(notes[2], [log.old.verifier, log.new.verifier])
    assert during.signers == (NEW, OLD)
    async with store.transaction(readonly=True) as tx:
        keys = {r["key_name"]: r["not_after"] for r in
                await tx.fetch("SELECT key_name, not_after FROM audit_signing_keys")}  # fmt: skip
    assert set(keys) == {OLD, NEW} and keys[OLD] is not None and keys[NEW] is None

    # Both vkeys (out of band), or the database's keys: the whole history verifies.
    assert await log.failures(log.old, log.new) == []
    assert await log.failures() == []
    # The new vkey alone vouches for the overlap and after, not for what the old key alone
    # signed: an auditor keeps every vkey the log was ever signed with.
    report = await verify_log(store, verifiers=[log.new.verifier])
    assert report.checkpoints_valid == 6
    assert [f.split(":")[0] for f in report.failures] == ["checkpoint #0", "checkpoint #1"]
    assert "not signed by any known key" in report.failures[0]
    # The old vkey alone: what it signed before its retirement, overlap included.
    report = await verify_log(store, verifiers=[log.old.verifier])
    assert report.checkpoints_valid == 4
    assert [f.split(":")[0] for f in report.failures] == [f"checkpoint #{n}" for n in range(4, 8)]

    # Someone holding the retired key signs a checkpoint after its retirement: verify says so,
    # whether the key comes from the database or out of band (the table's not_after applies).
    await log.phase([log.old], checkpoints=1)  # #8
    notes_after = await log.notes()
    for given in ((log.old, log.new), (log.old,), ()):
        failures = await log.failures(*given)
        late = [f for f in failures if f.startswith("checkpoint #8: ")]
        assert late == [
            f"checkpoint #8: signed at {parse_checkpoint(notes_after[8]).time} only by keys "
            f"outside their validity: {OLD} ({log.old.verifier.id.hex()}) retired at "
            f"{retired.not_after.isoformat()}"
        ], given
        assert any(f.startswith("exported checkpoint 9: signed at ") for f in failures)


async def test_retire_refusals(store: Store, tmp_path: Path) -> None:  # noqa: F811
    log = Rotation(store, tmp_path)
    await log.phase([log.old], checkpoints=1)
    with pytest.raises(RetireError, match=f"key {OLD} .* is the last key still valid"):
        await retire_key(store, OLD)
    with pytest.raises(RetireError, match=f"no audit signing key nope; the keys are: {OLD} "):
        await retire_key(store, "nope")
    with pytest.raises(RetireError, match="no audit signing key"):
        await retire_key(store, OLD, "00000000")
    await log.phase([log.new, log.old], checkpoints=1)
    await retire_key(store, OLD, log.old.verifier.id.hex().upper())
    with pytest.raises(RetireError, match=f"key {OLD} .* was already retired at "):
        await retire_key(store, OLD)
    with pytest.raises(RetireError, match="last key still valid"):
        await retire_key(store, NEW)
    # Two keys under one name (a key file replaced without renaming): the one still valid is
    # meant; with both valid, the key ID must say which.
    twin = make_signer(NEW)
    await Checkpointer(store, [twin], origin=ORIGIN).register_keys()
    with pytest.raises(RetireError, match=f"several keys are named {NEW}: pass --key-id"):
        await retire_key(store, NEW)
    assert (await retire_key(store, NEW, twin.verifier.id.hex())).name == NEW


def test_keys_retire_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'custos.db'}"
    old, new = make_signer(OLD), make_signer(NEW)

    async def register(*signers: Signer) -> None:
        opened = await open_store(url)
        try:
            await Checkpointer(opened, list(signers), origin=ORIGIN).register_keys()
        finally:
            await opened.close()

    def custos(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "custos.cli", "audit", "keys", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip

    asyncio.run(register(old))
    done = custos("retire", "--store", url, "--name", OLD)
    assert done.returncode == 1 and "is the last key still valid" in done.stderr
    done = custos("retire", "--store", url, "--name", "custos.test/audit/none")
    assert done.returncode == 1 and "no audit signing key custos.test/audit/none" in done.stderr
    asyncio.run(register(new))
    done = custos("--store", url, "retire", "--name", OLD)  # --store before the command works
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"retired {old.verifier.vkey}  valid ")
    done = custos("retire", "--store", url, "--name", OLD, "--key-id", old.verifier.id.hex())
    assert done.returncode == 1 and "was already retired at" in done.stderr
    listed = custos("--store", url).stdout.splitlines()
    assert listed[0].startswith(old.verifier.vkey) and not listed[0].endswith("(current)")
    assert listed[1].startswith(new.verifier.vkey) and listed[1].endswith("(current)")


def _audit_problems(audit: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"version: 1\naudit:\n{audit}")
    return [p.message for p in caught.value.problems if p.path == "audit"]


def test_config_rules() -> None:
    assert _audit_problems("  retiring_signing_key: ./old.pem\n"
                           f"  retiring_signing_key_name: {OLD}\n") == [
        "retiring_signing_key signs alongside the current key during a rotation: set "
        "signing_key to the new key's PEM file too"
    ]  # fmt: skip
    assert _audit_problems("  signing_key: ./new.pem\n  retiring_signing_key: ./old.pem\n") == [
        "retiring_signing_key needs retiring_signing_key_name: the name that key was "
        "registered under (its signing_key_name before the rotation)"
    ]
    same = _audit_problems(f"  signing_key: ./new.pem\n  signing_key_name: {OLD}\n"
                           f"  retiring_signing_key: ./old.pem\n"
                           f"  retiring_signing_key_name: {OLD}\n")  # fmt: skip
    assert same == [f"signing_key_name and retiring_signing_key_name are both '{OLD}': give the "
                    "new key a name of its own"]  # fmt: skip
    assert _audit_problems("  signing_key: ./k.pem\n  retiring_signing_key: ./k.pem\n"
                           f"  retiring_signing_key_name: {OLD}\n") == [
        "retiring_signing_key is the same file as signing_key"
    ]  # fmt: skip
    assert _audit_problems(f"  retiring_signing_key_name: {OLD}\n") == [
        "retiring_signing_key_name is set without retiring_signing_key"
    ]
    fine = AuditSettings(
        signing_key="./new.pem",
        signing_key_name=NEW,
        retiring_signing_key="./old.pem",
        retiring_signing_key_name=OLD,
    )
    assert "old.pem" not in repr(fine)  # fmt: skip


async def test_the_gateway_signs_with_both_keys_from_files(
    store: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cryptography.hazmat.primitives import serialization

    keys = {}
    for name, passphrase in ((NEW, "new-secret"), (OLD, "old-secret")):
        pem = generate_pem(passphrase)
        path = tmp_path / f"{name.rsplit('/', 1)[1]}.pem"
        path.write_bytes(pem)
        key = serialization.load_pem_private_key(pem, passphrase.encode())
        keys[name] = (str(path), Signer(name, key).verifier)  # type: ignore[arg-type]
    monkeypatch.setenv("CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE", "new-secret")
    monkeypatch.setenv("CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE", "old-secret")
    settings = AuditSettings(signing_key=keys[NEW][0], signing_key_name=NEW,
                             retiring_signing_key=keys[OLD][0], retiring_signing_key_name=OLD,
                             checkpoint_export=str(tmp_path / "checkpoints.txt"))  # fmt: skip
    audit_log = AuditLog(store, settings)
    assert "CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE" not in os.environ
    assert "CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE" not in os.environ
    assert audit_log.checkpointer is not None
    assert [s.name for s in audit_log.checkpointer.signers] == [NEW, OLD]
    await audit_log.start()
    try:
        async with asyncio.timeout(10):
            while not audit_log.sequencer.is_leader:
                await asyncio.sleep(0.01)
        await AuditStore(store).insert([record("gateway", n) for n in range(5)])
        audit_log.sequencer.wake()
    finally:
        await audit_log.close()  # sequences what is queued and signs a last checkpoint
    notes = read_export(tmp_path / "checkpoints.txt")
    assert notes
    for note in notes:
        assert note.count(f"\n{EM_DASH} ") == 2
        for name in (NEW, OLD):  # either vkey alone accepts every note
            assert parse_checkpoint(note, [keys[name][1]]).signers == (name,)
    async with store.transaction(readonly=True) as tx:
        registered = await tx.fetch("SELECT key_name FROM audit_signing_keys ORDER BY key_name")
    assert [r["key_name"] for r in registered] == sorted([NEW, OLD])
    report = await verify_log(store, verifiers=[keys[OLD][1]], exported=notes)
    assert report.ok and report.log_size == 5, report.failures


def test_without_a_retiring_key_only_the_current_one_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(generate_pem())
    monkeypatch.setenv("CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE", "unused")
    from custos.audit.log.sequencer import load_signers

    signers = load_signers(AuditSettings(signing_key=str(path)))
    assert [s.name for s in signers] == ["custos/audit/key1"]
    assert "CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE" not in os.environ


async def test_validity_goes_by_key_not_name(store: Store, tmp_path: Path) -> None:  # noqa: F811
    # A key file replaced without renaming the key: two keys share a name. The retired one's
    # late signature must not borrow the validity of its namesake.
    log = Rotation(store, tmp_path)
    log.new = make_signer(OLD)
    await log.phase([log.new, log.old], checkpoints=1)
    await retire_key(store, OLD, log.old.verifier.id.hex())
    await log.phase([log.old], checkpoints=1)
    for given in ((log.old, log.new), ()):
        failures = await log.failures(*given)
        assert failures[0].startswith("checkpoint #1: signed at "), failures
        assert f"{OLD} ({log.old.verifier.id.hex()}) retired at " in failures[0]

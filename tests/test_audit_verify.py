"""``verify``, ``prove`` and ``check-proof``, and the tampering ``verify`` must catch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from custos.audit.compliance.verify import verify_log
from custos.audit.log.checkpoint import Checkpointer, Signer, generate_pem, read_export
from custos.audit.log.merkle import MemoryTree, leaf_hash
from custos.audit.log.proof import ProofError, check_proof, prove_event
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import SealedRecord
from custos.audit.storage.store import AuditStore, _sqlite_time, ms_to_datetime
from custos.state.store import Store
from tests.audit_helpers import unguarded
from tests.audit_log_worker import record
from tests.conftest import ROOT
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)


def make_signer() -> Signer:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(generate_pem(), None)
    return Signer("custos.test/audit/k1", key)  # type: ignore[arg-type]


class Log:
    """A log of 200 records in batches of 40 with checkpoints every 50+ records, exported."""

    def __init__(self, db: Store, tmp_path: Path) -> None:
        self.store = db
        self.signer = make_signer()
        self.export = tmp_path / "checkpoints.txt"
        self.checkpointer = Checkpointer(db, [self.signer], origin="custos.test/audit",
                                         every_n=50, interval_s=3600,
                                         export_path=str(self.export))  # fmt: skip
        self.records = [record("t", n) for n in range(200)]

    async def build(self) -> None:
        await self.checkpointer.register_keys()
        sequencer = Sequencer(self.store, batch=40, on_committed=self.checkpointer.on_sequenced)
        assert await sequencer.lead()
        for start in range(0, len(self.records), 40):
            # PostgreSQL: the sequencer sequences the batch; SQLite: the insert did, and the
            # tick reports the grown tree.
            await AuditStore(self.store).insert(self.records[start : start + 40])
            await sequencer.tick()
        assert sequencer.frontier is not None
        await self.checkpointer.checkpoint(sequencer.frontier.size, sequencer.frontier.root())

    async def verify(self, exported: bool = True) -> list[str]:
        report = await verify_log(
            self.store,
            verifiers=[self.signer.verifier],
            exported=read_export(self.export) if exported else [],
        )
        return report.failures

    async def sql(self, statement: str, *args: object) -> list[dict]:
        """Run a statement; changes bypass the guard triggers, as an attacker would."""
        if statement.lstrip().upper().startswith("SELECT"):
            async with self.store.transaction() as tx:
                return await tx.fetch(statement, *args)
        async with unguarded(self.store) as tx:
            await tx.execute(statement, *args)
        return []

    async def event_at(self, seq: int) -> str:
        rows = await self.sql("SELECT event_id FROM audit_leaves WHERE seq = $1", seq)
        return str(rows[0]["event_id"])


@pytest.fixture
async def log(store: Store, tmp_path: Path) -> Log:  # noqa: F811
    built = Log(store, tmp_path)
    await built.build()
    return built


async def test_an_intact_log_verifies(log: Log) -> None:
    report = await verify_log(log.store, verifiers=[log.signer.verifier],
                              exported=read_export(log.export))  # fmt: skip
    assert report.failures == []
    assert report.summary.startswith("3/3 checkpoints valid; 200/200 records valid; 0 purged")
    # Keys read from the database work too, and the report says where they came from.
    from_db = await verify_log(log.store)
    assert from_db.ok and from_db.keys_from_database
    # A key that is not the log's verifies nothing.
    other = await verify_log(log.store, verifiers=[make_signer().verifier])
    assert other.failures[0].startswith("checkpoint #0: the note is not signed by any known key")


async def test_flipped_byte(log: Log) -> None:
    event = await log.event_at(33)
    body = bytearray((await log.sql("SELECT record FROM audit_events WHERE event_id = $1",
                                    event))[0]["record"])  # fmt: skip
    body[20] ^= 0x01
    await log.sql("UPDATE audit_events SET record = $1 WHERE event_id = $2", bytes(body), event)
    failures = await log.verify()
    assert (
        failures[0]
        == f"record seq 33 ({event}): the record's bytes do not match its leaf hash (modified)"
    )


async def test_deleted_record(log: Log) -> None:
    event = await log.event_at(57)
    await log.sql("DELETE FROM audit_leaves WHERE seq = 57")
    await log.sql("DELETE FROM audit_events WHERE event_id = $1", event)
    failures = await log.verify()
    assert failures[0] == "record seq 57 is missing (the next is seq 58)"


async def test_swapped_records(log: Log) -> None:
    await log.sql("UPDATE audit_leaves SET seq = -1 WHERE seq = 10")
    await log.sql("UPDATE audit_leaves SET seq = 10 WHERE seq = 11")
    await log.sql("UPDATE audit_leaves SET seq = 11 WHERE seq = -1")
    failures = await log.verify()
    assert failures[0].startswith("record seq 10 (")
    assert "moved or inserted" in failures[0]
    assert any("root does not match" in f for f in failures)


async def forge_row(log: Log, sealed: SealedRecord) -> None:
    """A record row written straight into the table, as someone with database access would
    (not through the gateway's insert, which sequences it on SQLite and queues it on
    PostgreSQL)."""
    at = _sqlite_time if log.store.dialect == "sqlite" else ms_to_datetime
    await log.sql(
        "INSERT INTO audit_events (event_id, event_type, at, record, leaf_hash, received_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        sealed.event_id, sealed.event_type, at(sealed.at_ms), sealed.body, sealed.leaf_hash,
        at(sealed.at_ms),
    )  # fmt: skip
    await log.sql("DELETE FROM audit_pending")  # and hidden from the sequencer


async def test_inserted_record(log: Log) -> None:
    forged = record("forged", 0)
    await forge_row(log, forged)
    for seq in range(199, 99, -1):
        await log.sql("UPDATE audit_leaves SET seq = $1 WHERE seq = $2", seq + 1, seq)
    await log.sql(
        "INSERT INTO audit_leaves (seq, event_id, leaf_hash, sequenced_at)"
        " SELECT 100, event_id, leaf_hash, received_at FROM audit_events WHERE event_id = $1",
        forged.event_id,
    )
    failures = await log.verify()
    assert failures[0] == (
        f"record seq 100 ({forged.event_id}): the leaf differs from the stored tree "
        "(moved or inserted)"
    )
    # Inserted without being sequenced at all: reported once past the delay.
    unsequenced = record("late", 0)
    await forge_row(log, unsequenced)
    report = await verify_log(log.store, verifiers=[log.signer.verifier], pending_delay_s=0)
    assert report.failures[-1].endswith(f"(first: {unsequenced.event_id})")


async def test_truncated_log(log: Log) -> None:
    events = await log.sql("SELECT event_id FROM audit_leaves WHERE seq >= 150")
    await log.sql("DELETE FROM audit_leaves WHERE seq >= 150")
    for row in events:
        await log.sql("DELETE FROM audit_events WHERE event_id = $1", row["event_id"])
    failures = await log.verify()
    assert failures[0] == ("checkpoint of size 200: the log holds only 150 records (truncated)")


async def test_rewrite_resigned_with_the_real_key_is_caught_by_the_export(log: Log) -> None:
    # The attacker holds the database and the signing key: replaces record 5, rebuilds the
    # tree and re-signs every checkpoint. Only the exported checkpoints remember the truth.
    sizes = [r["size"] for r in await log.sql("SELECT size FROM audit_checkpoints ORDER BY id")]
    victim = await log.event_at(5)
    replacement = record("rewritten", 5)
    await log.sql("UPDATE audit_events SET record = $1, leaf_hash = $2 WHERE event_id = $3",
                  replacement.body, replacement.leaf_hash, victim)  # fmt: skip
    await log.sql("UPDATE audit_leaves SET leaf_hash = $1 WHERE seq = 5", replacement.leaf_hash)
    leaves = [bytes(r["leaf_hash"]) for r in
              await log.sql("SELECT leaf_hash FROM audit_leaves ORDER BY seq")]  # fmt: skip
    tree = MemoryTree(leaves)
    await log.sql("DELETE FROM audit_merkle_nodes")
    async with unguarded(log.store) as tx:
        await tx.executemany(
            "INSERT INTO audit_merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)",
            [(lv, ix, h) for (lv, ix), h in tree.nodes.items()],
        )
        await tx.execute("UPDATE audit_tree_head SET root = $1", tree.root())
    await log.sql("DELETE FROM audit_checkpoints")
    forger = Checkpointer(log.store, [log.signer], origin="custos.test/audit")
    for size in sizes:
        await forger.checkpoint(size, tree.root(size))
    assert await log.verify(exported=False) == []  # the database alone looks perfect
    failures = await log.verify()
    assert failures[0] == (
        f"exported checkpoint of size {sizes[0]} differs from the stored one (history rewritten)"
    )


async def test_prove_and_check_proof(log: Log, tmp_path: Path) -> None:
    event = await log.event_at(123)
    document = await prove_event(log.store, event)
    checkpoint = check_proof(document, [log.signer.verifier])
    assert checkpoint.size == 200 and document["seq"] == 123
    assert leaf_hash(document["record"].encode()) == log.records[123].leaf_hash
    tampered = dict(document, record=document["record"].replace('"n":123', '"n":124'))
    with pytest.raises(ProofError, match="not included"):
        check_proof(tampered, [log.signer.verifier])
    with pytest.raises(ProofError, match="checkpoint"):
        check_proof(document, [make_signer().verifier])
    moved = dict(document, seq=122)
    with pytest.raises(ProofError):
        check_proof(moved, [log.signer.verifier])
    # The standalone command: no database, only the file and the key.
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(document))
    command = [sys.executable, "-m", "custos.cli", "audit", "check-proof", str(path),
               "--public-key", log.signer.verifier.vkey]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "proof OK: record seq 123 is in the log of size 200" in done.stdout
    path.write_text(json.dumps(tampered))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "REJECTED" in done.stderr


def test_verify_cli_exit_status(tmp_path: Path) -> None:
    import asyncio

    from custos.state.backends import open_store

    url = f"sqlite:///{tmp_path / 'custos.db'}"

    async def build() -> Log:
        opened = await open_store(url)
        built = Log(opened, tmp_path)
        await built.build()
        await opened.close()
        return built

    built = asyncio.run(build())
    base = [sys.executable, "-m", "custos.cli", "audit"]
    vkey = built.signer.verifier.vkey
    verify = [*base, "verify", "--store", url, "--public-key", vkey,
              "--checkpoints", str(built.export)]  # fmt: skip
    done = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3/3 checkpoints valid; 200/200 records valid; 0 purged")
    keys = subprocess.run([*base, "keys", "--store", url], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert keys.stdout.startswith(vkey) and "(current)" in keys.stdout
    proof = tmp_path / "p.json"
    event = built.records[7].event_id
    subprocess.run([*base, "prove", "--store", url, "--event", event, "-o", str(proof)],
                   cwd=ROOT, check=True, timeout=60)  # fmt: skip
    assert json.loads(proof.read_text())["event_id"] == event

    async def tamper() -> None:
        opened = await open_store(url)
        async with unguarded(opened) as tx:
            await tx.execute("DELETE FROM audit_leaves WHERE seq = 3")
        await opened.close()

    asyncio.run(tamper())
    done = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "FAILED: record seq 3 is missing (the next is seq 4)" in done.stderr

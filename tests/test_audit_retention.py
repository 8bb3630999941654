"""The retention purge and legal holds (SQLite and PostgreSQL): purged bodies are gone (from the
SQLite files too), the log still verifies with them counted as purged, holds stop the purge, a
body removed without a purge record fails verify; and ``verify --from/--to``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from custos.audit.compliance.retention import (
    RetentionJob,
    list_holds,
    purge,
    release_hold,
    set_hold,
)
from custos.audit.compliance.verify import Report, verify_log, verify_range
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import Checkpointer, read_export
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import SealedRecord, rfc3339_ms, seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.config.audit import AuditSettings
from custos.state.backends import open_store
from custos.state.errors import Conflict
from custos.state.models import Actor, utcnow
from custos.state.store import Store
from tests.audit_helpers import unguarded
from tests.conftest import ROOT
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_report import seeded_calls
from tests.test_audit_verify import make_signer

GATEWAY = GatewayInfo("tests")
ADMIN = Actor(id="user:usr_admin", role="admin")


def call(n: int, *, days_ago: float, team: str | None, marker: str | None = None) -> SealedRecord:
    """An ``llm.call`` record ``days_ago`` days old, attributed to ``team``."""
    fields: dict[str, Any] = dict(seeded_calls(1, seed=n)[0])
    at = unix_ms(utcnow() - timedelta(days=days_ago)) + n
    fields.update({
        "request_id": f"req{n:05d}", "time_start": rfc3339_ms(at), "time_end": rfc3339_ms(at + 40),
        "team": team, "principal.teams": [team] if team else [],
        "metadata": {"marker": marker} if marker else {},
        "data_classes": [{"class": "customer_data", "count": 1, "source": "declared"}],
    })  # fmt: skip
    return seal(fields, at_ms=at)


def other(n: int, *, days_ago: float) -> SealedRecord:
    at = unix_ms(utcnow() - timedelta(days=days_ago)) + n
    return seal({"event_type": "auth.failure", "time_start": rfc3339_ms(at), "n": n}, at_ms=at)


class RetainedLog:
    """60 LLM calls 500 days old (every third of team ``legal``, the rest ``sales``), 5 other old
    records, then 20 calls and 5 other records 10 days old; sequenced and checkpointed (every 20
    records), the checkpoints exported."""

    def __init__(self, db: Store, tmp_path: Path) -> None:
        self.store = db
        self.signer = make_signer()
        self.export = tmp_path / "checkpoints.txt"
        self.checkpointer = Checkpointer(db, [self.signer], origin="custos.test/audit",
                                         every_n=20, interval_s=3600,
                                         export_path=str(self.export))  # fmt: skip
        self.sequencer = Sequencer(db, batch=25, on_committed=self.checkpointer.on_sequenced)
        self.old = [call(i, days_ago=500, team="legal" if i % 3 == 0 else "sales",
                         marker=f"purge-me-{i:03d}") for i in range(60)]  # fmt: skip
        self.old += [other(i, days_ago=450) for i in range(5)]
        self.recent = [call(100 + i, days_ago=10, team="sales") for i in range(20)]
        self.recent += [other(100 + i, days_ago=10) for i in range(5)]

    async def build(self) -> RetainedLog:
        await self.checkpointer.register_keys()
        assert await self.sequencer.lead()
        await AuditStore(self.store).insert(self.old[:30])
        await self.sequence()
        await AuditStore(self.store).insert(self.old[30:] + self.recent)
        await self.sequence()
        return self

    async def sequence(self) -> None:
        while await self.sequencer.tick():
            pass
        frontier = self.sequencer.frontier
        assert frontier is not None
        await self.checkpointer.checkpoint(frontier.size, frontier.root())

    async def verify(self, **kw: Any) -> Report:
        return await verify_log(self.store, verifiers=[self.signer.verifier],
                                exported=read_export(self.export), **kw)  # fmt: skip

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self.store.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *args)


@pytest.fixture
async def log(store: Store, tmp_path: Path) -> RetainedLog:  # noqa: F811
    return await RetainedLog(store, tmp_path).build()


async def test_purge_keeps_the_log_verifiable(log: RetainedLog) -> None:
    intact = await log.verify()
    assert intact.ok, intact.failures
    assert intact.checkpoints_valid == intact.checkpoints_total > 1
    assert "; 90/90 records valid; 0 purged" in intact.summary
    dry = await purge(log.store, retention_days=400, gateway=GATEWAY, dry_run=True)
    assert (dry.count, dry.first_seq, dry.last_seq) == (65, 0, 64) and not dry.records
    assert (await log.rows("SELECT count(*) AS n FROM audit_llm_calls"))[0]["n"] == 80

    result = await purge(log.store, retention_days=400, gateway=GATEWAY, batch=40)
    assert result.count == 65 and len(result.records) == 2  # two batches, one record each
    first = result.records[0].fields
    assert first["event_type"] == "audit.purge" and first["purge.count"] == 40
    assert first["purge.seq_ranges"] == [[0, 39]] and first["purge.retention_days"] == 400
    assert result.records[1].fields["purge.seq_ranges"] == [[40, 64]]
    assert first["purge.cutoff"] == rfc3339_ms(unix_ms(result.cutoff))
    # Bodies and query rows are gone; leaves, nodes and leaf hashes are all still there.
    purged_ids = [r.event_id for r in log.old]
    bodies = await log.rows("SELECT event_id, record FROM audit_events")
    assert all(bytes(r["record"]) == b"" for r in bodies if r["event_id"] in purged_ids)
    assert sum(1 for r in bodies if bytes(r["record"]) == b"") == 65
    assert (await log.rows("SELECT count(*) AS n FROM audit_llm_calls"))[0]["n"] == 20
    assert (await log.rows("SELECT count(*) AS n FROM audit_llm_call_data_classes"))[0]["n"] == 20
    # The purge records: queued for the sequencer on PostgreSQL, in the log already on SQLite.
    purge_leaves = 2 if log.store.dialect == "sqlite" else 0
    assert (await log.rows("SELECT count(*) AS n FROM audit_leaves"))[0]["n"] == 90 + purge_leaves
    # The purge records are sequenced like any record; the old exported checkpoints still hold.
    await log.sequence()
    report = await log.verify()
    assert report.ok, report.failures
    assert report.checkpoints_valid == report.checkpoints_total == intact.checkpoints_total + 1
    assert "; 27/27 records valid; 65 purged" in report.summary
    assert report.log_size == 92
    # Nothing more to purge; a purge record is never purged.
    again = await purge(log.store, retention_days=400, gateway=GATEWAY,
                        now=utcnow() + timedelta(days=399))  # fmt: skip
    assert again.count == 20 + 5  # the recent ones, now old; the two purge records stay
    await log.sequence()
    final = await log.verify()
    assert final.ok and final.purged == 90 and final.records_total == 3


async def test_a_body_removed_without_a_purge_record_fails(log: RetainedLog) -> None:
    await purge(log.store, retention_days=400, gateway=GATEWAY)
    await log.sequence()
    victim = log.recent[3].event_id
    seq = (await log.rows("SELECT seq FROM audit_leaves WHERE event_id = $1", victim))[0]["seq"]
    async with unguarded(log.store) as tx:  # the attacker bypasses the guards
        await tx.execute("UPDATE audit_events SET record = $1 WHERE event_id = $2", b"", victim)
    report = await log.verify()
    assert report.failures[0] == (
        f"record seq {seq} ({victim}): its body is gone and no audit.purge record accounts for it"
    )
    assert report.purged == 65
    # Nor can the attacker widen a purge record to cover it: its leaf hash gives it away.
    purge_row = (await log.rows("SELECT event_id, record FROM audit_events WHERE event_type ="
                                " 'audit.purge' ORDER BY ingest_id"))[0]  # fmt: skip
    widened = orjson.loads(bytes(purge_row["record"]))
    widened["purge.seq_ranges"] = [[0, 200]]
    async with unguarded(log.store) as tx:
        await tx.execute("UPDATE audit_events SET record = $1 WHERE event_id = $2",
                         orjson.dumps(widened, option=orjson.OPT_SORT_KEYS),
                         purge_row["event_id"])  # fmt: skip
    failures = (await log.verify()).failures
    assert failures[0].startswith(f"purge record {purge_row['event_id']}: its bytes do not match")
    assert any(f"record seq {seq} ({victim}): its body is gone" in f for f in failures)


async def test_legal_holds_stop_the_purge(log: RetainedLog) -> None:
    everything = await set_hold(log.store, ADMIN, team=None, reason="litigation 2026-17")
    held = await purge(log.store, retention_days=400, gateway=GATEWAY)
    assert held.count == 0 and held.held_by == everything.id and not held.records
    assert "legal hold" in held.summary
    legal = await set_hold(log.store, ADMIN, team="legal", reason="regulator inquiry")
    released = await release_hold(log.store, ADMIN, everything.id, reason="case closed")
    assert released.released_by == ADMIN.id and not released.active
    with pytest.raises(Conflict):
        await release_hold(log.store, ADMIN, everything.id, reason="twice")
    assert [h.id for h in await list_holds(log.store, active_only=True)] == [legal.id]

    result = await purge(log.store, retention_days=400, gateway=GATEWAY)
    kept = [r for r in log.old[:60] if r.fields["team"] == "legal"]
    assert result.count == 65 - len(kept) and result.team_holds == ["legal"]
    assert result.records[0].fields["purge.team_holds"] == ["legal"]
    bodies = {r["event_id"]: bytes(r["record"])
              for r in await log.rows("SELECT event_id, record FROM audit_events")}  # fmt: skip
    assert all(bodies[r.event_id] == r.body for r in kept)
    await log.sequence()
    report = await log.verify()
    assert report.ok and report.purged == 65 - len(kept)
    # Each change is an admin event (which the trail turns into an admin.change record).
    rows = await log.rows("SELECT action, target_id FROM admin_events ORDER BY id")
    actions = [(r["action"], r["target_id"]) for r in rows]
    assert actions == [("audit_hold.set", everything.id), ("audit_hold.set", legal.id),
                       ("audit_hold.release", everything.id)]  # fmt: skip


async def test_verify_a_time_range(log: RetainedLog) -> None:
    recent_from = rfc3339_ms(unix_ms(utcnow() - timedelta(days=11)))
    since, until = verify_range(recent_from[:10], None)
    assert until is None and since is not None
    in_range = await log.verify(since=since)
    assert in_range.ok and (in_range.records_total, in_range.log_size) == (25, 90)
    # An old record modified: outside the range its body is not re-hashed; inside it fails.
    victim = log.old[7]
    async with unguarded(log.store) as tx:
        forged = victim.body.replace(b"purge-me", b"PURGE-ME")
        await tx.execute("UPDATE audit_events SET record = $1 WHERE event_id = $2", forged,
                         victim.event_id)  # fmt: skip
    assert (await log.verify(since=since)).ok
    old_day = victim.fields["time_start"][:10]
    start, end = verify_range(old_day, old_day)
    narrowed = await log.verify(since=start, until=end)
    assert narrowed.records_total == 60 and narrowed.records_valid == 59
    assert "(modified)" in narrowed.failures[0] and victim.event_id in narrowed.failures[0]
    with pytest.raises(ValueError):
        verify_range("yesterday", None)


async def test_retention_job_and_exports(log: RetainedLog) -> None:
    exported: list[SealedRecord] = []
    job = RetentionJob(log.store, lambda: AuditSettings(retention_days=400), GATEWAY,
                       export=exported.extend, first_delay_s=0, interval_s=3600)  # fmt: skip
    job.start()
    for _ in range(200):
        if job.last is not None:
            break
        await asyncio.sleep(0.02)
    await job.close()
    assert job.last is not None and job.last.count == 65
    assert [r.event_type for r in exported] == ["audit.purge"]


def test_purged_values_leave_the_sqlite_files(tmp_path: Path) -> None:
    db_path = tmp_path / "custos.db"
    url = f"sqlite:///{db_path}"

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("custos.db*"))

    async def build() -> RetainedLog:
        db = await open_store(url)
        try:
            return await RetainedLog(db, tmp_path).build()
        finally:
            await db.close()

    built = asyncio.run(build())
    assert files().count(b"purge-me-007") >= 1
    command = [sys.executable, "-m", "custos.cli", "audit", "purge", "--store", url]
    dry = subprocess.run([*command, "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would purge 65 record(s) older than ")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged 65 record(s) older than ")
    assert "(seq 0..64)" in done.stdout
    data = files()
    for record in built.old:
        marker = record.fields.get("metadata", {}).get("marker")
        if marker:
            assert marker.encode() not in data, marker
        assert record.fields["salt"].encode() not in data
    assert b"purge-me-" not in data
    for record in built.recent:
        assert record.fields["salt"].encode() in data

    verify = [sys.executable, "-m", "custos.cli", "audit", "verify", "--store", url,
              "--public-key", built.signer.verifier.vkey, "--checkpoints", str(built.export),
              "--pending-delay", "3600"]  # fmt: skip
    checked = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    # The 25 recent records and the purge record (on SQLite the purge's insert logged it).
    assert "26/26 records valid; 65 purged" in checked.stdout
    ranged = subprocess.run([*verify, "--from", "2000-01-01", "--to", "2000-12-31"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ranged.returncode == 0 and "0/0 records valid; 0 purged" in ranged.stdout

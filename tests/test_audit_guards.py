"""The audit tables' guard triggers (migration 0005), on SQLite and PostgreSQL: UPDATE and DELETE
refused on every guarded table, TRUNCATE too on PostgreSQL; what the code legitimately does
(insert, sequence, checkpoint, close a key's validity, release a hold, the purge window's one
change) still works."""

from __future__ import annotations

import secrets
from datetime import timedelta

import asyncpg
import pytest

from custos.audit.compliance.retention import purge, release_hold, set_hold
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import Checkpointer
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import seal, unix_ms
from custos.audit.storage.store import AuditStore, _sqlite_time, ms_to_datetime
from custos.state.backends import open_store
from custos.state.errors import Invalid
from custos.state.models import Actor, utcnow
from custos.state.store import Store
from tests.audit_log_worker import record
from tests.conftest import ROOT
from tests.store_fixtures import PG_URL, pg_url, store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_report import seeded_calls
from tests.test_audit_tool_calls import sealed, seeded_tool_calls
from tests.test_audit_verify import make_signer

#: Each guarded table and a harmless UPDATE of it (a column set to itself).
GUARDED = {
    "audit_events": "event_type = event_type",
    "audit_llm_calls": "team = team",
    "audit_llm_call_data_classes": "source = source",
    "audit_tool_calls": "tool = tool",
    "audit_tool_call_data_classes": "source = source",
    "audit_leaves": "seq = seq",
    "audit_merkle_nodes": "hash = hash",
    "audit_checkpoints": "note = note",
    "audit_config_texts": "text = text",
    "audit_signing_keys": "public_key = public_key",
    "audit_holds": "reason = reason",
}


async def build(db: Store) -> Sequencer:
    """A small log: LLM calls with data classes, tool calls, other records, sequenced,
    checkpointed, with a registered key, a config text and a hold."""
    calls = [seal(dict(r), at_ms=unix_ms(utcnow()) - 1000) for r in seeded_calls(30, seed=3)]
    calls += sealed(seeded_tool_calls(5))
    checkpointer = Checkpointer(db, [make_signer()], origin="custos.test/audit")
    await checkpointer.register_keys()
    sequencer = Sequencer(db, batch=16, on_committed=checkpointer.checkpoint)
    assert await sequencer.lead()
    audit = AuditStore(db)
    await audit.insert(calls + [record("g", n) for n in range(10)])
    await audit.save_config_text("rev1", "models: []\n")
    while await sequencer.tick():
        pass
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO audit_holds (id, team, reason, set_by, set_at) VALUES ($1, $2, $3, $4,"
            " $5)",
            "hold_1",
            None,
            "litigation",
            "user:x",
            utcnow(),
        )
    return sequencer


async def refused(db: Store, sql: str, table: str, op: str) -> None:
    with pytest.raises(Invalid) as caught:
        async with db.transaction() as tx:
            await tx.execute(sql)
    message = str(caught.value)
    assert f"{table}: the audit tables are append-only ({op} refused)" in message, message


async def count(db: Store, table: str) -> int:
    async with db.transaction(readonly=True) as tx:
        row = await tx.fetchrow(f"SELECT count(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


async def test_update_delete_and_truncate_are_refused(store: Store) -> None:  # noqa: F811
    await build(store)
    for table, assignment in GUARDED.items():
        before = await count(store, table)
        assert before > 0, table
        await refused(store, f"UPDATE {table} SET {assignment}", table, "UPDATE")
        await refused(store, f"DELETE FROM {table}", table, "DELETE")
        if store.dialect == "postgresql":
            await refused(store, f"TRUNCATE {table} CASCADE", table, "TRUNCATE")
        assert await count(store, table) == before


async def test_normal_operation_still_works(store: Store) -> None:  # noqa: F811
    sequencer = await build(store)
    # More records are inserted, queued, sequenced (queue rows deleted, head moved) and signed.
    await AuditStore(store).insert([record("more", n) for n in range(25)])
    while await sequencer.tick():
        pass
    assert await count(store, "audit_leaves") == 70
    assert await count(store, "audit_pending") == 0
    assert await count(store, "audit_checkpoints") >= 2
    # Key rotation: a second key, and the first key's validity closed, once.
    new_key = Checkpointer(store, [make_signer()], origin="custos.test/audit")
    await new_key.register_keys()
    async with store.transaction() as tx:
        closed = await tx.execute(
            "UPDATE audit_signing_keys SET not_after = $1 WHERE not_after IS NULL AND key_id <> $2",
            utcnow(),
            new_key.signers[0].verifier.id.hex(),
        )
    assert closed == 1
    await refused(store, "UPDATE audit_signing_keys SET not_after = not_before",
                  "audit_signing_keys", "UPDATE")  # fmt: skip
    # A hold is released once; its reason never changes.
    async with store.transaction() as tx:
        assert (
            await tx.execute(
                "UPDATE audit_holds SET released_at = $1, released_by = 'user:y',"
                " release_reason = 'settled' WHERE id = 'hold_1'",
                utcnow(),
            )
            == 1
        )
    await refused(store, "UPDATE audit_holds SET released_at = set_at", "audit_holds", "UPDATE")
    # The tree head and the cursor are bookkeeping, not guarded.
    async with store.transaction() as tx:
        await tx.execute("UPDATE audit_cursors SET position = position")
        await tx.execute("UPDATE audit_tree_head SET leader = leader")


async def test_the_purge_window_allows_exactly_the_purge(store: Store) -> None:  # noqa: F811
    sequencer = await build(store)
    unsequenced = record("late", 0)
    at = _sqlite_time if store.dialect == "sqlite" else ms_to_datetime
    async with store.transaction() as tx:  # stored but not (yet) in the log
        await tx.execute(
            "INSERT INTO audit_events (event_id, event_type, at, record, leaf_hash, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            unsequenced.event_id, unsequenced.event_type, at(unsequenced.at_ms),
            unsequenced.body, unsequenced.leaf_hash, at(unsequenced.at_ms),
        )  # fmt: skip
    async with store.transaction(readonly=True) as tx:
        call = await tx.fetchrow("SELECT event_id FROM audit_llm_calls LIMIT 1")
    assert call is not None
    event = call["event_id"]
    empty = "UPDATE audit_events SET record = $1 WHERE event_id = $2"
    # Outside a window: refused.
    await refused(store, f"UPDATE audit_events SET record = X'' WHERE event_id = '{event}'"
                  if store.dialect == "sqlite" else
                  f"UPDATE audit_events SET record = ''::bytea WHERE event_id = '{event}'",
                  "audit_events", "UPDATE")  # fmt: skip
    # Inside: emptying a sequenced body and deleting its projection rows is allowed ...
    async with store.transaction() as tx, tx.purge_window():
        assert await tx.execute(empty, b"", event) == 1
        await tx.execute("DELETE FROM audit_llm_calls WHERE event_id = $1", event)
        await tx.execute("DELETE FROM audit_llm_call_data_classes WHERE event_id = $1", event)
        await tx.execute("DELETE FROM audit_tool_calls WHERE tool = 'echo'")  # none: allowed
    # ... but nothing else: another value, another column, an unsequenced record, a delete.
    for sql, args in (
        (empty, (b"x", event)),
        ("UPDATE audit_events SET record = $1, at = $2 WHERE event_id = $3",
         (b"", utcnow() - timedelta(days=1), event)),
        (empty, (b"", unsequenced.event_id)),
        ("DELETE FROM audit_events WHERE event_id = $1", (event,)),
        ("DELETE FROM audit_leaves WHERE event_id = $1", (event,)),
        ("UPDATE audit_llm_calls SET team = 'x'", ()),
        ("UPDATE audit_tool_calls SET team = 'x'", ()),
    ):  # fmt: skip
        with pytest.raises(Invalid, match="the audit tables are append-only"):
            async with store.transaction() as tx, tx.purge_window():
                await tx.execute(sql, *args)
    # The window closes with its transaction.
    await refused(store, "DELETE FROM audit_llm_calls", "audit_llm_calls", "DELETE")
    await refused(store, "DELETE FROM audit_tool_calls", "audit_tool_calls", "DELETE")
    assert sequencer.frontier is not None and sequencer.frontier.size == 45


def documented_grants(schema: str, app: str, retention: str) -> str:
    """The grant SQL of docs/audit.md ("PostgreSQL roles"), for ``schema`` and these roles."""
    text = (ROOT / "docs" / "audit.md").read_text()
    section = text[text.index("### PostgreSQL roles") :]
    start = section.index("```sql\n") + 7
    sql = section[start : section.index("\n```", start)]
    sql = sql.replace("custos_app", app).replace("custos_retention", retention)
    return sql.replace("SCHEMA custos ", f"SCHEMA {schema} ").replace("custos.", f"{schema}.")


async def test_the_documented_grants(pg_url: str) -> None:  # noqa: F811
    """Under the documented roles, the gateway's work (insert, sequence, checkpoint, rotate a
    key, set and release a hold) and the purge's work succeed; changing the log is refused."""
    schema = pg_url.rsplit("search_path=", 1)[1]
    tag = secrets.token_hex(4)
    app, retention = f"custos_app_{tag}", f"custos_retention_{tag}"
    owner = await open_store(pg_url)
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(documented_grants(schema, app, retention))
        # What the app role needs outside the audit tables, for set_hold's admin event.
        await admin.execute(f"GRANT SELECT, INSERT ON {schema}.admin_events TO {app}")
        await admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {app}")
        as_app = await open_store(pg_url.replace("postgres@", f"{app}@"), migrate=False)
        try:
            old = unix_ms(utcnow() - timedelta(days=500))
            await AuditStore(as_app).insert(
                [seal(dict(r), at_ms=old) for r in seeded_calls(10, seed=5)]
                + [seal(dict(r), at_ms=old) for r in seeded_tool_calls(3)]
                + [record("app", n) for n in range(5)]
            )  # fmt: skip
            checkpointer = Checkpointer(as_app, [make_signer()], origin="custos.test/audit")
            await checkpointer.register_keys()
            sequencer = Sequencer(as_app, on_committed=checkpointer.checkpoint)
            assert await sequencer.lead() and await sequencer.tick() == 18
            async with as_app.transaction() as tx:
                await tx.execute("UPDATE audit_signing_keys SET not_after = $1", utcnow())
            hold = await set_hold(as_app, Actor("user:a", "admin"), team="x", reason="case")
            await release_hold(as_app, Actor("user:a", "admin"), hold.id, reason="done")
            for sql in ("UPDATE audit_events SET record = ''::bytea", "DELETE FROM audit_leaves",
                        "TRUNCATE audit_checkpoints", "DELETE FROM audit_llm_calls",
                        "DELETE FROM audit_tool_calls"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with as_app.transaction() as tx, tx.purge_window():
                        await tx.execute(sql)
            await sequencer.step_down()
        finally:
            await as_app.close()
        as_retention = await open_store(pg_url.replace("postgres@", f"{retention}@"),
                                        migrate=False)  # fmt: skip
        try:
            purged = await purge(as_retention, retention_days=400, trigger="command",
                                 gateway=GatewayInfo("tests"))  # fmt: skip
            assert purged.count == 13
        finally:
            await as_retention.close()
    finally:
        await owner.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.execute(f"DROP OWNED BY {app}, {retention} CASCADE")
        await admin.execute(f"DROP ROLE {app}")
        await admin.execute(f"DROP ROLE {retention}")
        await admin.close()

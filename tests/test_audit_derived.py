"""``verify`` checks what reports and the config history read against the hashed records:
the query projections (``audit_llm_calls``, ``audit_llm_call_data_classes``) and the stored
config texts (``audit_config_texts``). Each edit below is made with the guard triggers out of
the way, as the database's owner could, and must fail verify naming what differs; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import hashlib

import pytest

from custos.audit.compliance.verify import verify_log
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import Checkpointer
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.events import config_revision
from custos.audit.records.record import seal
from custos.audit.storage.store import _LLM_COLUMNS, AuditStore
from custos.state.store import Store
from tests.audit_helpers import unguarded
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_store_projection import varied
from tests.test_audit_verify import make_signer

TEXT = "version: 1\n# the config as served\n"
REVISION = hashlib.sha256(TEXT.encode()).hexdigest()


class Derived:
    """A signed log of varied llm.call records (data classes, NULs, odd times) and one config
    revision with its text."""

    def __init__(self, db: Store) -> None:
        self.store = db
        self.signer = make_signer()
        self.records = varied()

    async def build(self) -> None:
        audit = AuditStore(self.store)
        record, at_ms = config_revision(revision=REVISION, previous=None,
                                        text_sha256=REVISION, source="custos.yaml",
                                        trigger="start", gateway=GatewayInfo("t"))  # fmt: skip
        await audit.insert([*self.records, seal(record, at_ms=at_ms)])
        await audit.save_config_text(REVISION, TEXT)
        checkpointer = Checkpointer(self.store, [self.signer], origin="custos.test/audit",
                                    every_n=1000, interval_s=3600)  # fmt: skip
        await checkpointer.register_keys()
        sequencer = Sequencer(self.store, batch=100)
        assert await sequencer.lead()
        await sequencer.tick()
        assert sequencer.frontier is not None
        await checkpointer.checkpoint(sequencer.frontier.size, sequencer.frontier.root())

    async def failures(self) -> list[str]:
        report = await verify_log(self.store, verifiers=[self.signer.verifier])
        return report.failures

    async def tamper(self, statement: str, *args: object) -> None:
        async with unguarded(self.store) as tx:
            await tx.execute(statement, *args)


@pytest.fixture
async def derived(store: Store) -> Derived:  # noqa: F811
    built = Derived(store)
    await built.build()
    return built


async def test_intact_projections_and_texts_verify(derived: Derived) -> None:
    report = await verify_log(derived.store, verifiers=[derived.signer.verifier])
    assert report.failures == []
    assert "; 6 projection(s) and 1 config text(s) checked" in report.summary


async def test_an_edited_projection_column_fails(derived: Derived) -> None:
    event = derived.records[2].event_id
    await derived.tamper("UPDATE audit_llm_calls SET cost_micros = 0 WHERE event_id = $1", event)
    failures = await derived.failures()
    assert failures == [
        f"projection of llm.call record {event}: audit_llm_calls.cost_micros is 0, the record "
        f"says {derived.records[2].fields['cost_micros']}"
    ]


async def test_a_moved_projection_time_fails(derived: Derived) -> None:
    """Reports pick calls by time: a call moved out of a quarter would vanish from it."""
    event = derived.records[0].event_id
    await derived.tamper(
        "UPDATE audit_llm_calls SET time_start = time_end WHERE event_id = $1", event
    )
    [failure] = await derived.failures()
    assert failure.startswith(f"projection of llm.call record {event}: audit_llm_calls.time_start")


async def test_a_deleted_projection_row_fails(derived: Derived) -> None:
    event = derived.records[1].event_id
    await derived.tamper("DELETE FROM audit_llm_calls WHERE event_id = $1", event)
    assert await derived.failures() == [
        f"projection of llm.call record {event}: audit_llm_calls has no row for it"
    ]


async def test_an_invented_projection_row_fails(derived: Derived) -> None:
    rest = _LLM_COLUMNS.removeprefix("event_id, ")
    await derived.tamper(
        f"INSERT INTO audit_llm_calls ({_LLM_COLUMNS}) SELECT 'invented', {rest}"
        " FROM audit_llm_calls WHERE event_id = $1",
        derived.records[3].event_id,
    )
    assert await derived.failures() == [
        "audit_llm_calls holds a row for invented, which is no llm.call record"
    ]


async def test_an_edited_data_class_fails(derived: Derived) -> None:
    event = derived.records[0].event_id
    await derived.tamper(
        "UPDATE audit_llm_call_data_classes SET data_class = 'public' WHERE event_id = $1"
        " AND data_class = 'customer_data'",
        event,
    )
    [failure] = await derived.failures()
    assert failure.startswith(f"projection of llm.call record {event}: audit_llm_call_data_classes")


async def test_an_edited_config_text_fails(derived: Derived) -> None:
    await derived.tamper(
        "UPDATE audit_config_texts SET text = $1 WHERE revision = $2",
        TEXT + "budgets: []\n",
        REVISION,
    )
    assert await derived.failures() == [
        f"config text of revision {REVISION} differs from the text its config.revision record "
        "hashed (config.text_sha256)"
    ]


async def test_an_invented_or_deleted_config_text_fails(derived: Derived) -> None:
    await derived.tamper(
        "INSERT INTO audit_config_texts (revision, text, first_seen)"
        " SELECT 'f' || revision, text, first_seen FROM audit_config_texts"
    )
    await derived.tamper("DELETE FROM audit_config_texts WHERE revision = $1", REVISION)
    report = await verify_log(derived.store, verifiers=[derived.signer.verifier],
                              pending_delay_s=0)  # fmt: skip
    assert report.failures == [
        f"config text of revision f{REVISION}: no config.revision record names it",
        f"config text of revision {REVISION} is missing",
    ]

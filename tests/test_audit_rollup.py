"""The daily rollups (migration 0009) always say what the projection's rows say: the report
summed from them equals the report counted from the rows, after random batches of calls,
replays (a batch inserted again, a record twice in one batch) and retention purges."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.audit.compliance.report import (
    build_report,
    metadata_keys,
    parse_group_by,
    parse_range,
)
from custos.audit.compliance.retention import purge
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import SealedRecord, rfc3339_ms, seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store
from custos.state.migrations import m0009_audit_rollups
from custos.state.migrations import m0012_audit_metadata_rollup as m0012
from custos.state.models import utcnow
from custos.state.store import Store
from tests.store_fixtures import (  # noqa: F401  (fixtures)
    DIALECTS,
    PG_URL,
    create_pg_schema,
    drop_pg_schema,
    require_pg,
    store,
    store_url,
    with_search_path,
)
from tests.test_audit_report import seeded_calls

GROUPINGS = ["", "team", "day,principal", "month,model", "quarter,team,data_class,provider",
             "data_class", "data_class_source", "data_class,data_class_source", "stage,error",
             "team,outcome,status", "region,requested_model,provider_name,operation",
             "metadata.project", "day,metadata.env", "metadata.project,team,outcome",
             "provider,metadata.project,model", "metadata.project,principal"]  # fmt: skip
FILTERS = [(None, None), ("customer_data", None), ("pii.email", "detected"),
           ("customer_data", "declared"), (None, "declared")]  # fmt: skip

_class = st.tuples(st.sampled_from(["customer_data", "pii.email"]),
                   st.sampled_from(["declared", "detected"]))  # fmt: skip
_call = st.fixed_dictionaries({
    "days_ago": st.floats(0, 9.9),
    "team": st.sampled_from([None, "0", "", "sales"]),
    "classes": st.lists(_class, max_size=4),
    "seed": st.integers(0, 10_000),
    "metadata": st.sampled_from([{}, {"project": "a"}, {"project": "b", "env": "prod"},
                                 {"env": ""}, {"project": "0"}]),
})  # fmt: skip
_step = st.one_of(
    st.tuples(st.just("insert"), st.lists(_call, min_size=1, max_size=12)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("purge"), st.integers(1, 9)),
)


def _record(spec: dict[str, Any]) -> SealedRecord:
    fields = dict(seeded_calls(1, seed=spec["seed"])[0])
    at = unix_ms(utcnow() - timedelta(days=spec["days_ago"]))
    fields.update({
        "time_start": rfc3339_ms(at), "time_end": rfc3339_ms(at + 40), "team": spec["team"],
        "data_classes": [{"class": c, "count": 1, "source": s} for c, s in spec["classes"]],
        "metadata": spec.get("metadata", {}),
    })  # fmt: skip
    return seal(fields, at_ms=at)


class Trial:
    """One store for every example (the rollups must agree whatever came before)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, opened: Store) -> None:
        self.loop, self.store, self.audit = loop, opened, AuditStore(opened)
        self.sequencer = Sequencer(opened, batch=500)
        self.sent: list[SealedRecord] = []

    async def step(self, kind: str, arg: Any) -> None:
        if kind == "insert":
            batch = [_record(spec) for spec in arg]
            await self.audit.insert(batch + batch[:1])  # a record twice in one batch
            self.sent += batch
        elif kind == "replay":
            await self.audit.insert(self.sent[-arg:] if arg else self.sent[:1])
        else:
            assert await self.sequencer.lead()
            while await self.sequencer.tick():
                pass
            await purge(self.store, retention_days=arg, gateway=GatewayInfo("tests"), batch=7)

    async def agree(self) -> None:
        today = utcnow().date()
        since, until = parse_range((today - timedelta(days=12)).isoformat(), today.isoformat())
        for grouping in GROUPINGS:
            for data_class, source in FILTERS:
                args: dict[str, Any] = {
                    "since": since, "until": until, "data_class": data_class, "source": source,
                    "group_by": parse_group_by(grouping),
                }  # fmt: skip
                summed = await build_report(self.audit, **args)
                counted = await build_report(self.audit, **args, rollups=False)
                assert summed == counted, (grouping, data_class, source)
        for table in ("audit_llm_daily", "audit_llm_daily_metadata"):
            zero = await self.audit.fetch(f"SELECT count(*) AS n FROM {table} WHERE requests <= 0")
            assert int(zero[0]["n"]) == 0, table


@pytest.fixture(params=DIALECTS)
def trial(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trial]:
    loop = asyncio.new_event_loop()
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'custos.db'}"
    else:
        loop.run_until_complete(require_pg())
        schema = loop.run_until_complete(create_pg_schema())
        url = with_search_path(PG_URL, schema)
    opened = loop.run_until_complete(open_store(url))
    try:
        yield Trial(loop, opened)
    finally:
        loop.run_until_complete(opened.close())
        if schema is not None:
            loop.run_until_complete(drop_pg_schema(schema))
        loop.close()


_SLOW_FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=25, deadline=None, suppress_health_check=_SLOW_FIXTURE)
@given(steps=st.lists(_step, min_size=1, max_size=6))
def test_the_rollups_say_what_the_rows_say(trial: Trial, steps: list[tuple[str, Any]]) -> None:
    async def run() -> None:
        for kind, arg in steps:
            await trial.step(kind, arg)
            await trial.agree()

    trial.loop.run_until_complete(run())


async def test_a_class_both_declared_and_detected_counts_once(store: Store) -> None:  # noqa: F811
    """Grouped by class, a call counts once per class it carries, however many sources say
    so; grouped by class and source, once per source."""
    both = _record({"days_ago": 1, "team": "sales", "seed": 1,
                    "classes": [("pii.email", "declared"), ("pii.email", "detected")]})  # fmt: skip
    await AuditStore(store).insert([both])
    today = utcnow().date()
    since, until = parse_range((today - timedelta(days=3)).isoformat(), today.isoformat())
    for rollups in (True, False):
        split = {("pii.email", "declared"): 1, ("pii.email", "detected"): 1}
        for grouping, expected in (("data_class", {("pii.email",): 1}),
                                   ("data_class,data_class_source", split)):  # fmt: skip
            report = await build_report(
                AuditStore(store), since=since, until=until,
                group_by=parse_group_by(grouping), rollups=rollups,
            )  # fmt: skip
            assert {tuple(r["group"].values()): r["requests"] for r in report.rows} == expected
            assert report.totals["requests"] == 1


async def test_the_migration_fills_the_rollups_as_the_inserts_do(store: Store) -> None:  # noqa: F811
    """Migration 0009's backfill, run over the stored calls, makes the very rows the insert
    path made call by call."""
    specs = [{"days_ago": n / 7, "team": [None, "0", "sales"][n % 3], "seed": n,
              "classes": [("pii.email", "declared"), ("pii.email", "detected"),
                          ("customer_data", "declared")][: n % 4]}
             for n in range(60)]  # fmt: skip
    await AuditStore(store).insert([_record(s) for s in specs])
    tables = ("audit_llm_daily", "audit_llm_daily_routes", "audit_llm_daily_principals",
              "audit_llm_daily_classes")  # fmt: skip

    async def contents() -> list[list[tuple[Any, ...]]]:
        async with store.transaction(readonly=True) as tx:
            rows = [await tx.fetch(f"SELECT * FROM {t}") for t in tables]
        return [sorted((tuple(map(str, r.values())) for r in t), key=str) for t in rows]

    made = await contents()
    assert all(made)
    script = (
        m0009_audit_rollups.SQLITE if store.dialect == "sqlite" else m0009_audit_rollups.POSTGRESQL
    )
    fills = [s for s in script.split(";\n") if s.strip().startswith("INSERT")]
    assert len(fills) == len(tables)
    async with store.transaction() as tx:
        for table in tables:
            await tx.execute(f"DELETE FROM {table}")
        for fill in fills:
            await tx.execute(fill)
    assert await contents() == made


async def test_the_metadata_migration_fills_the_rollup_as_the_inserts_do(
    store: Store,  # noqa: F811
) -> None:
    """Migration 0012's backfill, read from the stored records' metadata, makes the very rows
    the insert path made call by call."""
    kinds = [{}, {"project": "a"}, {"project": "b", "env": "prod"}, {"env": ""}]
    specs = [{"days_ago": n / 7, "team": [None, "0", "sales"][n % 3], "seed": n, "classes": [],
              "metadata": kinds[n % 4]} for n in range(40)]  # fmt: skip
    await AuditStore(store).insert([_record(s) for s in specs])

    async def contents() -> list[tuple[str, ...]]:
        async with store.transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT * FROM audit_llm_daily_metadata")
        return sorted(tuple(map(str, r.values())) for r in rows)

    made = await contents()
    assert len({row[-6] for row in made}) == 2  # both keys, per day, team and outcome
    script = m0012.SQLITE if store.dialect == "sqlite" else m0012.POSTGRESQL
    fill = next(s for s in script.split(";\n") if s.strip().startswith("INSERT"))
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM audit_llm_daily_metadata")
        await tx.execute(fill)
    assert await contents() == made


async def test_the_metadata_keys_offered_are_those_of_the_ranges_days(
    store: Store,  # noqa: F811
) -> None:
    kinds = [{"b": "x"}, {"a": "1", "c": ""}, {}, {"d": "y"}]
    specs = [{"days_ago": 3 * n + 0.5, "team": "t", "seed": n, "classes": [],
              "metadata": kinds[n]} for n in range(4)]  # fmt: skip
    audit = AuditStore(store)
    await audit.insert([_record(s) for s in specs])
    today = utcnow().date()

    async def keys(first_ago: int, last_ago: int, limit: int = 100) -> list[str]:
        since, until = parse_range(
            (today - timedelta(days=first_ago)).isoformat(),
            (today - timedelta(days=last_ago)).isoformat(),
        )
        return await metadata_keys(audit, since, until, limit=limit)

    assert await keys(12, 0) == ["a", "b", "c", "d"]
    assert await keys(5, 0) == ["a", "b", "c"]
    assert await keys(5, 0, limit=2) == ["a", "b"]
    assert await keys(8, 5) == []
    assert await keys(12, 8) == ["d"]

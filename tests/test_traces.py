"""Trace search and the records behind a report cell (``custos.audit.traces``), on SQLite and
PostgreSQL, against what the seeded records say: every filter, the keyset pages (each trace
once, newest first), and who may read what."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import pytest

from custos.admin.errors import Forbidden
from custos.admin.service import AdminService
from custos.audit import trace_days, traces
from custos.audit.records.record import seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.identity.principal import Principal
from custos.identity.tokens import TokenService
from custos.state.errors import NotFound
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_report import seeded_calls


async def _seed(target: Store, records: list[dict[str, Any]]) -> None:
    """Seal each record in place (it gains its event id) and store them."""
    at = [unix_ms(datetime.fromisoformat(r["time_start"])) for r in records]
    await AuditStore(target).insert([seal(r, at_ms=ms) for r, ms in zip(records, at, strict=True)])


def principal(roles: set[str], pid: str = "usr_x", managed: tuple[str, ...] = ()) -> Principal:
    return Principal("user", pid, "x@custos.test", "", managed, managed, frozenset(roles),
                     frozenset(), "tok_x", "pat", None, None)  # fmt: skip


ADMIN = principal({"admin"})


def with_guardrails(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rng = random.Random(3)
    for r in records:
        if rng.random() < 0.3:
            verdict = rng.choice(["allow", "deny", "mutate"])
            r["decisions"] = [{"stage": "guardrails", "rule": "pii", "decision": verdict,
                               "reason": None, "input": None}]  # fmt: skip
    return records


async def everything(svc: AdminService, p: Principal, f: traces.TraceFilter) -> list[str]:
    """Every page of a search, walked with its cursor (small pages, to cross many)."""
    out: list[str] = []
    before = None
    while True:
        page = await traces.search(svc, p, _with(f, before), limit=37)
        out += [r["request_id"] for r in page.rows]
        if page.next_before is None:
            return out
        before = page.next_before


def _with(f: traces.TraceFilter, before: str | None) -> traces.TraceFilter:
    values = {name: getattr(f, name) for name in traces.TraceFilter.__dataclass_fields__}
    return traces.TraceFilter(**{**values, "before": before})


def newest_first(records: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(records, key=lambda r: (r["time_start"], r["event_id"]), reverse=True)
    return [r["request_id"] for r in ordered]


async def test_search_filters_pages_and_rights(store: Store) -> None:  # noqa: F811
    records = with_guardrails(seeded_calls(400, seed=5))
    await _seed(store, records)
    svc = AdminService(store, TokenService(store, "k" * 32))

    async def ids(p: Principal, **f: str) -> list[str]:
        return await everything(svc, p, traces.TraceFilter(**f))

    assert await ids(ADMIN) == newest_first(records)
    assert await ids(principal({"auditor"})) == newest_first(records)
    member = records[0]["principal.id"]
    mine = [r for r in records if r["principal.id"] == member]
    assert await ids(principal({"member"}, member)) == newest_first(mine)
    theirs = [r for r in records if r["team"] == "support" or r["principal.id"] == member]
    manager = principal({"team_manager"}, member, ("support",))
    assert await ids(manager) == newest_first(theirs)
    # A membership without the team_manager role manages nothing.
    assert await ids(principal({"member"}, member, ("support",))) == newest_first(mine)

    cases: list[tuple[dict[str, str], Any]] = [
        ({"team": "sales"}, lambda r: r["team"] == "sales"),
        ({"provider": "azure-eu"}, lambda r: r["provider.account"] == "azure-eu"),
        ({"status": "429"}, lambda r: r["http.response.status_code"] == 429),
        ({"outcome": "upstream_error"}, lambda r: r["outcome"] == "upstream_error"),
        ({"model": "claude-main/m"}, lambda r: r["gen_ai.request.model"] == "claude-main/m"),
        ({"data_class": "customer_data"},
         lambda r: "customer_data" in {c["class"] for c in r["data_classes"]}),
        ({"request_id": "seed000010"}, lambda r: r["request_id"] == "seed000010"),
        ({"since": "2026-08-01", "until": "2026-08-31"},
         lambda r: "2026-08-01" <= r["time_start"] < "2026-09-01"),
        ({"user": member}, lambda r: r["principal.id"] == member),
        ({"guardrail": "deny"}, lambda r: any(d.get("decision") == "deny" for d in r["decisions"])),
        ({"guardrail": "any"}, lambda r: bool(r["decisions"])),
        ({"team": "sales", "outcome": "served"},
         lambda r: r["team"] == "sales" and r["outcome"] == "served"),
    ]  # fmt: skip
    for given, keep in cases:
        assert await ids(ADMIN, **given) == newest_first([r for r in records if keep(r)]), given

    # One trace: readable by whoever may search it, else missing, as a made-up id.
    other = next(r for r in records if r["principal.id"] != member and r["team"] != "support")
    found = await traces.get(svc, ADMIN, other["request_id"])
    assert [r["event_id"] for r in found.records] == [other["event_id"]]
    for p in (principal({"member"}, member), manager):
        with pytest.raises(NotFound) as refused:
            await traces.get(svc, p, other["request_id"])
        with pytest.raises(NotFound) as missing:
            await traces.get(svc, p, "no-such-request")
        assert str(refused.value).replace(other["request_id"], "X") == str(missing.value).replace(
            "no-such-request", "X"
        )
    assert (await traces.get(svc, manager, mine[0]["request_id"])).records


async def test_filters_without_an_index_walk_only_the_days_the_rollups_name(
    store: Store,  # noqa: F811
) -> None:
    """Provider, model, status, outcome and data class read the days to walk from the daily
    rollups (custos.audit.trace_days): the pages must still be every match, newest first, for
    each role, with and without a time range, for rare values (a few calls days apart) and
    values no call has; and the walk must skip the days without matches."""
    records = seeded_calls(400, seed=11)
    rare = records[10::97]  # five calls, weeks apart
    for r in rare:
        r["gen_ai.request.model"] = "rare-account/rare"
        r["http.response.status_code"] = 418
        r["data_classes"] = [{"class": "rare.class", "count": 1, "source": "detected"}]
    await _seed(store, records)
    svc = AdminService(store, TokenService(store, "k" * 32))
    member = records[0]["principal.id"]
    manager = principal({"team_manager"}, member, ("support",))

    def sees(p: Principal, r: dict[str, Any]) -> bool:
        return p is ADMIN or r["principal.id"] == member or r["team"] == "support"

    def classes(r: dict[str, Any]) -> set[str]:
        return {c["class"] for c in r["data_classes"]}

    cases: list[tuple[dict[str, str], Any]] = [
        ({"model": "rare-account/rare"}, lambda r: r in rare),
        ({"status": "418"}, lambda r: r in rare),
        ({"data_class": "rare.class"}, lambda r: r in rare),
        ({"provider": "nowhere"}, lambda r: False),
        ({"outcome": "client_disconnected"}, lambda r: False),
        ({"provider": "azure-eu", "data_class": "pii.email"},
         lambda r: r["provider.account"] == "azure-eu" and "pii.email" in classes(r)),
        ({"status": "429", "data_class": "customer_data", "user": member},
         lambda r: r["http.response.status_code"] == 429 and "customer_data" in classes(r)
         and r["principal.id"] == member),
        ({"model": "claude-main/m", "since": "2026-07-20", "until": "2026-08-10"},
         lambda r: r["gen_ai.request.model"] == "claude-main/m"
         and "2026-07-20" <= r["time_start"] < "2026-08-11"),
        ({"outcome": "denied", "team": "support"},
         lambda r: r["outcome"] == "denied" and r["team"] == "support"),
    ]  # fmt: skip
    for p in (ADMIN, manager):
        for given, keep in cases:
            want = newest_first([r for r in records if keep(r) and sees(p, r)])
            assert await everything(svc, p, traces.TraceFilter(**given)) == want, (p.roles, given)

    # The rare model's calls lie on a few days: the walk reads those days' rows only.
    store_ = AuditStore(store)
    asked = trace_days.Asked(model="rare-account/rare")
    days = await trace_days.matching_days(store_, ADMIN, asked)
    on = Counter(datetime.fromisoformat(r["time_start"]).date() for r in rare)
    assert days == sorted(on.items(), reverse=True)
    assert await trace_days.matching_days(store_, ADMIN, trace_days.Asked(team="x")) is None


async def test_bad_filters_are_refused(store: Store) -> None:  # noqa: F811
    from custos.admin.errors import BadInput

    svc = AdminService(store, TokenService(store, "k" * 32))
    for bad in ({"status": "abc"}, {"status": "99"}, {"since": "yesterday"},
                {"before": "not-a-cursor"}, {"guardrail": "maybe"}):  # fmt: skip
        with pytest.raises(BadInput):
            await traces.search(svc, ADMIN, traces.TraceFilter(**bad))


async def test_cell_records_are_the_reports_cell(store: Store) -> None:  # noqa: F811
    records = seeded_calls(300, seed=9)
    await _seed(store, records)
    svc = AdminService(store, TokenService(store, "k" * 32))
    in_q3 = [r for r in records if "2026-07-01" <= r["time_start"] < "2026-10-01"]

    def classes(r: dict[str, Any]) -> set[str]:
        return {c["class"] for c in r["data_classes"]}

    cells = [("support", "customer_data", "azure-eu"), (None, None, "openai-main"),
             ("sales", None, None)]  # fmt: skip
    for team, data_class, provider in cells:
        want = [
            r["request_id"] for r in in_q3
            if r["team"] == team and r["provider.account"] == provider
            and (data_class in classes(r) if data_class else not classes(r))
        ]  # fmt: skip
        got = await traces.cell_records(
            svc, ADMIN, since="2026-07-01", until="2026-09-30",
            team=team or traces.NONE, data_class=data_class or traces.NONE,
            provider=provider or traces.NONE,
        )  # fmt: skip
        assert sorted(orjson.loads(b)["request_id"] for b in got) == sorted(want)
    with pytest.raises(Forbidden):
        await traces.cell_records(
            svc, principal({"member"}), since="2026-07-01", until="2026-09-30",
            team="x", data_class="y", provider="z",
        )  # fmt: skip


async def test_log_status_reads_the_head_and_is_for_readers(store: Store) -> None:  # noqa: F811
    from custos.audit import service as audit_service

    records = seeded_calls(20, seed=2)
    await _seed(store, records)
    svc = AdminService(store, TokenService(store, "k" * 32))
    status = await audit_service.log_status(svc, principal({"auditor"}))
    # SQLite sequences as it inserts; PostgreSQL's sequencer (not running here) has not yet.
    assert status.log_size == (20 if store.serial_writes else 0)
    assert (status.checkpoint_size, status.checkpoints) == (None, 0)
    with pytest.raises(Forbidden):
        await audit_service.log_status(svc, principal({"member"}))

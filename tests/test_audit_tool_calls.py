"""The projection of ``mcp.tool_call`` records (``audit_tool_calls``, migration 0011) on SQLite
and PostgreSQL: the tool-call report says what the records say; the migration's backfill makes
the rows the insert path makes; ``verify`` checks the records and their rows (a tampered record
or row fails); the purge empties tool calls and a team's legal hold keeps that team's."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from custos.audit.compliance.report import parse_range
from custos.audit.compliance.retention import purge, set_hold
from custos.audit.compliance.tool_report import MEASURES, build_tool_report, parse_group_by
from custos.audit.compliance.verify import verify_log
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import Checkpointer
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import SealedRecord, rfc3339_ms, seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.state.migrations import m0011_audit_tool_calls
from custos.state.models import Actor, utcnow
from custos.state.store import Store
from tests.audit_helpers import unguarded
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)
from tests.test_audit_report import seeded_calls
from tests.test_audit_verify import make_signer

TABLES = ("audit_tool_calls", "audit_tool_call_data_classes", "audit_tool_daily")
QUARTER_START = datetime(2026, 7, 1, tzinfo=UTC)
QUARTER_END = datetime(2026, 10, 1, tzinfo=UTC)
TEAMS = ["support", "sales", None]
TOOLS = {"tickets": ["read_ticket", "close_ticket"], "mail": ["send_email"], "db": ["delete_row"]}
#: outcome → (status, stopped_at, error.type), as the gateway records them.
ENDINGS = {
    "served": (200, None, None),
    "denied": (403, "access", "tool_not_allowed"),
    "denied-guardrail": (400, "guardrails", "guardrail_blocked"),
    "denied-rate": (429, "rate_limit", "rate_limited"),
    "cancelled": (200, None, "cancelled"),
    "upstream_error": (502, "provider", "upstream_unreachable"),
}


def classes(rng: random.Random) -> list[dict[str, Any]]:
    """Data classes as tool-call records carry them: declared, detected, both; a class named
    twice by one source (the projection keeps the first)."""
    picked = [(name, source) for name in ("customer_data", "pii.email")
              for source in ("declared", "detected") if rng.random() < 0.25]  # fmt: skip
    listed = [{"class": name, "count": rng.randrange(1, 4), "source": source}
              for name, source in picked]  # fmt: skip
    if listed and rng.random() < 0.1:
        listed.append({**listed[0], "count": 99})
    return listed


def tool_call(at_ms: int, rng: random.Random, n: int) -> dict[str, Any]:
    """An ``mcp.tool_call`` record with every field the gateway writes."""
    server = rng.choice(list(TOOLS))
    tool = rng.choice(TOOLS[server])
    ending = rng.choices(list(ENDINGS), [10, 2, 1, 1, 1, 1])[0]
    status, stage, error = ENDINGS[ending]
    team = rng.choice(TEAMS)
    virtual = rng.random() < 0.2
    return {
        "event_type": "mcp.tool_call",
        "request_id": f"tool{n:06d}",
        "time_start": rfc3339_ms(at_ms),
        "time_end": rfc3339_ms(at_ms + 12),
        "gateway.instance": "seed", "gateway.version": "0", "config.revision": "r" * 64,
        "principal.kind": "virtual_account" if virtual else "user",
        "principal.id": f"{'vac' if virtual else 'usr'}_{rng.randrange(8):020d}",
        "principal.teams": [team] if team else [], "team": team, "auth.token_id": "tok_x",
        "metadata": {}, "data_classes": classes(rng), "data_classes.detectors": [],
        "api.protocol": "mcp",
        "mcp.endpoint": "desk" if rng.random() < 0.3 else server,
        "mcp.server": server, "mcp.tool": tool, "mcp.tool.called_as": tool,
        "mcp.session": "n" * 32, "cloud.region": "eu",
        "mcp.arguments.hmac_sha256": "a" * 64,
        "mcp.result.hmac_sha256": "b" * 64 if ending == "served" else None,
        "mcp.result.is_error": (rng.random() < 0.2) if ending == "served" else None,
        "mcp.upstream.error_code": None, "mcp.progress_notifications": 0,
        "decisions": [], "http.response.status_code": status,
        "outcome": "denied" if ending.startswith("denied") else ending,
        "stopped_at": stage, "error.type": error, "latency_ms": 12,
    }  # fmt: skip


def unbuilt(at_ms: int, n: int) -> dict[str, Any]:
    """What the gateway records for a tool call whose full record could not be built
    (``events.unbuilt_llm_call``): most fields missing."""
    return {"event_type": "mcp.tool_call", "request_id": f"unbuilt{n}",
            "time_start": rfc3339_ms(at_ms), "time_end": rfc3339_ms(at_ms),
            "gateway.instance": "seed", "gateway.version": "0", "config.revision": "r" * 64,
            "api.protocol": "mcp", "http.response.status_code": 500, "outcome": "error",
            "stopped_at": None, "error.type": "internal_error",
            "audit.repaired": ["$"]}  # fmt: skip


def seeded_tool_calls(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Tool calls over a little more than Q3 2026, the range's edges included, two of them
    only partly built and one with a NUL in its tool name (U+FFFD in the projection)."""
    rng = random.Random(seed)
    first = unix_ms(QUARTER_START - timedelta(days=5))
    span = unix_ms(QUARTER_END + timedelta(days=5)) - first
    times = [first + rng.randrange(span) for _ in range(count)]
    edges = [unix_ms(QUARTER_START), unix_ms(QUARTER_END) - 1, unix_ms(QUARTER_START) - 1,
             unix_ms(QUARTER_END)][:count]  # fmt: skip
    times[: len(edges)] = edges
    records = [tool_call(at, rng, n) for n, at in enumerate(times)]
    records[0]["mcp.tool"] = "odd\x00name"  # at the range's first millisecond
    for n in range(5, min(count, 7)):
        records[n] = unbuilt(times[n], n)
    return records


def sealed(records: list[dict[str, Any]]) -> list[SealedRecord]:
    return [seal(dict(r), at_ms=unix_ms(datetime.fromisoformat(r["time_start"]))) for r in records]


def expected(
    records: list[dict[str, Any]], group_by: tuple[str, ...], data_class: str | None = None
) -> dict[tuple, Counter]:
    """The report computed from the records themselves (Q3 2026)."""
    field = {"team": "team", "server": "mcp.server", "tool": "mcp.tool", "stage": "stopped_at",
             "outcome": "outcome", "principal_kind": "principal.kind"}  # fmt: skip
    groups: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        if not "2026-07-01" <= r["time_start"] < "2026-10-01":
            continue
        carried = sorted({c["class"] for c in r.get("data_classes") or []})
        if data_class is not None and data_class not in carried:
            continue
        outcome = r["outcome"]
        keys = [tuple(r.get(field[g]) for g in group_by if g != "data_class")]
        if "data_class" in group_by:  # last in the groupings below: once per class carried
            keys = [(*keys[0], name) for name in carried or [None]]
        for key in keys:
            groups[key].update(
                calls=1, served=outcome == "served", denied=outcome == "denied",
                cancelled=outcome == "cancelled",
                failed=outcome not in ("served", "denied", "cancelled"),
                tool_errors=r.get("mcp.result.is_error") is True,
            )  # fmt: skip
    return groups


async def test_the_report_says_what_the_records_say(store: Store) -> None:  # noqa: F811
    records = seeded_tool_calls(700)
    audit = AuditStore(store)
    # Mixed with model calls in one batch, as the writer sends them; inserting again adds none.
    models = seeded_calls(50)
    batch = sealed(records + models)
    await audit.insert(batch)
    await audit.insert(batch[:40])
    since, until = parse_range("2026-07-01", "2026-09-30")
    exact = parse_range("2026-07-01T00:00:00Z", "2026-09-30T23:59:59.9995Z")  # the same calls
    # From the daily rollup (whole days, dimensions it keeps) and from the rows.
    for grouping, rollups, (start, end), data_class in (
        ("team,server,tool", True, (since, until), None),
        ("team,tool", True, (since, until), "customer_data"),  # the rows: a class asked about
        ("team,data_class", True, (since, until), None),
        ("team,server,tool", False, (since, until), None),
        ("team,server,tool", True, exact, None),  # a time, not a date: the rows, the same calls
        ("stage,outcome", True, (since, until), None),
        ("stage,outcome", False, (since, until), None),
        ("principal_kind", True, (since, until), None),  # not in the rollup: the rows
        ("", True, (since, until), None),
    ):  # fmt: skip
        group_by = parse_group_by(grouping)
        report = await build_tool_report(audit, since=start, until=end, group_by=group_by,
                                         data_class=data_class, rollups=rollups)  # fmt: skip
        want = expected(records, group_by, data_class)
        got = {tuple(r["group"].values()): r for r in report["rows"]}
        # A NUL in text is U+FFFD in the projection, on both stores.
        want = {tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in k): c
                for k, c in want.items()}  # fmt: skip
        assert set(got) == set(want), grouping
        for key, counts in want.items():
            assert {m: got[key][m] for m in MEASURES} == {m: counts[m] for m in MEASURES}, key
        in_range = [r for r in records if "2026-07-01" <= r["time_start"] < "2026-10-01"
                    and (data_class is None or data_class in
                         {c["class"] for c in r.get("data_classes") or []})]  # fmt: skip
        assert report["totals"]["calls"] == len(in_range)
        if "data_class" not in group_by:
            assert report["totals"] == {m: sum(c[m] for c in want.values()) for m in MEASURES}
    # Per class and source: a call once per (class, source) it carries, a repeat once.
    in_q3 = [r for r in records if "2026-07-01" <= r["time_start"] < "2026-10-01"]
    split = await build_tool_report(
        audit, since=since, until=until, group_by=parse_group_by("data_class,data_class_source")
    )
    pairs = Counter(
        pair
        for r in in_q3
        for pair in {(c["class"], c["source"]) for c in r.get("data_classes") or []}
    )
    pairs[(None, None)] = sum(1 for r in in_q3 if not r.get("data_classes"))
    assert {tuple(r["group"].values()): r["calls"] for r in split["rows"]} == dict(pairs)
    assert split["totals"]["calls"] == len(in_q3)
    detected = await build_tool_report(
        audit, since=since, until=until, group_by=(), data_class="pii.email", source="detected"
    )
    assert detected["totals"]["calls"] == sum(
        1 for r in in_q3 if ("pii.email", "detected") in
        {(c["class"], c["source"]) for c in r.get("data_classes") or []})  # fmt: skip
    # Denials by stage: each stage that refused calls has its row.
    by_stage = await build_tool_report(audit, since=since, until=until,
                                       group_by=parse_group_by("stage"))  # fmt: skip
    stages = {r["group"]["stage"]: r["denied"] for r in by_stage["rows"]}
    assert {"access", "guardrails", "rate_limit"} <= {s for s, n in stages.items() if n}
    # Per day and per quarter, from the rollup and from the rows alike.
    for grouping in ("day,tool", "quarter,team"):
        reports = [await build_tool_report(audit, since=since, until=until,
                                           group_by=parse_group_by(grouping), rollups=rollups)
                   for rollups in (True, False)]  # fmt: skip
        assert reports[0] == reports[1] and reports[0]["rows"], grouping
    # Over whole days the report reads the rollup: a changed sum there shows (verify does not
    # trust the rollup; the rows are what it is checked against).
    async with store.transaction() as tx:
        await tx.execute("UPDATE audit_tool_daily SET calls = calls + 1000 WHERE day = $1",
                         "2026-07-01")  # fmt: skip
    summed, counted = [
        (await build_tool_report(audit, since=since, until=until, group_by=(),
                                 rollups=rollups))["totals"]["calls"]
        for rollups in (True, False)
    ]  # fmt: skip
    assert summed - counted >= 1000
    # ``custos audit show`` finds a tool call by its request id through the projection.
    found = await audit.find("tool000010")
    assert [e.event_type for e in found] == ["mcp.tool_call"]


async def test_the_migration_fills_the_rows_the_inserts_make(store: Store) -> None:  # noqa: F811
    """Migration 0011's backfill, over the stored records, makes the very rows (and daily
    sums) the insert path made batch by batch."""
    await AuditStore(store).insert(sealed(seeded_tool_calls(120, seed=3) + seeded_calls(10)))

    async def rows() -> list[list[tuple[str, ...]]]:
        async with store.transaction(readonly=True) as tx:
            found = [await tx.fetch(f"SELECT * FROM {table}") for table in TABLES]
        return [sorted(tuple(map(repr, r.values())) for r in rows) for rows in found]

    made = await rows()
    assert len(made[0]) == 120 and made[1]
    script = m0011_audit_tool_calls.SQLITE if store.dialect == "sqlite" else (
        m0011_audit_tool_calls.POSTGRESQL)  # fmt: skip
    fills = [s for s in script.split(";\n") if s.startswith("INSERT")]
    assert len(fills) == len(TABLES)
    async with unguarded(store) as tx:
        for table in TABLES:
            await tx.execute(f"DELETE FROM {table}")
        for fill in fills:
            await tx.execute(fill)
    assert await rows() == made


class ToolLog:
    """Tool calls (some 500 days old, every third of team ``legal``), model calls and the
    rest, sequenced and checkpointed."""

    def __init__(self, db: Store) -> None:
        self.store = db
        self.signer = make_signer()
        now = unix_ms(utcnow())
        rng = random.Random(5)
        old = [tool_call(now - 500 * 86_400_000 + n, rng, n) for n in range(30)]
        for n, r in enumerate(old):
            r["team"] = "legal" if n % 3 == 0 else "sales"
        self.old = sealed(old)
        recent = [tool_call(now - 1000 + n, rng, 100 + n) for n in range(20)]
        recent[0]["mcp.tool.called_as"] = "nul\x00here"
        self.recent = sealed([*recent, unbuilt(now - 500, 1), *seeded_calls(10)])

    async def build(self) -> ToolLog:
        checkpointer = Checkpointer(self.store, [self.signer], origin="custos.test/audit",
                                    every_n=1000, interval_s=3600)  # fmt: skip
        await checkpointer.register_keys()
        self.sequencer = Sequencer(self.store, batch=100,
                                   on_committed=checkpointer.checkpoint)  # fmt: skip
        assert await self.sequencer.lead()
        await AuditStore(self.store).insert(self.old + self.recent)
        await self.sequence()
        return self

    async def sequence(self) -> None:
        while await self.sequencer.tick():
            pass

    async def failures(self) -> list[str]:
        return (await verify_log(self.store, verifiers=[self.signer.verifier])).failures

    async def tamper(self, statement: str, *args: object) -> None:
        async with unguarded(self.store) as tx:
            await tx.execute(statement, *args)


@pytest.fixture
async def tool_log(store: Store) -> ToolLog:  # noqa: F811
    return await ToolLog(store).build()


async def test_verify_checks_tool_calls_and_their_rows(tool_log: ToolLog) -> None:
    report = await verify_log(tool_log.store, verifiers=[tool_log.signer.verifier])
    assert report.ok, report.failures
    assert report.records_valid == report.records_total == 61
    assert report.projections_checked == 61  # 51 tool calls and 10 model calls
    target = tool_log.recent[3]
    # One byte of one tool-call record changed: its leaf no longer hashes to the log's.
    body = target.body.replace(b'"outcome":"', b'"outcome":"X', 1)
    assert body != target.body
    await tool_log.tamper("UPDATE audit_events SET record = $1 WHERE event_id = $2", body,
                          target.event_id)  # fmt: skip
    failures = await tool_log.failures()
    assert failures[0].endswith(f"({target.event_id}): the record's bytes do not match its leaf "
                                "hash (modified)"), failures  # fmt: skip
    await tool_log.tamper("UPDATE audit_events SET record = $1 WHERE event_id = $2", target.body,
                          target.event_id)  # fmt: skip
    assert await tool_log.failures() == []


@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("UPDATE audit_tool_calls SET outcome = 'served' WHERE event_id = $1",
         "audit_tool_calls.outcome is 'served'"),
        ("UPDATE audit_tool_calls SET team = 'other' WHERE event_id = $1",
         "audit_tool_calls.team is 'other'"),
        ("DELETE FROM audit_tool_calls WHERE event_id = $1", "audit_tool_calls has no row"),
        ("UPDATE audit_tool_call_data_classes SET match_count = 7 WHERE event_id = $1",
         "audit_tool_call_data_classes holds"),
        ("INSERT INTO audit_tool_call_data_classes (event_id, data_class, source, match_count,"
         " time_start) SELECT event_id, 'secret', 'declared', 1, time_start FROM"
         " audit_tool_calls WHERE event_id = $1", "audit_tool_call_data_classes holds"),
    ],
)  # fmt: skip
async def test_an_edited_row_fails_verify(tool_log: ToolLog, statement: str, says: str) -> None:
    target = next(
        r
        for r in tool_log.recent
        if r.fields.get("outcome") == "denied" and r.fields["data_classes"]
    )
    await tool_log.tamper(statement, target.event_id)
    failures = await tool_log.failures()
    assert len(failures) == 1 and target.event_id in failures[0] and says in failures[0], failures


async def test_an_invented_row_fails_verify(tool_log: ToolLog) -> None:
    at = tool_log.recent[0].fields["time_start"]
    moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    time_start = moment.isoformat(timespec="microseconds") if tool_log.store.dialect == "sqlite" \
        else moment  # fmt: skip
    await tool_log.tamper("INSERT INTO audit_tool_calls (event_id, time_start, outcome)"
                          " VALUES ('invented', $1, 'served')", time_start)  # fmt: skip
    failures = await tool_log.failures()
    assert failures == ["audit_tool_calls holds a row for invented, which is no mcp.tool_call "
                        "record"]  # fmt: skip


async def test_the_purge_empties_tool_calls_and_a_team_hold_keeps_its_own(
    tool_log: ToolLog,
) -> None:
    await set_hold(tool_log.store, Actor(id="user:usr_admin", role="admin"), team="legal",
                   reason="regulator inquiry")  # fmt: skip
    result = await purge(tool_log.store, retention_days=400, gateway=GatewayInfo("tests"))
    kept = [r for r in tool_log.old if r.fields["team"] == "legal"]
    assert result.count == len(tool_log.old) - len(kept) == 20
    async with tool_log.store.transaction(readonly=True) as tx:
        rows = {r["event_id"] for r in await tx.fetch("SELECT event_id FROM audit_tool_calls")}
    assert rows == {r.event_id for r in kept + tool_log.recent if r.event_type == "mcp.tool_call"}
    await tool_log.sequence()
    report = await verify_log(tool_log.store, verifiers=[tool_log.signer.verifier])
    assert report.ok and report.purged == 20, report.failures
    # The daily rollup lost exactly what the purge deleted: it sums what the rows say.
    first = (utcnow() - timedelta(days=600)).date().isoformat()
    since, until = parse_range(first, utcnow().date().isoformat())
    reports = [await build_tool_report(AuditStore(tool_log.store), since=since, until=until,
                                       group_by=("day", "team", "tool"), rollups=rollups)
               for rollups in (True, False)]  # fmt: skip
    assert reports[0] == reports[1]
    assert reports[0]["totals"]["calls"] == len(rows)
    async with tool_log.store.transaction(readonly=True) as tx:
        assert not await tx.fetch("SELECT * FROM audit_tool_daily WHERE calls = 0")

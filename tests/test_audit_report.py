"""The report answers "which teams sent customer data to which providers last quarter" on a
seeded quarter of traffic, and its totals match the raw records; export is byte for byte."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from custos.audit.compliance.report import build_report, parse_group_by, parse_range
from custos.audit.records.record import leaf_hash, rfc3339_ms, seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store
from custos.state.store import Store
from tests.audit_helpers import one_call, query
from tests.conftest import CUSTOS, ROOT, GatewayProcess, MockProvider, standard_config
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

TEAMS = ["support", "sales", "research", None]
PROVIDERS = {
    "azure-eu": ("azure.ai.openai", "eu"),
    "openai-main": ("openai", "us"),
    "claude-main": ("anthropic", "us"),
}
QUARTER_START = datetime(2026, 7, 1, tzinfo=UTC)
QUARTER_END = datetime(2026, 10, 1, tzinfo=UTC)


def seeded_calls(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``llm.call`` records spread over a little more than Q3 2026 (edges included)."""
    rng = random.Random(seed)
    span_ms = unix_ms(QUARTER_END + timedelta(days=5)) - unix_ms(QUARTER_START - timedelta(days=5))
    times = [
        unix_ms(QUARTER_START - timedelta(days=5)) + rng.randrange(span_ms) for _ in range(count)
    ]
    # The range's edges: the first and last millisecond inside, the first outside on each side.
    times[:4] = [
        unix_ms(QUARTER_START),
        unix_ms(QUARTER_END) - 1,
        unix_ms(QUARTER_START) - 1,
        unix_ms(QUARTER_END),
    ]
    records = []
    for i, at in enumerate(times):
        account = rng.choice(list(PROVIDERS))
        provider_name, region = PROVIDERS[account]
        outcome = rng.choices(["served", "denied", "upstream_error"], [8, 2, 1])[0]
        served = outcome == "served"
        classes = sorted(c for c in ("customer_data", "pii.email") if rng.random() < 0.4)
        team = rng.choice(TEAMS)
        tokens_in, tokens_out = (
            (rng.randrange(1, 5000), rng.randrange(1, 2000)) if served else (0, 0)
        )
        records.append(
            {
                "event_type": "llm.call",
                "request_id": f"seed{i:06d}",
                "time_start": rfc3339_ms(at),
                "time_end": rfc3339_ms(at + 40),
                "gateway.instance": "seed",
                "gateway.version": "0",
                "config.revision": "r" * 64,
                "principal.kind": "user",
                "principal.id": f"usr_{rng.randrange(20):020d}",
                "principal.teams": [team] if team else [],
                "team": team,
                "auth.token_id": "tok_x",
                "metadata": {},
                "data_classes": [
                    {"class": c, "count": rng.randrange(1, 4), "source": "declared"}
                    for c in classes
                ],
                "api.protocol": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": f"{account}/m",
                "gen_ai.request.stream": False,
                "gen_ai.request.max_tokens": None,
                "gen_ai.provider.name": provider_name if outcome != "denied" else None,
                "provider.account": account if outcome != "denied" else None,
                "provider.model": "m" if outcome != "denied" else None,
                "provider.upstream_model": "m" if outcome != "denied" else None,
                "cloud.region": region if outcome != "denied" else None,
                "attempts": [],
                "decisions": [],
                "http.response.status_code": {"served": 200, "denied": 429, "upstream_error": 502}[
                    outcome
                ],
                "outcome": outcome,
                "stopped_at": {
                    "served": None,
                    "denied": "rate_limit",
                    "upstream_error": "provider",
                }[outcome],
                "error.type": None if served else "x",
                "gen_ai.usage.input_tokens": tokens_in,
                "gen_ai.usage.output_tokens": tokens_out,
                "gen_ai.usage.cache_read.input_tokens": 0,
                "gen_ai.usage.cache_creation.input_tokens": 0,
                "gen_ai.usage.reasoning.output_tokens": 0,
                "usage.estimated": False,
                "cost_micros": tokens_in * 3 + tokens_out * 15,
                "currency": "USD",
                "latency_ms": 40,
                "time_to_first_chunk_ms": None,
            }
        )
    return records


def expected(records: list[dict[str, Any]], data_class: str | None) -> tuple[dict, Counter]:
    """What the report must say, computed from the records themselves."""
    groups: dict[tuple, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for r in records:
        if not r["time_start"] < "2026-10-01" or r["time_start"] < "2026-07-01":
            continue
        if data_class and data_class not in {c["class"] for c in r["data_classes"]}:
            continue
        counts = Counter(
            requests=1,
            input_tokens=r["gen_ai.usage.input_tokens"],
            output_tokens=r["gen_ai.usage.output_tokens"],
            cost_micros=r["cost_micros"],
            served=r["outcome"] == "served",
            denied=r["outcome"] == "denied",
            failed=r["outcome"] not in ("served", "denied"),
        )
        groups[(r["team"], r["provider.account"])].update(counts)
        totals.update(counts)
    return groups, totals


async def _seed(target: Store, records: list[dict[str, Any]]) -> None:
    audit = AuditStore(target)
    sealed = [
        seal(dict(r), at_ms=unix_ms(datetime.fromisoformat(r["time_start"]))) for r in records
    ]
    await audit.insert(sealed)
    await audit.insert(sealed[:50])  # inserting again changes nothing


async def test_report_matches_the_raw_records(store: Store) -> None:  # noqa: F811
    records = seeded_calls(800)
    await _seed(store, records)
    audit = AuditStore(store)
    since, until = parse_range("2026-07-01", "2026-09-30")
    for data_class in ("customer_data", None):
        report = await build_report(
            audit,
            since=since,
            until=until,
            group_by=parse_group_by("team,provider"),
            data_class=data_class,
        )
        groups, totals = expected(records, data_class)
        assert report.totals == {k: totals[k] for k in report.totals}
        got = {(r["group"]["team"], r["group"]["provider"]): r for r in report.rows}
        assert set(got) == set(groups)
        for key, counts in groups.items():
            assert {k: got[key][k] for k in counts} == dict(counts), key
        assert sum(r["requests"] for r in report.rows) == totals["requests"]
    # Which data classes, per quarter: a call counts once per class it carries.
    by_class = await build_report(
        audit, since=since, until=until, group_by=("quarter", "data_class")
    )
    rows = {(r["group"]["quarter"], r["group"]["data_class"]): r["requests"] for r in by_class.rows}
    in_range = [r for r in records if "2026-07-01" <= r["time_start"] < "2026-10-01"]
    for name in ("customer_data", "pii.email"):
        assert rows[("2026-Q3", name)] == sum(
            1 for r in in_range if name in {c["class"] for c in r["data_classes"]}
        )
    assert rows[("2026-Q3", None)] == sum(1 for r in in_range if not r["data_classes"])
    # The records in the store are the sealed bytes, each with its leaf hash.
    stored = await audit.events(limit=5)
    assert all(leaf_hash(e.record) == e.leaf_hash for e in stored)
    assert await audit.count("llm.call") == len(records)


def _cli(gateway: GatewayProcess, token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CUSTOS, "audit", *args, "--url", gateway.url, "--token", token],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )


def test_cli_report_export_and_show(mock_provider: MockProvider, tmp_path: Path) -> None:
    gateway = GatewayProcess(standard_config(mock_provider.url), tmp_path)
    db_url = f"sqlite:///{tmp_path / 'custos.db'}"
    try:
        records = seeded_calls(300, seed=11)

        async def seed() -> None:
            db = await open_store(db_url)
            try:
                await _seed(db, records)
            finally:
                await db.close()

        asyncio.run(seed())
        result = _cli(
            gateway,
            gateway.token,
            "report",
            "--from",
            "2026-07-01",
            "--to",
            "2026-09-30",
            "--group-by",
            "team,provider",
            "--data-class",
            "customer_data",
            "--format",
            "json",
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        groups, totals = expected(records, "customer_data")
        assert report["totals"] == {k: totals[k] for k in report["totals"]}
        assert len(report["rows"]) == len(groups)
        table = _cli(
            gateway,
            gateway.token,
            "report",
            "--from",
            "2026-07-01",
            "--to",
            "2026-09-30",
            "--data-class",
            "customer_data",
        )
        assert table.returncode == 0
        lines = table.stdout.decode().splitlines()
        assert lines[1].split()[:2] == ["TEAM", "PROVIDER"]
        assert lines[-1].split()[1] == str(totals["requests"])
        csv_out = (
            _cli(
                gateway,
                gateway.token,
                "report",
                "--from",
                "2026-07-01",
                "--to",
                "2026-09-30",
                "--format",
                "csv",
            )
            .stdout.decode()
            .splitlines()
        )
        assert (
            csv_out[0]
            == "team,provider,requests,served,denied,failed,input_tokens,output_tokens,cost_usd"
        )

        # A live request, then export: every stored record, byte for byte, in store order.
        live = httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers=gateway.headers,
            json={"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]},
        )
        request_id = live.headers["x-custos-request-id"]
        one_call(db_url, request_id)
        out = tmp_path / "export.jsonl"
        exported = _cli(gateway, gateway.token, "export", "--output", str(out))
        assert exported.returncode == 0, exported.stderr
        stored = query(db_url, "SELECT record, leaf_hash FROM audit_events ORDER BY ingest_id")
        lines_out = out.read_bytes().split(b"\n")
        assert lines_out[-1] == b"" and lines_out[:-1] == [bytes(r["record"]) for r in stored]
        assert all(
            leaf_hash(line) == bytes(r["leaf_hash"])
            for line, r in zip(lines_out, stored, strict=False)
        )
        only_calls = _cli(
            gateway,
            gateway.token,
            "export",
            "--event-type",
            "llm.call",
            "--from",
            "2026-07-01",
            "--to",
            "2026-09-30",
        )
        assert len(only_calls.stdout.splitlines()) == sum(
            1 for r in records if "2026-07-01" <= r["time_start"] < "2026-10-01"
        )

        shown = _cli(gateway, gateway.token, "show", request_id)
        assert shown.returncode == 0 and request_id.encode() in shown.stdout
        assert b"# llm.call" in shown.stdout
        missing = _cli(gateway, gateway.token, "show", "no-such-request")
        assert missing.returncode == 1 and b"404" in missing.stderr

        # Auditors may read it; members may not.
        for role, status in (("auditor", 200), ("member", 403)):
            user = httpx.post(
                f"{gateway.url}/admin/v1/users",
                headers=gateway.headers,
                json={"email": f"{role}@custos.test", "roles": [role]},
            ).json()
            token = httpx.post(
                f"{gateway.url}/admin/v1/tokens",
                headers=gateway.headers,
                json={"name": role, "user": user["id"]},
            ).json()["token"]
            reply = httpx.get(
                f"{gateway.url}/admin/v1/audit/report",
                params={"from": "2026-07-01", "to": "2026-09-30"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert reply.status_code == status, reply.text
        bad = httpx.get(
            f"{gateway.url}/admin/v1/audit/report",
            headers=gateway.headers,
            params={"from": "2026-07-01", "to": "2026-09-30", "group_by": "colour"},
        )
        assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("since", "until", "first", "last"),
    [
        ("2026-07-01", "2026-09-30", "2026-07-01T00:00:00+00:00", "2026-10-01T00:00:00+00:00"),
        (
            "2026-07-01T12:00:00Z",
            "2026-07-02T00:00:00Z",
            "2026-07-01T12:00:00+00:00",
            "2026-07-02T00:00:00+00:00",
        ),
        # RFC 3339 §5.6 lets "T" and "Z" be lower case.
        (
            "2026-07-01t12:00:00z",
            "2026-07-02t02:00:00+02:00",
            "2026-07-01T12:00:00+00:00",
            "2026-07-02T00:00:00+00:00",
        ),
    ],
)
def test_report_ranges(since: str, until: str, first: str, last: str) -> None:
    start, end = parse_range(since, until)
    assert (start.isoformat(), end.isoformat()) == (first, last)


def test_seeded_records_are_canonical() -> None:
    record = seeded_calls(1)[0]
    body = seal(dict(record), at_ms=unix_ms(datetime.fromisoformat(record["time_start"]))).body
    assert orjson.loads(body)["request_id"] == "seed000000"

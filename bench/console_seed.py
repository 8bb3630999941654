"""``bench/console_seed.py``: a store with N realistic ``llm.call`` records, and the time each
console page's queries take on it.

    .venv/bin/python bench/console_seed.py seed --store URL [--records N] [--days D]
    .venv/bin/python bench/console_seed.py time --store URL [--repeat R]
    .venv/bin/python bench/console_seed.py pages --store URL [--repeat R]

``seed`` migrates the store and inserts ``N`` records (default 1,000,000) spread evenly over
the ``D`` days (default 90) up to now, through ``AuditStore.insert`` (the audit writer's own
path: projections, and on SQLite the Merkle log), 2,000 a transaction. The traffic: 12 teams,
240 users (20 a team, two of them managers), 3 provider accounts with 2 models each, mostly
served calls, some refused by a rate limit or a budget, a few upstream errors; a third of the
calls carry data classes, declared, detected, or the same class both ways.

``time`` runs what each console page asks of the store, as the pages ask it (the report of
``custos.audit.compliance.report``, the trace search of ``custos.audit.traces``, the audit
log's state), and prints the best of ``R`` runs (default 3) per page in milliseconds. It does
not render templates or go through HTTP: those cost the same whatever the store holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from custos.admin.service import AdminService
from custos.audit import traces
from custos.audit.compliance.report import build_report, parse_group_by, parse_range
from custos.audit.records.record import SealedRecord, rfc3339_ms, seal, unix_ms
from custos.audit.storage.store import AuditStore
from custos.identity.principal import Principal
from custos.state.backends import open_store

TEAMS = [f"team-{n:02d}" for n in range(12)]
USERS = [(f"usr_{n:020d}", TEAMS[n // 20]) for n in range(240)]
ACCOUNTS = {
    "azure-eu": ("azure.ai.openai", "eu", ("gpt-5.5", "gpt-5-mini")),
    "openai-main": ("openai", "us", ("gpt-5.5", "o4")),
    "claude-main": ("anthropic", "us", ("claude-sonnet-5", "claude-haiku-5")),
}
CLASSES = ("customer_data", "pii.email", "pii.phone", "source_code")
PROJECTS = [f"project-{n}" for n in range(8)]
BATCH = 2000


def call(rng: random.Random, n: int, at_ms: int) -> dict[str, Any]:
    """One ``llm.call`` record's fields, as the gateway writes them."""
    user, team = USERS[rng.randrange(len(USERS))]
    account = rng.choice(list(ACCOUNTS))
    provider_name, region, models = ACCOUNTS[account]
    model = rng.choice(models)
    outcome = rng.choices(["served", "denied", "upstream_error"], [90, 8, 2])[0]
    stage = rng.choice(["rate_limit", "budget"]) if outcome == "denied" else None
    served = outcome == "served"
    tokens_in, tokens_out = (rng.randrange(50, 8000), rng.randrange(10, 2000)) if served else (0, 0)
    classes: list[dict[str, Any]] = []
    if rng.random() < 1 / 3:
        name = rng.choice(CLASSES)
        kind = rng.choice(["declared", "detected", "both"])
        for source in ("declared", "detected") if kind == "both" else (kind,):
            classes.append({"class": name, "count": rng.randrange(1, 5), "source": source})
    routed = outcome != "denied"
    metadata: dict[str, str] = {}
    if rng.random() < 0.8:
        metadata["project"] = rng.choice(PROJECTS)
        metadata["environment"] = rng.choice(["prod", "prod", "staging"])
    return {
        "event_type": "llm.call", "request_id": f"req{n:012d}",
        "time_start": rfc3339_ms(at_ms), "time_end": rfc3339_ms(at_ms + 420),
        "gateway.instance": "seed", "gateway.version": "0.1.0", "config.revision": "c0" * 32,
        "principal.kind": "user", "principal.id": user, "principal.teams": [team],
        "team": team, "auth.token_id": f"tok_{user[-8:]}", "metadata": metadata,
        "data_classes": classes, "api.protocol": "openai", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": f"{account}/{model}", "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": None,
        "gen_ai.provider.name": provider_name if routed else None,
        "provider.account": account if routed else None,
        "provider.model": model if routed else None,
        "provider.upstream_model": model if routed else None,
        "cloud.region": region if routed else None, "attempts": [], "decisions": [],
        "http.response.status_code": {"served": 200, "denied": 429, "upstream_error": 502}[
            outcome
        ],
        "outcome": outcome, "stopped_at": stage if not served else None,
        "error.type": None if served else ("limit" if stage else "upstream_5xx"),
        "gen_ai.usage.input_tokens": tokens_in, "gen_ai.usage.output_tokens": tokens_out,
        "gen_ai.usage.cache_read.input_tokens": 0, "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0, "usage.estimated": False,
        "cost_micros": tokens_in * 3 + tokens_out * 15, "currency": "USD",
        "latency_ms": 420, "time_to_first_chunk_ms": None,
    }  # fmt: skip


def batches(count: int, days: int, seed: int = 20) -> Any:
    rng = random.Random(seed)
    end = unix_ms(datetime.now(UTC))
    start = end - days * 86_400_000
    step = (end - start) / count
    out: list[SealedRecord] = []
    for n in range(count):
        at_ms = int(start + n * step)
        out.append(seal(call(rng, n, at_ms), at_ms=at_ms))
        if len(out) == BATCH:
            yield out
            out = []
    if out:
        yield out


async def seed(url: str, count: int, days: int) -> None:
    store = await open_store(url)
    try:
        audit = AuditStore(store)
        began, done = time.monotonic(), 0
        for batch in batches(count, days):
            await audit.insert(batch)
            done += len(batch)
            if done % 100_000 < BATCH:
                print(f"{done:,} records, {time.monotonic() - began:.0f} s", file=sys.stderr)
        await store.checkpoint_wal()
    finally:
        await store.close()


def principal(roles: set[str], user: str = "usr_admin", managed: tuple[str, ...] = ()) -> Any:
    return Principal(
        kind="user", id=user, name=f"{user}@example.com", display_name=user,
        teams=managed, managed_teams=managed, roles=frozenset(roles), subjects=frozenset(),
        token_id="tok_bench", token_kind="pat", account_models=None, token_models=None,
    )  # fmt: skip


def pages(svc: AdminService) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Page → what it asks of the store (each page's own calls, with the page's defaults)."""
    audit = AuditStore(svc.store)
    admin = principal({"admin"})
    manager = principal({"team_manager"}, USERS[0][0], (TEAMS[0],))
    today = datetime.now(UTC).date()
    month = ((today - timedelta(days=29)).isoformat(), today.isoformat())
    first = today.replace(month=3 * ((today.month - 1) // 3) + 1, day=1)
    after = (first + timedelta(days=92)).replace(day=1)
    quarter = (first.isoformat(), (after - timedelta(days=1)).isoformat())
    week = ((today - timedelta(days=6)).isoformat(), today.isoformat())

    def report(span: tuple[str, str], *groups: str) -> Callable[[], Awaitable[Any]]:
        async def run() -> None:
            since, until = parse_range(*span)
            for group_by in groups:
                await build_report(audit, since=since, until=until,
                                   group_by=parse_group_by(group_by))  # fmt: skip

        return run

    def search(p: Any, **f: str) -> Callable[[], Awaitable[Any]]:
        return lambda: traces.search(svc, p, traces.TraceFilter(**f))

    out: dict[str, Callable[[], Awaitable[Any]]] = {
        "traces (no filter)": search(admin),
        "traces team": search(admin, team=TEAMS[3]),
        "traces user": search(admin, user=USERS[7][0]),
        "traces model": search(admin, model="o4"),
        "traces provider": search(admin, provider="claude-main"),
        "traces status 502": search(admin, status="502"),
        "traces outcome denied": search(admin, outcome="denied"),
        "traces data class": search(admin, data_class="source_code"),
        "traces day": search(admin, since=week[0], until=week[0]),
        "traces guardrail any": search(admin, guardrail="any"),
        "traces request id": search(admin, request_id="req000000012345"),
        "traces model no call has": search(admin, model="gpt-0"),
        "traces provider no call has": search(admin, provider="nowhere"),
        "traces status no call has": search(admin, status="418"),
        "traces outcome no call has": search(admin, outcome="client_disconnected"),
        "traces data class no call has": search(admin, data_class="pii.iban"),
        "traces (team manager)": search(manager),
        "traces team manager, outcome": search(manager, outcome="upstream_error"),
    }
    for by in ("team", "model", "principal", "data_class", "metadata.project"):
        out[f"spend 30 days by {by}"] = report(month, "day", by)
        out[f"spend quarter by {by}"] = report(quarter, "day", by)
    out["budgets (refusals, 7 days)"] = report(week, "stage,error")
    out["quarter question"] = report(quarter, "team,data_class,provider")
    out["audit log page"] = lambda: _log_status(svc)
    return out


async def _log_status(svc: AdminService) -> None:
    from custos.audit import service as audit_service

    await audit_service.log_status(svc, principal({"admin"}))
    await audit_service.holds(
        svc, principal({"admin"}), audit_service.HoldsQuery.model_validate({"active": True})
    )


async def timings(url: str, repeat: int) -> None:
    store = await open_store(url)
    try:
        svc = AdminService(store, None)  # type: ignore[arg-type]  # no token is made here
        print(f"{'page':40} {'best ms':>8}")
        for name, run in pages(svc).items():
            best = float("inf")
            for _ in range(repeat):
                began = time.perf_counter()
                await run()
                best = min(best, time.perf_counter() - began)
            print(f"{name:40} {best * 1000:8.1f}", flush=True)
    finally:
        await store.close()


BENCH_TOKEN_KEY = "console-bench-token-hash-key-0123456789"
#: The people ``pages`` signs in as: (email, roles, team managed).
BENCH_PEOPLE = {"admin": ("bench-admin@example.com", ("admin",), None),
                "manager": ("bench-manager@example.com", ("team_manager",), TEAMS[0])}  # fmt: skip


async def _people(url: str) -> dict[str, str]:
    """A token for each of ``BENCH_PEOPLE`` (made once; a token is issued every run)."""
    from custos.identity.tokens import TokenService
    from custos.state.errors import NotFound
    from custos.state.models import Actor

    store = await open_store(url)
    try:
        actor = Actor.system("console-bench")
        tokens = {}
        for name, (email, roles, team) in BENCH_PEOPLE.items():
            try:
                user = await store.get_user_by_email(email)
            except NotFound:
                user = await store.create_user(actor, email=email, roles=roles)
                if team is not None:
                    made = await store.create_team(actor, name=team)
                    await store.add_member(actor, made.id, user.id, role="manager")
            issued = await TokenService(store, BENCH_TOKEN_KEY).issue_token(
                actor, kind="pat", principal_id=user.id, name="console-bench"
            )
            tokens[name] = issued.secret
        return tokens
    finally:
        await store.close()


def _urls() -> dict[str, tuple[str, str]]:
    """Page → (who, path), each page's default view and each filter, as a user would ask."""
    today = datetime.now(UTC).date()
    first = today.replace(month=3 * ((today.month - 1) // 3) + 1, day=1)
    week = (today - timedelta(days=6)).isoformat()
    quarter = f"from={first.isoformat()}&to={today.isoformat()}"
    out = {"traces (no filter)": ("admin", "/ui/traces")}
    filters = {
        "team": f"team={TEAMS[3]}", "user": f"user={USERS[7][0]}", "model": "model=o4",
        "provider": "provider=claude-main", "status 502": "status=502",
        "outcome denied": "outcome=denied", "data class": "data_class=source_code",
        "a day": f"since={week}&until={week}", "guardrail any": "guardrail=any",
        "request id": "request_id=req000000012345",
        "model no call has": "model=gpt-0", "provider no call has": "provider=nowhere",
        "status no call has": "status=418", "outcome no call has": "outcome=client_disconnected",
        "data class no call has": "data_class=pii.iban",
    }  # fmt: skip
    for name, query in filters.items():
        out[f"traces: {name}"] = ("admin", f"/ui/traces?{query}")
    out["traces: next page (provider)"] = ("admin", "NEXT /ui/traces?provider=claude-main")
    out["traces (team manager)"] = ("manager", "/ui/traces")
    out["traces (team manager): outcome"] = ("manager", "/ui/traces?outcome=upstream_error")
    out["traces (team manager): model no call has"] = ("manager", "/ui/traces?model=gpt-0")
    out["a trace"] = ("admin", "/ui/traces/req000000012345")
    for by in ("team", "model", "provider", "principal", "data_class", "metadata.project"):
        out[f"spend 30 days by {by}"] = ("admin", f"/ui/spend?by={by}")
        out[f"spend quarter by {by}"] = ("admin", f"/ui/spend?by={by}&{quarter}")
    out["budgets"] = ("admin", "/ui/budgets")
    out["a budget (burn-down)"] = ("admin", "/ui/budgets/monthly")
    out["quarter question"] = ("admin", "/ui/quarter")
    out["audit log"] = ("admin", "/ui/audit")
    out["config"] = ("admin", "/ui/config")
    out["identity"] = ("admin", "/ui/identity")
    out["identity (team manager)"] = ("manager", "/ui/identity")
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = workdir / "custos.yaml"
    config.write_text(
        "version: 1\n"
        f"gateway: {{listen: '127.0.0.1:{port}'}}\n"
        f"state: {{store: '{url}'}}\n"
        "identity: {token_hash_key: '${env:CUSTOS_BENCH_TOKEN_KEY}'}\n"
        "access: [{id: all, subjects: ['*'], models: ['*']}]\n"
        "providers:\n"
        "  openai-main: {type: openai, base_url: 'http://127.0.0.1:9/v1',"
        " api_key: '${env:CUSTOS_BENCH_TOKEN_KEY}',"
        " models: {gpt-5.5: {input_per_mtok: 1, output_per_mtok: 1}}}\n"
        "budgets:\n"
        "  - {id: monthly, when: {}, limit_usd: 100000, period: month}\n"
        "  - {id: per-team, when: {}, limit_usd: 5000, period: day, applies_per: [team]}\n"
    )
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "custos.cli", "serve", "--config", str(config)],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "CUSTOS_BENCH_TOKEN_KEY": BENCH_TOKEN_KEY},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((workdir / "gateway.log").read_text())
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the gateway did not start")


def _signed_in(base: str, token: str) -> Any:
    import httpx

    client = httpx.Client(base_url=base, timeout=120)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/signin").text)
    assert csrf is not None
    done = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": token})
    if done.status_code != 303:
        raise SystemExit(f"sign-in refused: {done.status_code} {done.text[:300]}")
    return client


def page_timings(url: str, repeat: int) -> None:
    tokens = asyncio.run(_people(url))
    with tempfile.TemporaryDirectory(prefix="custos-console-bench-") as tmp:
        process, base = _serve(url, Path(tmp))
        try:
            clients = {who: _signed_in(base, token) for who, token in tokens.items()}
            print(f"{'page':45} {'median ms':>9} {'max ms':>8}")
            for name, (who, path) in _urls().items():
                client = clients[who]
                if path.startswith("NEXT "):  # the second page, through the first's link
                    first = client.get(path[5:])
                    link = re.search(r'href="(/ui/traces\?[^"]*before=[^"]+)"', first.text)
                    assert link is not None, "no next page"
                    path = link.group(1).replace("&amp;", "&")
                times = []
                for n in range(repeat + 1):
                    began = time.perf_counter()
                    answer = client.get(path)
                    if n:
                        times.append(time.perf_counter() - began)
                    if answer.status_code != 200:
                        raise SystemExit(f"{path}: {answer.status_code} {answer.text[:300]}")
                median, worst = statistics.median(times) * 1000, max(times) * 1000
                print(f"{name:45} {median:9.1f} {worst:8.1f}", flush=True)
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("seed", "time", "pages"))
    parser.add_argument("--store", required=True, help="sqlite:///path or postgresql://...")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=0, help="3 for time, 7 for pages")
    args = parser.parse_args()
    if args.command == "seed":
        asyncio.run(seed(args.store, args.records, args.days))
    elif args.command == "pages":
        page_timings(args.store, args.repeat or 7)
    else:
        asyncio.run(timings(args.store, args.repeat or 3))


if __name__ == "__main__":
    main()

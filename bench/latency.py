"""``bench/run.sh --latency``: added latency at a moderate rate, open loop, on each store.

``make bench``'s fixed-rate runs use hey, a closed-loop client: a worker waits for an answer
before it sends again, so a gateway that stalls for 20 ms is sent less during the stall and the
stall hides (coordinated omission). Here the load comes from ``bench/openloop.py``, which sends
on a fixed schedule over 64 connections and counts each request's latency from when it was due.

For each backend (``sqlite``: SQLite store and in-process counters; ``postgres``: PostgreSQL
store and Redis counters) a fresh gateway is started, then ``BENCH_LATENCY_ROUNDS`` rounds run;
every other round starts straight after saturation (two wrk runs of ``BENCH_DURATION`` s, as a
deployment sees after a burst), the others after an idle pause. Each round sends
``BENCH_RATE`` requests/s for ``BENCH_DURATION`` s (after a 2 s warm-up) to the mock directly,
then to the gateway, and reports p50, p99 and max of each, the added p50 and p99 (gateway -
direct), and the gateway's CPU per request, which is compared with its CPU per request at
saturation (measured in the same run: low-rate batching should cost in proportion).

Knobs: BENCH_LATENCY_ROUNDS (10), BENCH_LATENCY_BACKENDS (sqlite,postgres), BENCH_STORE for
postgres (postgresql://127.0.0.1:5432/test), BENCH_REDIS (redis://127.0.0.1:6379/0),
BENCH_LATENCY_VARIANT (a ``bench/variant.py`` variant served instead of ``custos serve``: with
``passthrough``, what the same rounds cost a gateway that governs nothing, i.e. how much dearer
a request at a moderate rate is than at saturation before any governance), and those of
``bench/run.py`` that apply (BENCH_RATE, BENCH_DURATION, BENCH_CONFIG, BENCH_*_CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Bench

#: The budgets of the latency issue: every round's added p50 and p99, and CPU per request at
#: the moderate rate against the figure at saturation.
BUDGET_ADDED_P50_MS = 1.0
BUDGET_ADDED_P99_MS = 3.0
BUDGET_CPU_RATIO = 1.5
CONNECTIONS = 64
WARMUP_S = 2.0
DEFAULT_PG = "postgresql://127.0.0.1:5432/test"


def open_loop(b: Bench, run: ModuleType, target: str, rate: float) -> dict[str, Any]:
    """One open-loop run against ``target`` (direct or gateway), with the CPU it cost."""
    url, body, auth = b.target(target, False)
    body_file = b.tmp / f"openloop-{target}.json"
    body_file.write_text(body)
    cmd = [
        str(run.VENV_BIN / "python"), str(run.BENCH / "openloop.py"), url,
        "--rate", f"{rate:g}", "--duration", str(b.duration), "--warmup", str(WARMUP_S),
        "--connections", str(CONNECTIONS), "--body", str(body_file),
        "--header", f"Authorization: Bearer {auth}",
    ]  # fmt: skip
    gateway_cpu = run.proc_cpu_s(b.gateway.pid)
    with run.Meter(b) as meter:
        proc = run.spawn(cmd, b.load_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=WARMUP_S + b.duration + 60)
    if proc.returncode != 0:
        raise run.BenchError(f"openloop.py failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["cpu"] = meter.result
    spent = run.proc_cpu_s(b.gateway.pid) - gateway_cpu
    sent = int(rate * (WARMUP_S + b.duration))  # openloop.py sends this many, warm-up included
    result["gateway_cpu_us_per_request"] = round(1e6 * spent / max(1, sent), 1)
    bad = {k: n for k, n in result["statuses"].items() if k != "200"}
    if bad:
        b.problems.append(f"open loop {target}: {result['statuses']}")
    if result["rate_achieved"] < 0.97 * rate:
        b.problems.append(f"open loop {target}: achieved {result['rate_achieved']}/s of {rate:g}")
    return result


def saturate(b: Bench, run: ModuleType) -> float:
    """Two saturation runs; the gateway's CPU microseconds per request over both."""
    url, body, auth = b.target("gateway", False)
    spent, requests = 0.0, 0
    for _ in range(2):
        before = run.proc_cpu_s(b.gateway.pid)
        result = run.run_wrk(b, url, body, auth, b.duration)
        spent += run.proc_cpu_s(b.gateway.pid) - before
        requests += result["requests"]
        if result["non2xx"]:
            b.problems.append(f"saturation before a latency round: {result['non2xx']} non-2xx")
    return round(1e6 * spent / max(1, requests), 1)


def backend(b: Bench, run: ModuleType, name: str, rounds: int) -> dict[str, Any]:
    """Every round on one store and counters backend, on one fresh gateway."""
    counters = "memory"
    if name == "postgres":
        b.pg_url = os.environ.get("BENCH_STORE") or DEFAULT_PG
        run.pin_postgres(b.load_cpu)
        counters = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    else:
        b.pg_url = ""
    b.start_gateway(os.environ.get("BENCH_LATENCY_VARIANT") or None, counters)
    b.sanity()
    saturated: list[float] = []
    results = []
    for r in range(rounds):
        after = "saturation" if r % 2 == 0 else "idle"
        if after == "saturation":
            saturated.append(saturate(b, run))
        else:
            time.sleep(2.0)
        direct = open_loop(b, run, "direct", b.rate)
        gateway = open_loop(b, run, "gateway", b.rate)
        b.check_alive(f"latency round {r + 1} on {name}")
        row = {
            "round": r + 1,
            "after": after,
            "direct": direct,
            "gateway": gateway,
            "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 2),
            "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 2),
        }
        run.log(
            f"  {name} round {r + 1} ({after}): added p50 {row['added_p50_ms']} ms, p99 "
            f"{row['added_p99_ms']} ms, gateway max {gateway['max_ms']:.1f} ms, "
            f"{gateway['gateway_cpu_us_per_request']} µs CPU/request"
        )
        results.append(row)
    b.stop_gateway()
    return {"rounds": results, "saturation_cpu_us_per_request": saturated}


def verdicts(backends: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, data in backends.items():
        rounds = data["rounds"]
        worst_p50 = max(r["added_p50_ms"] for r in rounds)
        worst_p99 = max(r["added_p99_ms"] for r in rounds)
        at_rate = sorted(r["gateway"]["gateway_cpu_us_per_request"] for r in rounds)
        saturated = sorted(data["saturation_cpu_us_per_request"])
        ratio = at_rate[len(at_rate) // 2] / saturated[len(saturated) // 2] if saturated else 0
        out += [
            {"backend": name, "what": "worst added p50 (ms)", "value": worst_p50,
             "budget": BUDGET_ADDED_P50_MS, "ok": worst_p50 <= BUDGET_ADDED_P50_MS},
            {"backend": name, "what": "worst added p99 (ms)", "value": worst_p99,
             "budget": BUDGET_ADDED_P99_MS, "ok": worst_p99 <= BUDGET_ADDED_P99_MS},
            {"backend": name, "what": "CPU/request at rate ÷ at saturation (medians)",
             "value": round(ratio, 2), "budget": BUDGET_CPU_RATIO,
             "ok": 0 < ratio <= BUDGET_CPU_RATIO},
        ]  # fmt: skip
    return out


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"open-loop latency of {report.get('serving', 'custos serve')} at {report['rate']:g} "
        f"requests/s, {CONNECTIONS} connections",
        "| backend | round | after | direct p50/p99 | gateway p50/p99/max | added p50 | added p99 "
        "| µs CPU/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, data in report["backends"].items():
        for r in data["rounds"]:
            d, g = r["direct"], r["gateway"]
            lines.append(
                f"| {name} | {r['round']} | {r['after']} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} "
                f"| {g['p50_ms']:.2f} / {g['p99_ms']:.2f} / {g['max_ms']:.1f} "
                f"| {r['added_p50_ms']:+.2f} | {r['added_p99_ms']:+.2f} "
                f"| {g['gateway_cpu_us_per_request']} |"
            )
        lines.append(f"| {name} | saturation | | | | | | {data['saturation_cpu_us_per_request']} |")
    lines.append("")
    for v in report["verdicts"]:
        mark = "ok  " if v["ok"] else "MISS"
        lines.append(f"{mark} {v['backend']}: {v['what']} {v['value']} (budget {v['budget']})")
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)


def main_latency(b: Bench, run: ModuleType) -> int:
    """``--latency``: run every backend's rounds, print the table, write latency.json."""
    rounds = int(os.environ.get("BENCH_LATENCY_ROUNDS", "10"))
    names = os.environ.get("BENCH_LATENCY_BACKENDS", "sqlite,postgres").split(",")
    if unknown := set(names) - {"sqlite", "postgres"}:
        print(f"bench: unknown BENCH_LATENCY_BACKENDS {sorted(unknown)}")
        return 1
    if b.out.name in ("latest.json", "quick.json"):
        b.out = b.out.with_name("latency.json")
    try:
        b.preflight()
        b.idle_before = b.idle_check()
        b.speed = {"start": {f"cpu{c}": run.cpu_speed(c) for c in (b.gateway_cpu, b.load_cpu)}}
        b.start_mock()
        backends = {name: backend(b, run, name, rounds) for name in names}
    except run.BenchError as exc:
        print(f"\nbench: FAILED: {exc}\nbench: logs kept in {b.tmp}")
        return 1
    finally:
        run.cleanup()
    report = {
        **run.report_header(b, "latency"),
        "serving": b.serving,
        "rate": b.rate,
        "backends": backends,
        "verdicts": verdicts(backends),
        "problems": b.problems,
        "out": os.path.relpath(b.out, run.ROOT),
    }
    b.out.parent.mkdir(parents=True, exist_ok=True)
    b.out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    shutil.rmtree(b.tmp, ignore_errors=True)
    return 1 if b.problems else 0
